"""ToyMLP: the denoiser for 2-D toy data.

    h0 = [x_t, emb(t)]                       x_t: [B, D], emb(t): [B, 64] sinusoidal
    h1 = SiLU(Linear(D + 64 -> 256)(h0))
    h2 = SiLU(Linear(256 -> 256)(h1))
    h3 = SiLU(Linear(256 -> 256)(h2))
    out = Linear(256 -> D * heads)(h3)       [B, D * heads]

``heads`` says what the network predicts, matching GaussianDiffusion's
parametrisations: 1 for eps alone (fixed variance, Ho et al. 2020), 2 for eps plus
the interpolation v of the learned range (Nichol & Dhariwal 2021 eq. 15), or a mean
plus a log-variance (Sohl-Dickstein et al. 2015). The outputs are stacked along axis
1, so ``out[:, :D]`` is the first head and ``out[:, D:]`` the second.
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..checks import check_timesteps
from ..engine import Tensor, concat


class ToyMLP(nn.Module):
    """A time-conditioned MLP for points in R^D.

    Args:
        data_dim: D, the dimension of a data point (2 for the toy sets).
        heads: 1 (eps) or 2 (eps + v, or mean + log-variance); output is [B, D * heads].
        hidden: width of the three hidden layers.
        emb_dim: size of the sinusoidal timestep embedding (even).
        rng: Generator for the initial weights.

    >>> model = td.models.ToyMLP(heads=2, hidden=32, rng=np.random.default_rng(0))
    >>> model(np.zeros((5, 2), np.float32), np.arange(5)).shape        # [B, D * heads]
    (5, 4)
    """

    def __init__(self, data_dim: int = 2, heads: int = 1, hidden: int = 256, emb_dim: int = 64,
                 rng: np.random.Generator | None = None, dtype=np.float32):
        super().__init__()
        if heads not in (1, 2):
            raise ValueError(f"heads must be 1 or 2, got {heads!r}")
        if emb_dim % 2:
            raise ValueError(f"emb_dim must be even (half sines, half cosines), got {emb_dim}")
        self.data_dim, self.heads, self.emb_dim = data_dim, heads, emb_dim
        self.embed = nn.SinusoidalEmbedding(emb_dim, dtype=dtype)
        self.net = nn.Sequential(
            nn.Linear(data_dim + emb_dim, hidden, rng=rng, dtype=dtype), nn.SiLU(),
            nn.Linear(hidden, hidden, rng=rng, dtype=dtype), nn.SiLU(),
            nn.Linear(hidden, hidden, rng=rng, dtype=dtype), nn.SiLU(),
            nn.Linear(hidden, data_dim * heads, rng=rng, dtype=dtype),
        )

    def forward(self, x, t) -> Tensor:
        """x: [B, D] points at step t; t: [B] int timesteps -> [B, D * heads]."""
        x = x if isinstance(x, Tensor) else Tensor(np.asarray(x))
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape [B, {self.data_dim}], got {x.shape}")
        if x.dtype.kind != "f":
            raise TypeError(f"x: expected float points [B, {self.data_dim}], got dtype {x.dtype}")
        emb = self.embed(check_timesteps(t, x.shape[0])).astype(x.dtype, copy=False)   # [B, emb_dim]
        return self.net(concat([x, Tensor(emb)], axis=1))                 # [B, D * heads]

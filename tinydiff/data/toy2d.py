"""Two-dimensional toy datasets, several with densities known in closed form.

Every dataset is a small class with ``sample(n, rng) -> [n, 2]`` (float32 unless
``dtype=`` says otherwise); all randomness comes from the ``numpy.random.Generator``
passed in. Datasets whose density is known also expose ``log_prob(x)`` (natural log)
and ``entropy_bits()``, the true negative log-likelihood per point in bits: the
floor that a perfect model's NLL reaches.

    GaussianMixture  isotropic mixture; default = the 8 modes on a circle of Sachit Gaudi's
                     "Think Diffusion! Think Probability"
    Gaussian         one isotropic Gaussian (a mixture with K = 1), for sanity checks
    SwissRoll        the 2-D swiss roll of Sohl-Dickstein et al. (2015), Fig. 1
    TwoMoons         two interleaved half circles
    Checkerboard     uniform density on the dark squares of a board

``make_dataset(name, **kw)`` builds one by name (see ``DATASETS``).
"""
import math

import numpy as np

from ..checks import check_count, check_rng

LOG2 = math.log(2.0)


def _scalar(name, value, positive=True):
    """A finite python float that is > 0 (or >= 0 when ``positive`` is False)."""
    ok = np.ndim(value) == 0 and np.isreal(value) and np.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise ValueError(f"{name} must be a {'positive' if positive else 'non-negative'} finite "
                         f"scalar, got {value!r}")
    return float(value)


def _as_points(x, dim):
    """Points ``x: [..., dim]`` as a float array (float32/float64 kept, ints -> float64)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if x.ndim == 0 or x.shape[-1] != dim:
        raise ValueError(f"x must have shape [..., {dim}], got shape {x.shape}")
    return x


def logsumexp(a, axis=-1):
    """log sum_k exp(a_k) along ``axis``, stable: m + log sum_k exp(a_k - m), m = max_k a_k.

    >>> round(float(td.data.toy2d.logsumexp(np.array([0.0, 0.0]))), 6)      # log 2
    0.693147
    """
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # all -inf along the axis -> result -inf, not nan
    out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, std^2 I)  (isotropic components sharing one std).

    Attributes (float64, read by the closed-form Bayes-optimal denoiser):
        means: [K, D]   weights: [K], sum to 1   std: float
    Default: the 8-mode mixture of Sachit Gaudi's "Think Diffusion! Think Probability" --
    ``n_modes`` means on a circle of ``radius`` 2 at angles 2*pi*k/n_modes (= k*pi/4),
    std 0.1, equal weights.

    >>> data = td.data.GaussianMixture()                      # 8 modes on a circle of radius 2, std 0.1
    >>> data.sample(5, np.random.default_rng(0)).shape
    (5, 2)
    >>> round(data.entropy_bits(), 4)                         # 3 bits for the mode + log2(2 pi e 0.01)
    0.4503
    """

    def __init__(self, means=None, std=0.1, weights=None, n_modes=8, radius=2.0):
        if means is None:
            if int(n_modes) != n_modes or n_modes < 1:
                raise ValueError(f"n_modes must be a positive int, got {n_modes!r}")
            angles = 2.0 * np.pi * np.arange(int(n_modes)) / n_modes          # [K]
            means = float(radius) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        self.means = np.array(means, dtype=np.float64)                       # [K, D]
        if self.means.ndim != 2 or self.means.shape[0] < 1:
            raise ValueError(f"means must have shape [K, D] with K >= 1, got {self.means.shape}")
        self.std = _scalar("std", std)
        K = self.means.shape[0]
        w = np.full(K, 1.0 / K) if weights is None else np.array(weights, dtype=np.float64)
        if w.shape != (K,) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(f"weights must be {K} non-negative numbers (one per mean), got {weights!r}")
        self.weights = w / w.sum()

    @property
    def dim(self):
        return self.means.shape[1]

    def sample(self, n, rng, dtype=np.float32):
        """x = mu_c + std * z with c ~ Categorical(weights), z ~ N(0, I).  Returns [n, D]."""
        n = check_count(n)
        check_rng(rng)
        c = rng.choice(len(self.weights), size=n, p=self.weights)            # [n]
        z = rng.standard_normal((n, self.dim))                               # [n, D]
        return (self.means[c] + self.std * z).astype(dtype)

    def component_log_prob(self, x):
        """log w_k + log N(x; mu_k, std^2 I) for every k.   x: [..., D] -> [..., K].

        log N(x; mu, s^2 I) = -|x - mu|^2 / (2 s^2) - (D/2) log(2 pi s^2).
        """
        x = _as_points(x, self.dim)
        mu = self.means.astype(x.dtype)                                      # keep x's precision
        sq = np.sum((x[..., None, :] - mu) ** 2, axis=-1)                    # [..., K]
        log_norm = 0.5 * self.dim * math.log(2.0 * math.pi * self.std ** 2)
        with np.errstate(divide="ignore"):                                   # w_k = 0 -> -inf
            log_w = np.log(self.weights).astype(x.dtype)
        return log_w - sq / x.dtype.type(2.0 * self.std ** 2) - x.dtype.type(log_norm)

    def log_prob(self, x):
        """log p(x) = logsumexp_k [log w_k + log N(x; mu_k, std^2 I)].   x: [..., D] -> [...]."""
        return logsumexp(self.component_log_prob(x), axis=-1)

    def entropy_bits(self, n_nodes=64):
        """H(p) = -E_p[log2 p(x)] in bits per point, by Gauss-Hermite quadrature.

        H = -sum_k w_k E_{z ~ N(0, I)}[log p(mu_k + std z)] / ln 2; each expectation uses
        the tensor product of ``n_nodes`` probabilists' Hermite nodes per axis. log p is
        smooth, so this is accurate to ~1e-6 bits for D <= 3 (tested against Monte Carlo
        and the exact Gaussian entropy); use ``entropy_bits_mc`` for larger D.
        """
        if self.dim > 3:
            raise ValueError(f"quadrature needs n_nodes**D points; D = {self.dim} is too large, "
                             "use entropy_bits_mc")
        nodes, w = np.polynomial.hermite_e.hermegauss(n_nodes)               # weight exp(-z^2/2)
        w = w / math.sqrt(2.0 * math.pi)                                     # sums to 1
        grids = np.meshgrid(*([nodes] * self.dim), indexing="ij")
        z = np.stack([g.ravel() for g in grids], axis=1)                     # [Q, D]
        wz = np.prod(np.meshgrid(*([w] * self.dim), indexing="ij"), axis=0).ravel()  # [Q]
        x = self.means[:, None, :] + self.std * z                            # [K, Q, D]
        expect = self.log_prob(x) @ wz                                       # [K]
        return float(-(self.weights @ expect) / LOG2)

    def entropy_bits_mc(self, n, rng):
        """Monte-Carlo H(p) ~ mean_i -log2 p(x_i), x_i ~ p.  Returns (estimate, standard error)."""
        nll = -self.log_prob(self.sample(n, rng, dtype=np.float64)) / LOG2   # [n]
        return float(nll.mean()), float(nll.std(ddof=1) / math.sqrt(len(nll)))


class Gaussian(GaussianMixture):
    """p(x) = N(x; mean, std^2 I): a one-component ``GaussianMixture`` with an exact entropy.

    Attributes: ``mean`` [D], plus the mixture's ``means`` [1, D], ``weights`` [1], ``std``.

    >>> round(td.data.Gaussian(std=1.0).entropy_bits(), 4)    # log2(2 pi e) for N(0, I) in 2-D
    4.0942
    """

    def __init__(self, mean=(0.0, 0.0), std=1.0):
        super().__init__(means=[np.asarray(mean, dtype=np.float64)], std=std, weights=[1.0])
        self.mean = self.means[0]

    def entropy_bits(self):
        """H = (D/2) log2(2 pi e std^2) bits, exact (Cover & Thomas, Thm. 8.4.1)."""
        return 0.5 * self.dim * math.log2(2.0 * math.pi * math.e * self.std ** 2)


class SwissRoll:
    """The 2-D swiss roll used by Sohl-Dickstein et al. (2015, Fig. 1).

    Parametrisation (that of scikit-learn's ``make_swiss_roll``, keeping the two
    coordinates of the rolled plane): s ~ U(1.5 pi, 4.5 pi),
        x = (s cos s, s sin s) + noise * z,   z ~ N(0, I),
    so the raw roll spans about [-10, 13] x [-12, 15]. With ``standardize=True`` each
    coordinate is shifted and scaled by its *population* mean and std (computed once by
    quadrature over s, not from the sample), so the output has exactly zero mean and unit
    variance per coordinate -- the scale a unit-variance forward diffusion expects.

    >>> roll = td.data.SwissRoll(noise=0.5)
    >>> x = roll.sample(1000, np.random.default_rng(0))
    >>> x.shape, bool(abs(x.std() - 1) < 0.1)                 # standardised to unit variance
    ((1000, 2), True)
    """

    def __init__(self, noise=0.5, standardize=True):
        self.noise = _scalar("noise", noise, positive=False)
        self.standardize = bool(standardize)
        self.t_range = (1.5 * math.pi, 4.5 * math.pi)
        # Population moments: E[f(s)] over s ~ U(a, b) by 64-point Gauss-Legendre quadrature
        # (exact to double precision for these smooth integrands).
        u, w = np.polynomial.legendre.leggauss(64)
        a, b = self.t_range
        s = 0.5 * (b - a) * u + 0.5 * (a + b)
        w = 0.5 * w                                                           # weights of U(a, b)
        curve = np.stack([s * np.cos(s), s * np.sin(s)], axis=1)              # [64, 2]
        self.mean = w @ curve                                                 # [2]
        self.scale = np.sqrt(w @ (curve - self.mean) ** 2 + self.noise ** 2)  # [2] population std

    def sample(self, n, rng, dtype=np.float32):
        """Returns [n, 2]; standardized to zero mean, unit variance if ``standardize``."""
        n = check_count(n)
        check_rng(rng)
        s = rng.uniform(*self.t_range, size=n)                                # [n]
        x = np.stack([s * np.cos(s), s * np.sin(s)], axis=1)                  # [n, 2]
        x = x + self.noise * rng.standard_normal((n, 2))
        if self.standardize:
            x = (x - self.mean) / self.scale
        return x.astype(dtype)

    @staticmethod
    def arc_length(s):
        """l(s) = integral_0^s |c'(u)| du = (s sqrt(1 + s^2) + asinh s) / 2 for c(s) = (s cos s, s sin s),
        since |c'(s)| = sqrt(1 + s^2) (the arc length of Archimedes' spiral)."""
        return 0.5 * (s * np.sqrt(1.0 + s * s) + np.arcsinh(s))

    def _curve_nodes(self, per_noise=4):
        """Quadrature nodes s_k and weights w_k with sum_k w_k f(s_k) ~= integral_a^b f(s) ds for any f
        that varies on the scale of the noise along the curve.

        Composite Gauss-Legendre in arc length: the curve is cut into cells one noise std long,
        each with ``per_noise`` nodes (exact for polynomials of degree 2 per_noise - 1 per cell),
        then mapped back to s (Newton on l(s) = l) with ds = dl / sqrt(1 + s^2). Returns [N], [N].
        """
        a, b = self.t_range
        l_a, l_b = self.arc_length(a), self.arc_length(b)
        cells = int(math.ceil((l_b - l_a) / self.noise))
        u, w = np.polynomial.legendre.leggauss(per_noise)                     # on [-1, 1]
        h = (l_b - l_a) / cells
        left = l_a + h * np.arange(cells)                                     # [cells]
        ell = (left[:, None] + 0.5 * h * (u + 1.0)).ravel()                   # [N] arc-length nodes
        s = np.sqrt(2.0 * ell)                                                # l ~ s^2 / 2: a start
        for _ in range(30):                                                   # Newton: dl/ds = sqrt(1 + s^2)
            step = (self.arc_length(s) - ell) / np.sqrt(1.0 + s * s)
            s = s - step
            if np.max(np.abs(step)) < 1e-13:
                break
        weights = np.tile(0.5 * h * w, cells) / np.sqrt(1.0 + s * s)          # [N]
        return s, weights

    def log_prob(self, x, chunk=2 ** 21):
        """log p(x) in nats for points x [..., 2] (standardized if ``standardize``) -> [...].

        The roll is a continuous mixture over the curve, so its density is one integral:

            p_raw(x) = 1/(b - a) integral_a^b N(x; c(s), noise^2 I) ds,   c(s) = (s cos s, s sin s)

        and log p(x) = log p_raw(mean + scale * x) + sum log scale for standardized points
        (change of variables). The integral is a quadrature (``_curve_nodes``) evaluated with
        logsumexp: within a few noise stds of the roll its error is below 1e-6 nats (tested
        against a finer rule); far from it, where log p < -100, the integrand narrows and the
        error grows to ~0.1 nats. Cost: about 4 * 89 / noise exponentials per point.
        """
        if self.noise == 0.0:
            raise ValueError("log_prob: the swiss roll with noise=0 has no density (a curve); use noise > 0")
        x = _as_points(x, 2)
        pts = x.reshape(-1, 2).astype(np.float64)
        if self.standardize:
            pts = self.mean + self.scale * pts
        s, w = self._curve_nodes()
        centres = np.stack([s * np.cos(s), s * np.sin(s)], axis=1)            # [N, 2]
        log_w = np.log(w) - math.log(self.t_range[1] - self.t_range[0]) - math.log(2.0 * math.pi * self.noise ** 2)
        out = np.empty(len(pts))
        step = max(1, chunk // len(s))
        for i in range(0, len(pts), step):                                    # chunks bound the memory
            d2 = ((pts[i:i + step, None, :] - centres) ** 2).sum(axis=-1)     # [m, N]
            out[i:i + step] = logsumexp(log_w - d2 / (2.0 * self.noise ** 2), axis=-1)
        if self.standardize:
            out += np.log(self.scale).sum()
        return out.reshape(x.shape[:-1]).astype(x.dtype)

    def entropy_bits(self, n_s=128, n_z=None):
        """H(p) = -E_p[log2 p(x)] in bits per point: the true NLL, the floor for any model.

        x = c(s) + noise z with s ~ U(a, b), z ~ N(0, I), so H = -E_s E_z[log p(c(s) + noise z)] / ln 2,
        an integral over s (``n_s``-node Gauss-Legendre, whose nodes crowd the ends where the
        density falls off) and over z (``n_z`` x ``n_z`` Gauss-Hermite nodes). Across a thin roll
        log p is nearly quadratic in z and 6 nodes suffice; once the noise is comparable to the
        gap between turns (noise > 0.25) it is not, and the default becomes 24. The defaults agree
        with a finer rule to 1e-5 bits for noise 0.01 to 5 (tested, with Monte Carlo). For a thin
        roll it approaches
        log2(b - a) + E_s[log2 sqrt(1 + s^2)] + 1/2 log2(2 pi e noise^2) - log2(scale_x scale_y):
        the entropy of the position along the curve plus that of the Gaussian across it.
        """
        if n_z is None:
            n_z = 6 if self.noise <= 0.25 else 24
        a, b = self.t_range
        u, ws = np.polynomial.legendre.leggauss(n_s)
        s = 0.5 * (b - a) * u + 0.5 * (a + b)                                 # [n_s]
        ws = 0.5 * ws                                                         # weights of U(a, b), sum 1
        z, wz = np.polynomial.hermite_e.hermegauss(n_z)
        wz = wz / math.sqrt(2.0 * math.pi)                                    # N(0, 1) weights, sum 1
        zx, zy = np.meshgrid(z, z, indexing="ij")
        raw = (np.stack([s * np.cos(s), s * np.sin(s)], axis=1)[:, None, :]
               + self.noise * np.stack([zx.ravel(), zy.ravel()], axis=1))     # [n_s, n_z^2, 2]
        x = (raw - self.mean) / self.scale if self.standardize else raw
        weights = ws[:, None] * np.outer(wz, wz).ravel()                      # [n_s, n_z^2]
        return float(-(weights * self.log_prob(x)).sum() / LOG2)


class TwoMoons:
    """Two interleaved half circles (the shape of scikit-learn's ``make_moons``), centred.

    theta ~ U(0, pi); each point picks a moon with probability 1/2:
        upper: (cos theta, sin theta),  lower: (1 - cos theta, 1/2 - sin theta),
    then adds noise * N(0, I) and subtracts the exact mean (1/2, 1/4).

    >>> td.data.TwoMoons().sample(4, np.random.default_rng(0)).shape
    (4, 2)
    """

    def __init__(self, noise=0.1):
        self.noise = _scalar("noise", noise, positive=False)

    def sample(self, n, rng, dtype=np.float32):
        n = check_count(n)
        check_rng(rng)
        theta = rng.uniform(0.0, math.pi, size=n)                             # [n]
        lower = rng.integers(0, 2, size=n).astype(bool)                       # [n]
        upper_pts = np.stack([np.cos(theta), np.sin(theta)], axis=1)          # [n, 2]
        lower_pts = np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], axis=1)
        x = np.where(lower[:, None], lower_pts, upper_pts)
        x = x + self.noise * rng.standard_normal((n, 2)) - np.array([0.5, 0.25])
        return x.astype(dtype)


class Checkerboard:
    """Uniform density on the dark squares of an ``n_cells`` x ``n_cells`` board on
    [-half_width, half_width]^2. Square (i, j) (counted from the lower-left corner,
    half-open) is dark when i + j is even.  p(x) = 1 / (dark area) there, 0 elsewhere.

    >>> board = td.data.Checkerboard()                        # 8 dark squares of area 1 on [-2, 2]^2
    >>> board.entropy_bits()                                  # uniform over area 8: log2 8
    3.0
    """

    def __init__(self, n_cells=4, half_width=2.0):
        if int(n_cells) != n_cells or n_cells < 1:
            raise ValueError(f"n_cells must be a positive int, got {n_cells!r}")
        self.n_cells, self.half_width = int(n_cells), _scalar("half_width", half_width)
        self.cell = 2.0 * self.half_width / self.n_cells
        i, j = np.meshgrid(np.arange(self.n_cells), np.arange(self.n_cells), indexing="ij")
        dark = (i + j) % 2 == 0
        self.corners = -self.half_width + self.cell * np.stack([i[dark], j[dark]], axis=1)  # [M, 2]
        self.area = len(self.corners) * self.cell ** 2

    def sample(self, n, rng, dtype=np.float32):
        n = check_count(n)
        check_rng(rng)
        k = rng.integers(0, len(self.corners), size=n)                        # [n] dark square
        x = self.corners[k] + self.cell * rng.uniform(size=(n, 2))
        return x.astype(dtype)

    def log_prob(self, x):
        """-log(dark area) on dark squares, -inf elsewhere.   x: [..., 2] -> [...]."""
        x = _as_points(x, 2)
        ij = np.floor((x + self.half_width) / self.cell)                      # [..., 2] square index
        inside = np.all((ij >= 0) & (ij < self.n_cells), axis=-1)
        dark = inside & (ij.sum(axis=-1) % 2 == 0)
        return np.where(dark, -math.log(self.area), -np.inf).astype(x.dtype)

    def entropy_bits(self):
        """H = log2(dark area) bits: the entropy of a uniform density."""
        return math.log2(self.area)


DATASETS = {
    "8gaussians": GaussianMixture,   # defaults give the 8-mode ring (Gaudi, "Think Diffusion! Think Probability")
    "gaussian_mixture": GaussianMixture,
    "gaussian": Gaussian,
    "swiss_roll": SwissRoll,
    "moons": TwoMoons,
    "checkerboard": Checkerboard,
}


def make_dataset(name, **kwargs):
    """Build a dataset by name, e.g. ``make_dataset("8gaussians", std=0.05)``.

    Names are case-insensitive and '-' equals '_'; see ``DATASETS`` for the list.

    >>> td.data.make_dataset("8gaussians", std=0.05).std
    0.05
    >>> sorted(td.data.DATASETS)
    ['8gaussians', 'checkerboard', 'gaussian', 'gaussian_mixture', 'moons', 'swiss_roll']
    """
    key = str(name).lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset name {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[key](**kwargs)

"""GaussianDiffusion: the schedule's tables, and the public doors to q, p, the losses and the bound.

Notation (DDPM, Ho et al. 2020; code timesteps are 0-based, see tinydiff/schedules.py):

    q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I),         alpha_t = 1 - beta_t
    q(x_t | x_0)     = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), alpha_bar_t = prod_{s<=t} alpha_s
    p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I)             (the model)

Code index t = 0..T-1 is the paper's step t+1: x_t in a docstring here is the paper's
x_{t+1}, and "x_{t-1}" at t = 0 is the data x_0 itself (so p_sample at t = 0 adds no noise).
Every method takes per-example timesteps t: int array [B], data of shape [B, *D], and
returns arrays in the data's dtype (float32 in, float32 out); buffers are float64.

Names follow openai/improved-diffusion (gaussian_diffusion.py) so the two read side by side,
with one exception: x0 where it writes x_start (docs/equations.md: names in other codebases).

Where the math lives (each a file of plain functions of the diffusion, in the papers' order):
    tinydiff/forward.py    q, its posterior, and x_0 <-> eps <-> v <-> mean conversions
    tinydiff/reverse.py    p(x_{t-1} | x_t) for every mean and variance type; the general step
    tinydiff/losses.py     eps_loss (DDPM Algorithm 1) and the general training losses
    tinydiff/bound.py      the variational bound: its terms, L_T, and the loop over the chain
    tinydiff/samplers.py   the DDPM loop and its eq. 11 step; DDIM (ddim.py), Langevin (langevin.py)

Checks at the doors. The methods of this class are the public entry points: each checks its
arguments first (``_check``: float32/float64 data with a batch axis, finite, arrays of one
shape; ``extract``: t int [B] in 0..T-1) and its array result after (``finite_result``), so a
wrong argument is a ValueError or TypeError that names it, never a NaN found three functions
later. The functions they call scan no data for NaN (only t, in ``extract``, and shapes are
checked on the way), and neither do the calls between them: a sampling step scans for NaN
once, in ``run_model_checked``, and a sampler its result once at the end (``check_sample``).
"""
from __future__ import annotations

import functools

import numpy as np

from . import bound, forward, losses, reverse
from .checks import check_data, check_same_shape
from .engine import unwrap
from .gaussian import standard_normal_noise
from .schedules import extract, validate_betas

MODEL_MEAN_TYPES = ("eps", "x0", "v", "mean")  # what the model's first C channels predict
MODEL_VAR_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
LOSS_TYPES = ("mse", "kl", "hybrid")
DECODER_NLLS = ("auto", "continuous", "discretized")


def check_sample(x, where: str) -> None:
    """A ValueError naming the sampler if its result holds NaN or inf.

    The samplers check the model's output at every step (``GaussianDiffusion.run_model_checked``);
    this one scan of the result, after the chain, catches what finite predictions can still
    do: a learned variance or a step size so large that the arithmetic overflows.

    >>> td.diffusion.check_sample(np.zeros((2, 2)), "ddpm_sample_loop")   # silent when finite
    """
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: the sample became NaN or inf although every model output was finite; the "
                         "model's predicted variances or the sampler's step sizes are out of range for this schedule")


def finite_result(method):
    """Decorator of GaussianDiffusion's public methods: an array result holding NaN or inf is a
    ValueError naming the method and how large the inputs got, never a silent inf passed on.

    The inputs are checked finite at the door (``_check``), so this only fires when finite
    inputs of absurd size overflow (data of 1e38 in float32). Tensor results are not scanned:
    during training the Trainer checks the loss and names the term (tinydiff/train.py).

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
    >>> huge = np.full((1, 1), 3e38, np.float32)                    # finite, but float32 overflows
    >>> with np.errstate(over="ignore"):
    ...     d.q_sample(huge, np.array([500]), noise=huge)
    Traceback (most recent call last):
    ...
    ValueError: q_sample: the result overflowed to inf or NaN although every input is finite ...
    """
    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        result = method(self, *args, **kwargs)
        values = result.values() if isinstance(result, dict) else result if isinstance(result, tuple) else (result,)
        if any(isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.isfinite(v).all() for v in values):
            sizes = [float(np.abs(a).max()) for a in (*args, *kwargs.values())
                     if isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.size]
            raise ValueError(f"{method.__name__}: the result overflowed to inf or NaN although every input is "
                             f"finite (they reach {max(sizes, default=0.0):.3g}); diffusion expects data scaled "
                             "to about [-1, 1] or unit variance")
        return result
    return checked


def _choose(name, value, options):
    if value not in options:
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return value


class GaussianDiffusion:
    """Diffusion with Gaussian kernels and a schedule `betas` [T].

    model_mean_type -- what the model's first C output channels predict:
        "eps"  the noise epsilon (DDPM eq. 11), "x0" the clean data, "v" the velocity
        v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022), "mean" the
        mean of p(x_{t-1}|x_t) directly (improved-diffusion's PREVIOUS_X). With
        model_var_type="learned" this is Sohl-Dickstein et al. (2015): mean and log-variance learned.
    model_var_type -- the variance sigma_t^2 of p(x_{t-1}|x_t):
        "fixed_small" beta-tilde_t (posterior variance), "fixed_large" beta_t (DDPM sec. 3.2),
        "learned" the model outputs log sigma^2 in channels C..2C (Sohl-Dickstein et al. 2015),
        "learned_range" the model outputs v_raw in channels C..2C and
        log sigma^2 = v log beta_t + (1 - v) log beta-tilde_t, v = (v_raw + 1)/2 (Nichol & Dhariwal eq. 15).
    loss_type -- "mse" (L_simple), "kl" (the variational bound terms) or "hybrid"
        (L_simple + hybrid_vb_weight * L_vlb, Nichol & Dhariwal sec. 3.1); see tinydiff/losses.py.
    decoder_nll -- the decoder L_0 = -log p(x_0|x_1): "continuous" Gaussian density (any
        float data, e.g. 2-D points), "discretized" over 256 bins (8-bit images in [-1, 1]), or
        "auto" (the default): discretized when every value of x_0 lies on the 8-bit grid,
        continuous otherwise (see decoder_kind).
    mse_weighting -- how L_simple weighs the timesteps: "none" (DDPM) or "min_snr": each
        example's MSE times min(SNR_t, gamma) / SNR_t for eps (Hang et al. 2023, Min-SNR
        weighting, with SNR_t = alpha_bar_t / (1 - alpha_bar_t); min(SNR, gamma) for x0,
        min(SNR, gamma) / (SNR + 1) for v). It stops the nearly-clean timesteps, where the
        eps target is hardest to predict and matters least for samples, from dominating.
    timestep_map -- int [T]: the timestep the model is called with at each of this chain's
        steps (default: the identity). A respaced chain (respacing.respace) keeps K of a trained
        model's steps; it counts them 0..K-1 and maps them back here, so a model is always
        asked about the timesteps it was trained on.

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
    >>> d.num_timesteps, d.learned_variance
    (1000, False)
    >>> float(d.alphas_cumprod[0]) == 1 - 1e-4            # alpha_bar after the first step (the papers' t = 1)
    True
    >>> td.GaussianDiffusion(td.linear_beta_schedule(10), model_var_type="learned_range", loss_type="hybrid").learned_variance
    True
    """

    def __init__(self, betas, model_mean_type="eps", model_var_type="fixed_small",
                 loss_type="mse", decoder_nll="auto", hybrid_vb_weight=0.001, mse_weighting="none",
                 snr_gamma=5.0, timestep_map=None):
        self.model_mean_type = _choose("model_mean_type", model_mean_type, MODEL_MEAN_TYPES)
        self.model_var_type = _choose("model_var_type", model_var_type, MODEL_VAR_TYPES)
        self.loss_type = _choose("loss_type", loss_type, LOSS_TYPES)
        self.decoder_nll = _choose("decoder_nll", decoder_nll, DECODER_NLLS)
        if loss_type == "mse" and model_var_type.startswith("learned"):
            raise ValueError(f"loss_type='mse' with model_var_type={model_var_type!r}: the MSE "
                             "gives the variance no gradient; use loss_type='hybrid' or 'kl'")
        self.hybrid_vb_weight = float(hybrid_vb_weight)
        self.mse_weighting = _choose("mse_weighting", mse_weighting, ("none", "min_snr"))
        if not snr_gamma > 0:
            raise ValueError(f"snr_gamma: expected a positive clipping value, got {snr_gamma!r}")
        self.snr_gamma = float(snr_gamma)

        b = self.betas = validate_betas(betas)                          # [T], float64
        T = self.num_timesteps = len(b)
        self.timestep_map = np.arange(T) if timestep_map is None else np.asarray(timestep_map, dtype=np.int64)
        if self.timestep_map.shape != (T,):
            raise ValueError(f"timestep_map: expected {T} model timesteps, one per step, got shape "
                             f"{self.timestep_map.shape}")
        self.alphas = 1.0 - b
        self.sqrt_betas = np.sqrt(b)
        self.log_betas = np.log(b)
        ab = self.alphas_cumprod = np.cumprod(self.alphas)              # alpha_bar_t
        if ab[-1] <= 0.0:
            i = int(np.argmax(ab <= 0))
            raise ValueError(f"betas: alpha_bar underflows to 0 at t = {i} in float64 (sum of "
                             f"betas = {b.sum():.4g}); use fewer steps or smaller betas")
        ab_prev = self.alphas_cumprod_prev = np.append(1.0, ab[:-1])    # alpha_bar_{t-1}; 1 for the data
        self.alphas_cumprod_next = np.append(ab[1:], 0.0)               # alpha_bar_{t+1} (DDIM inversion)
        self.sqrt_alphas = np.sqrt(self.alphas)
        self.sqrt_alphas_cumprod = np.sqrt(ab)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ab)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - ab)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ab)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ab - 1.0)
        self.snr = ab / (1.0 - ab)                                      # signal-to-noise ratio

        # q(x_{t-1} | x_t, x_0), DDPM eq. 7: beta-tilde_t and the two coefficients of mu-tilde_t.
        pv = self.posterior_variance = b * (1.0 - ab_prev) / (1.0 - ab)
        self.posterior_mean_coef1 = b * np.sqrt(ab_prev) / (1.0 - ab)
        self.posterior_mean_coef2 = (1.0 - ab_prev) * self.sqrt_alphas / (1.0 - ab)
        # At t = 0 the posterior is q(x_0 | x_1, x_0), a point mass: beta-tilde_0 = 0 and its
        # log is -inf. That log-variance is used as the decoder's variance for p(x_0|x_1), which
        # must be a real distribution, so (like improved-diffusion) we replace it by the next
        # value beta-tilde_1, of the same small size. With T = 1 there is no next value; we use beta_0.
        first = pv[1] if T > 1 else b[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, pv[1:]))
        # "fixed_large" is beta_t, except at t = 0, where improved-diffusion also uses beta-tilde_1
        # (~ beta_0 / 2 for slowly varying betas): both fixed choices then share one decoder
        # p(x_0|x_1), and its comment says the decoder log-likelihood is better. That holds for
        # 8-bit images, where a narrower Gaussian puts more mass in the right bin; for a smooth
        # density the true reverse variance at t = 0 is ~beta_0, and the narrower decoder costs
        # ~0.11 nats per dimension (computed for DDPM's linear schedule and N(mu, 0.25) data).
        self.fixed_large_variance = np.append(first, b[1:])
        self.fixed_large_log_variance = np.log(self.fixed_large_variance)
        # (variance, log-variance) tables for p; fixed_small uses the clipped value at t = 0 in both.
        self.fixed_variances = {
            "fixed_small": (np.exp(self.posterior_log_variance_clipped), self.posterior_log_variance_clipped),
            "fixed_large": (self.fixed_large_variance, self.fixed_large_log_variance)}
        # DDPM eq. 11, the eps-model's step x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps)
        # + sigma_t z, needs these two coefficients (samplers.ddpm_step).
        self.sqrt_recip_alphas = np.sqrt(1.0 / self.alphas)
        self.eps_coef = b / np.sqrt(1.0 - ab)                           # beta_t / sqrt(1 - alpha_bar_t)

    @property
    def learned_variance(self) -> bool:
        """True if the model must also output the variance (2C channels instead of C)."""
        return self.model_var_type.startswith("learned")

    def decoder_kind(self, x0) -> str:
        """The decoder used for data x0: ``decoder_nll`` if it names one; for "auto",
        "discretized" when every value of x0 is on the 8-bit grid k/127.5 - 1, k = 0..255
        (8-bit images scaled to [-1, 1]: L_0 is then the probability of the observed pixel
        values, and the bound is comparable with published bits/dim), else "continuous".

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(10))
        >>> d.decoder_kind(np.array([[-1.0, 1.0, 1 / 255]])), d.decoder_kind(np.array([[0.0, -0.2]]))   # 0 is not 8-bit
        ('discretized', 'continuous')
        """
        if self.decoder_nll != "auto":
            return self.decoder_nll
        x = np.asarray(unwrap(x0), dtype=np.float64)
        pixels = (x + 1.0) * 127.5
        on_grid = (x.size > 0 and bool(np.all(np.abs(x) <= 1.0 + 1e-6))
                   and bool(np.all(np.abs(pixels - np.round(pixels)) < 1e-3)))
        return "discretized" if on_grid else "continuous"

    # ------------------------------------------------------------------ helpers
    def coef(self, arr, t, x):
        """extract(arr, t, x.shape) cast to x's dtype: float64 tables, float32 arithmetic for float32 data."""
        if np.dtype(x.dtype).kind != "f":
            raise TypeError(f"data: expected a float32 or float64 array [B, *D], got dtype {x.dtype} "
                            "(scale integer images to floats in [-1, 1] first)")
        return extract(arr, t, x.shape).astype(x.dtype, copy=False)

    def full(self, arr, t, x):
        """A per-timestep value broadcast to the full data shape [B, *D] (a read-only view)."""
        return np.broadcast_to(self.coef(arr, t, x), x.shape)

    def run_model(self, model, x_t, t, model_kwargs=None):
        """model(x_t, timestep_map[t], **model_kwargs): every model call goes through here."""
        t = extract(np.arange(self.num_timesteps), t, x_t.shape).reshape(-1)      # checks t: int [B] in 0..T-1
        return model(x_t, self.timestep_map[t], **(model_kwargs or {}))

    def run_model_checked(self, model, x_t, t, model_kwargs=None):
        """run_model, and a ValueError naming the timesteps if the output holds NaN or inf.

        The samplers and the bound call the model through here: this is the one finiteness
        scan of a sampling step. It sits on the model's output because the network is the only
        part of a step that can go bad by itself (a diverged model, a broken checkpoint); the
        rest of the step is arithmetic on finite tables, and the sampler checks its result once
        at the end (check_sample). Training calls run_model: the Trainer checks the loss.
        """
        out = self.run_model(model, x_t, t, model_kwargs)
        self.check_model_output(unwrap(out), t)
        return out

    def check_model_output(self, values, t):
        """A ValueError naming the timesteps if a model output array [B, ...] holds NaN or inf."""
        if isinstance(values, np.ndarray) and values.dtype.kind == "f" and not np.isfinite(values).all():
            rows = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
            t = np.atleast_1d(t)
            steps = np.unique(t[rows]) if len(t) == len(values) else np.unique(t)
            raise ValueError(f"model output: {int(rows.sum())} of {len(values)} examples hold NaN or inf, at "
                             f"timesteps t = {steps[:8].tolist()}; the model (or its weights) "
                             "is broken: check the checkpoint and the training loss")

    def _check(self, **arrays):
        """Each named array is data [B, *D] (float32/float64, finite: checks.check_data), all of
        one shape; None means not given. Every public method calls this first."""
        first = None
        for name, x in arrays.items():
            if x is None:
                continue
            check_data(x, name)
            if first is None:
                first = (name, x)
            else:
                check_same_shape(first[1], x, first[0], name)

    # ------------------------------------------------------------------ forward process q (forward.py)
    @finite_result
    def q_step_mean_variance(self, x_prev, t):
        """q(x_t | x_{t-1}), DDPM eq. 2: (mean, variance, log_variance), each [B, *D] (forward.q_step_mean_variance).

        >>> d = td.GaussianDiffusion(np.array([0.19, 0.5]))
        >>> mean, var, _ = d.q_step_mean_variance(np.ones((1, 1)), np.array([0]))
        >>> float(mean[0, 0]), float(var[0, 0])                  # sqrt(1 - 0.19) = 0.9, and beta_1
        (0.9, 0.19)
        """
        self._check(x_prev=x_prev)
        return forward.q_step_mean_variance(self, x_prev, t)

    @finite_result
    def q_step(self, x_prev, t, noise=None, rng=None):
        """Sample x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps (DDPM eq. 2; forward.q_step).
        eps is ``noise`` if given, else drawn from rng. [B, *D].

        >>> d = td.GaussianDiffusion(np.array([0.19, 0.5]))
        >>> x1 = d.q_step(np.ones((1, 1)), np.array([0]), noise=np.ones((1, 1)))
        >>> round(float(x1[0, 0]), 4)                            # 0.9 * 1 + sqrt(0.19) * 1
        1.3359
        """
        self._check(x_prev=x_prev, noise=noise)
        return forward.q_step(self, x_prev, t, standard_normal_noise(x_prev.shape, x_prev.dtype, noise, rng))

    @finite_result
    def q_mean_variance(self, x0, t):
        """q(x_t | x_0), DDPM eq. 4: (mean, variance, log_variance), each [B, *D] (forward.q_mean_variance).

        >>> d = td.GaussianDiffusion(np.array([0.19, 0.5]))
        >>> mean, var, _ = d.q_mean_variance(np.ones((1, 1)), np.array([1]))
        >>> round(float(mean[0, 0]), 6), round(float(var[0, 0]), 6)    # alpha_bar = 0.81 * 0.5 = 0.405
        (0.636396, 0.595)
        """
        self._check(x0=x0)
        return forward.q_mean_variance(self, x0, t)

    @finite_result
    def q_sample(self, x0, t, noise=None, rng=None):
        """Sample x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps in one jump (DDPM eq. 4;
        forward.q_sample). eps is ``noise`` if given, else drawn from rng. x0: [B, *D] -> x_t [B, *D].

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> x0 = np.ones((3, 2), dtype=np.float32)
        >>> x_t = d.q_sample(x0, np.array([0, 500, 999]), rng=np.random.default_rng(0))
        >>> x_t.shape, x_t.dtype
        ((3, 2), dtype('float32'))
        >>> round(float(d.q_sample(x0, np.array([999] * 3), noise=np.zeros_like(x0))[0, 0]), 4)   # sqrt(ab_T) x0
        0.0064
        """
        self._check(x0=x0, noise=noise)
        return forward.q_sample(self, x0, t, standard_normal_noise(x0.shape, x0.dtype, noise, rng))

    @finite_result
    def q_posterior_mean_variance(self, x0, x_t, t):
        """q(x_{t-1} | x_t, x_0) = N(mu-tilde_t, beta-tilde_t I), DDPM eq. 6-7 (forward.q_posterior_mean_variance).
        Returns (mean, variance, log_variance_clipped), each [B, *D].

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> x0, x_t = np.zeros((1, 2)), np.ones((1, 2))
        >>> mean, var, _ = d.q_posterior_mean_variance(x0, x_t, np.array([500]))
        >>> bool(0 < mean[0, 0] < 1), bool(var[0, 0] < d.betas[500])     # between x_0 and x_t; beta-tilde < beta
        (True, True)
        """
        self._check(x_t=x_t, x0=x0)
        return forward.q_posterior_mean_variance(self, x0, x_t, t)

    # ------------------------------------------------------------------ changing parametrisation (forward.py)
    @finite_result
    def predict_x0_from_eps(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), DDPM eq. 4 solved for x_0. [B, *D].

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> x0, eps, t = np.array([[0.5, -1.0]]), np.array([[0.3, 0.2]]), np.array([400])
        >>> x_t = d.q_sample(x0, t, noise=eps)
        >>> d.predict_x0_from_eps(x_t, t, eps).round(6).tolist()            # the exact eps gives x_0 back
        [[0.5, -1.0]]
        """
        self._check(x_t=x_t, eps=eps)
        return forward.predict_x0_from_eps(self, x_t, t, eps)

    @finite_result
    def predict_eps_from_x0(self, x_t, t, x0):
        """eps = (sqrt(1/alpha_bar_t) x_t - x_0) / sqrt(1/alpha_bar_t - 1), the inverse of predict_x0_from_eps.

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> x0, t = np.array([[0.5]]), np.array([400])
        >>> d.predict_eps_from_x0(d.q_sample(x0, t, noise=np.array([[0.3]])), t, x0).round(6).tolist()
        [[0.3]]
        """
        self._check(x_t=x_t, x0=x0)
        return forward.predict_eps_from_x0(self, x_t, t, x0)

    @finite_result
    def predict_x0_from_v(self, x_t, t, v):
        """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v (Salimans & Ho 2022, sec. 4). [B, *D]."""
        self._check(x_t=x_t, v=v)
        return forward.predict_x0_from_v(self, x_t, t, v)

    @finite_result
    def velocity(self, x0, t, eps):
        """The v-prediction target v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022)."""
        self._check(x0=x0, eps=eps)
        return forward.velocity(self, x0, t, eps)

    @finite_result
    def predict_x0_from_mean(self, x_t, t, mean):
        """x_0 from the posterior mean mu-tilde = coef1 x_0 + coef2 x_t (DDPM eq. 7). [B, *D]."""
        self._check(x_t=x_t, mean=mean)
        return forward.predict_x0_from_mean(self, x_t, t, mean)

    @finite_result
    def score_from_eps(self, x_t, t, eps):
        """grad_{x_t} log q(x_t | x_0) = -eps / sqrt(1 - alpha_bar_t): an eps-predictor is a scaled score.

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> d.score_from_eps(np.zeros((1, 1)), np.array([999]), np.ones((1, 1))).round(4).tolist()   # ~ -eps at pure noise
        [[-1.0]]
        """
        self._check(x_t=x_t, eps=eps)
        return forward.score_from_eps(self, x_t, t, eps)

    # ------------------------------------------------------------------ reverse process p (reverse.py)
    @finite_result
    def p_mean_variance(self, model, x_t, t, clip_denoised=False, denoised_fn=None, model_kwargs=None):
        """Run the model and return p(x_{t-1} | x_t) = N(mean, variance) (reverse.p_mean_variance):
        a dict of [B, *D] values mean, variance, log_variance, pred_x0, pred_eps.

        A NaN or inf in the model's output (a diverged model, a broken checkpoint) raises a
        ValueError naming the timesteps, instead of spreading through the chain.

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)               # a model that predicts eps = 0
        >>> out = d.p_mean_variance(zero_eps, np.ones((2, 2)), np.array([10, 999]))
        >>> sorted(out), out["mean"].shape
        (['log_variance', 'mean', 'pred_eps', 'pred_x0', 'variance'], (2, 2))
        """
        self._check(x_t=x_t)
        return reverse.p_mean_variance(self, model, x_t, t, clip_denoised, denoised_fn, model_kwargs)

    @finite_result
    def p_mean_variance_from_output(self, model_output, x_t, t, clip_denoised=False, denoised_fn=None):
        """p(x_{t-1} | x_t) from a model output [B, C_out, *rest] (reverse.p_mean_variance_from_output).

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000), model_var_type="learned_range", loss_type="hybrid")
        >>> out = d.p_mean_variance_from_output(np.array([[0.0, 0.0, 1.0, 1.0]]), np.zeros((1, 2)), np.array([500]))
        >>> bool(np.isclose(out["variance"][0, 0], d.betas[500]))                            # v = 1: sigma^2 = beta_t
        True
        """
        self._check(x_t=x_t)
        self.check_model_output(model_output, t)     # an ndarray; a Tensor is not scanned
        return reverse.p_mean_variance_from_output(self, model_output, x_t, t, clip_denoised, denoised_fn)

    @finite_result
    def p_sample(self, model, x_t, t, rng=None, noise=None, clip_denoised=False, denoised_fn=None,
                 model_kwargs=None):
        """One ancestral step x_{t-1} = mean + sigma_t z (DDPM Algorithm 2 lines 3-4; reverse.p_sample),
        through p's mean and variance for any model type. For the eps-model with a fixed variance
        the same step is DDPM eq. 11 written out: samplers.ddpm_step.

        x_t: ndarray [B, *D]; t: int [B]. Returns {"sample": x_{t-1}, "pred_x0": ...} as ndarrays
        (wrap calls in tinydiff.no_grad() to skip recording a graph).

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)
        >>> out = d.p_sample(zero_eps, np.ones((4, 2), np.float32), np.full(4, 999), rng=np.random.default_rng(0))
        >>> out["sample"].shape, out["sample"].dtype
        ((4, 2), dtype('float32'))
        """
        self._check(x_t=x_t, noise=noise)
        return reverse.p_sample(self, model, x_t, t, rng, noise, clip_denoised, denoised_fn, model_kwargs)

    # ------------------------------------------------------------------ the losses (losses.py)
    @finite_result
    def training_losses(self, model, x0, t, noise=None, rng=None, model_kwargs=None):
        """Per-example training losses for x0 [B, *D] at timesteps t [B] (DDPM Algorithm 1):
        a dict of [B] terms "loss", "mse" and/or "vb" (losses.training_losses; for an eps-model
        with the MSE, losses.eps_loss). eps is ``noise`` if given, else drawn from rng. Tensors
        when the model output is a Tensor, so terms["loss"].mean().backward() trains it.

        >>> d = td.make_diffusion("hybrid", td.linear_beta_schedule(100))
        >>> model = td.models.ToyMLP(heads=2, hidden=16, rng=np.random.default_rng(0))
        >>> x0 = np.ones((4, 2), np.float32)
        >>> terms = d.training_losses(model, x0, np.array([0, 10, 50, 99]), rng=np.random.default_rng(1))
        >>> sorted(terms), terms["loss"].shape
        (['loss', 'mse', 'vb'], (4,))
        >>> terms["loss"].mean().backward()                              # a Tensor: trains the model
        """
        self._check(x0=x0, noise=noise)
        if x0.ndim < 2:
            raise ValueError(f"x0: expected [B, C, *rest] with channels on axis 1, got shape {x0.shape}")
        noise = standard_normal_noise(x0.shape, x0.dtype, noise, rng)
        return losses.training_losses(self, model, x0, t, noise, model_kwargs)

    def mse_weight(self, t):
        """Min-SNR-gamma weights of the MSE for timesteps t [B], float64 [B] (losses.mse_weight).

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000), mse_weighting="min_snr")
        >>> float(d.mse_weight(np.array([999]))[0])                       # the noisy end keeps weight 1
        1.0
        """
        return losses.mse_weight(self, t)

    # ------------------------------------------------------------------ the bound (bound.py)
    @finite_result
    def vb_terms_bpd(self, model_output, x0, x_t, t, clip_denoised=False):
        """The bound's term for each example at its own timestep t, in bits per dimension
        (bound.vb_terms_bpd): {"output": [B], "pred_x0": [B, *D]}.

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(100), loss_type="kl")
        >>> x0, noise, t = np.zeros((2, 2)), np.ones((2, 2)), np.array([0, 50])
        >>> x_t = d.q_sample(x0, t, noise=noise)
        >>> exact = d.predict_eps_from_x0(x_t, t, x0)                   # a perfect eps prediction
        >>> terms = d.vb_terms_bpd(exact, x0, x_t, t)
        >>> round(float(terms["output"][1]), 9)                          # KL(q || p) = 0 when p is exact
        0.0
        """
        self._check(x_t=x_t, x0=x0)
        self.check_model_output(model_output, t)     # an ndarray; a Tensor is not scanned
        return bound.vb_terms_bpd(self, model_output, x0, x_t, t, clip_denoised)

    @finite_result
    def prior_bpd(self, x0):
        """L_T = KL( q(x_T | x_0) || N(0, I) ) in bits/dim, [B] (DDPM eq. 5; bound.prior_bpd).

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> float(d.prior_bpd(np.zeros((1, 2)))[0]) < 1e-4                 # q(x_T | x_0) is almost N(0, I)
        True
        """
        self._check(x0=x0)
        return bound.prior_bpd(self, x0)

    @finite_result
    def calc_bpd_loop(self, model, x0, rng=None, progress=None, clip_denoised=None, model_kwargs=None,
                      num_timesteps=None):
        """The whole variational bound on -log p(x_0), per example and per term (bound.calc_bpd_loop:
        what each number is, and the stratified estimate num_timesteps=K < T).

        >>> betas = td.linear_beta_schedule(50, 1e-3, 0.2)
        >>> d = td.GaussianDiffusion(betas)
        >>> x0 = np.full((3, 2), 0.5)                                    # real-valued data: a density bound
        >>> exact = lambda x_t, t: d.predict_eps_from_x0(x_t, t, x0)     # knows the answer
        >>> out = d.calc_bpd_loop(exact, x0, rng=np.random.default_rng(0))
        >>> out["vb"].shape, d.decoder_kind(x0)
        ((3, 50), 'continuous')
        >>> bool(np.allclose(out["vb"][:, 1:], 0))                        # every KL term vanishes for a perfect model
        True
        """
        self._check(x0=x0)
        return bound.calc_bpd_loop(self, model, x0, rng, progress, clip_denoised, model_kwargs, num_timesteps)

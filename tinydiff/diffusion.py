"""GaussianDiffusion: the forward process q, its posterior, and the learned reverse process p.

Notation (DDPM, Ho et al. 2020; code timesteps are 0-based, see tinydiff/schedules.py):

    q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I),         alpha_t = 1 - beta_t
    q(x_t | x_0)     = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), alpha_bar_t = prod_{s<=t} alpha_s
    p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I)             (the model)

Code index t = 0..T-1 is the paper's step t+1: x_t in a docstring here is the paper's
x_{t+1}, and "x_{t-1}" at t = 0 is the data x_0 itself (so p_sample at t = 0 adds no noise).
Every method takes per-example timesteps t: int array [B], data of shape [B, *D], and
returns arrays in the data's dtype (float32 in, float32 out); buffers are float64.

Names follow openai/improved-diffusion (gaussian_diffusion.py) so the two read side by side,
with one exception: x0 where it writes x_start (README: "Names in other codebases").
The class holds the distributions and everything computed from them, in the papers' order:
the forward process q and its posterior, the reverse process p and one ancestral step, then
the training losses and the variational bound. Sampling loops (DDPM, strided, DDIM,
Langevin) are in tinydiff/samplers.py; the Gaussian math (KL, likelihoods) in gaussian.py.

Every public method checks its arguments before computing (``_check``: float32/float64 data
with a batch axis, finite, arrays of one shape; ``extract``: t int [B] in 0..T-1) and its
array results after (``finite_result``), and ``p_mean_variance``, which the samplers call,
refuses a model output holding NaN or inf: a wrong argument is a ValueError or TypeError that
names it, never a NaN found three functions later.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .checks import check_data, check_same_shape
from .engine import Tensor, unwrap
from .gaussian import decoder_nll, mean_flat, normal_kl, standard_normal_noise
from .schedules import extract, validate_betas

LOG2 = math.log(2.0)

MODEL_MEAN_TYPES = ("eps", "x0", "v", "mean")  # what the model's first C channels predict
MODEL_VAR_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
LOSS_TYPES = ("mse", "kl", "hybrid")
DECODER_NLLS = ("auto", "continuous", "discretized")


def check_step(x, t, where: str) -> None:
    """A ValueError naming the step if a sampler's new x holds NaN or inf (it would only spread).

    >>> td.diffusion.check_step(np.zeros((2, 2)), np.array([3, 3]), "ddpm_sample_loop")   # silent when finite
    """
    if not np.isfinite(x).all():
        t = np.asarray(t)
        raise ValueError(f"{where}: the sample became NaN or inf at t = {np.unique(t)[:8].tolist()}; the model's "
                         "predictions or the sampler's step sizes are out of range for this schedule")


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
        (L_simple + hybrid_vb_weight * L_vlb, Nichol & Dhariwal sec. 3.1); see losses.training_losses.
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
        steps (default: the identity). A respaced chain (samplers.respace) keeps K of a trained
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
        self._fixed_variances = {
            "fixed_small": (np.exp(self.posterior_log_variance_clipped), self.posterior_log_variance_clipped),
            "fixed_large": (self.fixed_large_variance, self.fixed_large_log_variance)}

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
    def run_model(self, model, x_t, t, model_kwargs=None):
        """model(x_t, timestep_map[t], **model_kwargs): every model call goes through here."""
        t = extract(np.arange(self.num_timesteps), t, x_t.shape).reshape(-1)      # checks t: int [B] in 0..T-1
        return model(x_t, self.timestep_map[t], **(model_kwargs or {}))

    def _check(self, **arrays):
        """Each named array is data [B, *D] (float32/float64, finite: checks.check_data), all of
        one shape. Every public method calls this first, so a wrong argument is named at the door."""
        first = None
        for name, x in arrays.items():
            check_data(x, name)
            if first is None:
                first = (name, x)
            else:
                check_same_shape(first[1], x, first[0], name)

    def coef(self, arr, t, x):
        """extract(arr, t, x.shape) cast to x's dtype: float64 tables, float32 arithmetic for float32 data."""
        if np.dtype(x.dtype).kind != "f":
            raise TypeError(f"data: expected a float32 or float64 array [B, *D], got dtype {x.dtype} "
                            "(scale integer images to floats in [-1, 1] first)")
        return extract(arr, t, x.shape).astype(x.dtype, copy=False)

    def _full(self, arr, t, x):
        """A per-timestep value broadcast to the full data shape [B, *D] (a read-only view)."""
        return np.broadcast_to(self.coef(arr, t, x), x.shape)

    # ------------------------------------------------------------------ forward process q
    @finite_result
    def q_step_mean_variance(self, x_prev, t):
        """One forward step q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), DDPM eq. 2.

        x_prev: [B, *D] (the data x_0 when t = 0). Returns (mean, variance, log_variance), each [B, *D].

        >>> d = td.GaussianDiffusion(np.array([0.19, 0.5]))
        >>> mean, var, _ = d.q_step_mean_variance(np.ones((1, 1)), np.array([0]))
        >>> float(mean[0, 0]), float(var[0, 0])                  # sqrt(1 - 0.19) = 0.9, and beta_1
        (0.9, 0.19)
        """
        self._check(x_prev=x_prev)
        return (self.coef(self.sqrt_alphas, t, x_prev) * x_prev,
                self._full(self.betas, t, x_prev), self._full(self.log_betas, t, x_prev))

    @finite_result
    def q_step(self, x_prev, t, noise=None, rng=None):
        """Sample x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, eps ~ N(0, I) (DDPM eq. 2). [B, *D].

        >>> d = td.GaussianDiffusion(np.array([0.19, 0.5]))
        >>> x1 = d.q_step(np.ones((1, 1)), np.array([0]), noise=np.ones((1, 1)))
        >>> round(float(x1[0, 0]), 4)                            # 0.9 * 1 + sqrt(0.19) * 1
        1.3359
        """
        self._check(x_prev=x_prev, **({} if noise is None else {"noise": noise}))
        noise = standard_normal_noise(x_prev.shape, x_prev.dtype, noise, rng)
        return self.coef(self.sqrt_alphas, t, x_prev) * x_prev + self.coef(self.sqrt_betas, t, x_prev) * noise

    @finite_result
    def q_mean_variance(self, x0, t):
        """q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), DDPM eq. 4.

        x0: [B, *D]. Returns (mean, variance, log_variance), each [B, *D].

        >>> d = td.GaussianDiffusion(np.array([0.19, 0.5]))
        >>> mean, var, _ = d.q_mean_variance(np.ones((1, 1)), np.array([1]))
        >>> round(float(mean[0, 0]), 6), round(float(var[0, 0]), 6)    # alpha_bar = 0.81 * 0.5 = 0.405
        (0.636396, 0.595)
        """
        self._check(x0=x0)
        return (self.coef(self.sqrt_alphas_cumprod, t, x0) * x0,
                self._full(1.0 - self.alphas_cumprod, t, x0),
                self._full(self.log_one_minus_alphas_cumprod, t, x0))

    @finite_result
    def q_sample(self, x0, t, noise=None, rng=None):
        """Sample x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps in one jump (DDPM eq. 4,
        the reparametrisation in Algorithm 1 line 5). x0, noise: [B, *D]. Returns x_t [B, *D].

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> x0 = np.ones((3, 2), dtype=np.float32)
        >>> x_t = d.q_sample(x0, np.array([0, 500, 999]), rng=np.random.default_rng(0))
        >>> x_t.shape, x_t.dtype
        ((3, 2), dtype('float32'))
        >>> round(float(d.q_sample(x0, np.array([999] * 3), noise=np.zeros_like(x0))[0, 0]), 4)   # sqrt(ab_T) x0
        0.0064
        """
        self._check(x0=x0, **({} if noise is None else {"noise": noise}))
        noise = standard_normal_noise(x0.shape, x0.dtype, noise, rng)
        return (self.coef(self.sqrt_alphas_cumprod, t, x0) * x0
                + self.coef(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    @finite_result
    def q_posterior_mean_variance(self, x0, x_t, t):
        """q(x_{t-1} | x_t, x_0) = N(mu-tilde_t, beta-tilde_t I), DDPM eq. 6-7:

            mu-tilde_t   = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                         + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
            beta-tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

        x0, x_t: [B, *D]. Returns (mean, variance, log_variance_clipped), each [B, *D]; at t = 0
        the variance is 0 and the log-variance is clipped to log beta-tilde_1 (see __init__).

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> x0, x_t = np.zeros((1, 2)), np.ones((1, 2))
        >>> mean, var, _ = d.q_posterior_mean_variance(x0, x_t, np.array([500]))
        >>> bool(0 < mean[0, 0] < 1), bool(var[0, 0] < d.betas[500])     # between x_0 and x_t; beta-tilde < beta
        (True, True)
        """
        self._check(x_t=x_t, x0=x0)
        mean = (self.coef(self.posterior_mean_coef1, t, x_t) * x0
                + self.coef(self.posterior_mean_coef2, t, x_t) * x_t)
        return (mean, self._full(self.posterior_variance, t, x_t),
                self._full(self.posterior_log_variance_clipped, t, x_t))

    # ------------------------------------------------------------------ changing parametrisation
    @finite_result
    def predict_x0_from_eps(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), DDPM eq. 4 solved for x_0,
        written as sqrt(1/alpha_bar_t) x_t - sqrt(1/alpha_bar_t - 1) eps. [B, *D].

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> x0, eps, t = np.array([[0.5, -1.0]]), np.array([[0.3, 0.2]]), np.array([400])
        >>> x_t = d.q_sample(x0, t, noise=eps)
        >>> d.predict_x0_from_eps(x_t, t, eps).round(6).tolist()            # the exact eps gives x_0 back
        [[0.5, -1.0]]
        """
        self._check(x_t=x_t, eps=eps)
        return (self.coef(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - self.coef(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

    @finite_result
    def predict_eps_from_x0(self, x_t, t, x0):
        """eps = (sqrt(1/alpha_bar_t) x_t - x_0) / sqrt(1/alpha_bar_t - 1), the inverse of
        predict_x0_from_eps. [B, *D]."""
        self._check(x_t=x_t, x0=x0)
        return ((self.coef(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0)
                / self.coef(self.sqrt_recipm1_alphas_cumprod, t, x_t))

    @finite_result
    def predict_x0_from_v(self, x_t, t, v):
        """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v (Salimans & Ho 2022, sec. 4). [B, *D]."""
        self._check(x_t=x_t, v=v)
        return (self.coef(self.sqrt_alphas_cumprod, t, x_t) * x_t
                - self.coef(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v)

    @finite_result
    def velocity(self, x0, t, eps):
        """The v-prediction target v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0
        (Salimans & Ho 2022, sec. 4). x0, eps: [B, *D]. Returns v [B, *D]."""
        self._check(x0=x0, eps=eps)
        return (self.coef(self.sqrt_alphas_cumprod, t, x0) * eps
                - self.coef(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0)

    @finite_result
    def predict_x0_from_mean(self, x_t, t, mean):
        """x_0 from the posterior mean: mu-tilde = coef1 x_0 + coef2 x_t solved for x_0 (DDPM eq. 7;
        improved-diffusion's _predict_xstart_from_xprev). [B, *D]."""
        self._check(x_t=x_t, mean=mean)
        return ((mean - self.coef(self.posterior_mean_coef2, t, x_t) * x_t)
                / self.coef(self.posterior_mean_coef1, t, x_t))

    @finite_result
    def score_from_eps(self, x_t, t, eps):
        """grad_{x_t} log q(x_t | x_0) = -eps / sqrt(1 - alpha_bar_t) (Song & Ermon; DDPM sec. 3.2):
        an eps-predictor is a scaled score estimator. [B, *D].

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> d.score_from_eps(np.zeros((1, 1)), np.array([999]), np.ones((1, 1))).round(4).tolist()   # ~ -eps at pure noise
        [[-1.0]]
        """
        self._check(x_t=x_t, eps=eps)
        return -eps / self.coef(self.sqrt_one_minus_alphas_cumprod, t, x_t)

    # ------------------------------------------------------------------ reverse process p
    def p_mean_variance(self, model, x_t, t, clip_denoised=False, denoised_fn=None, model_kwargs=None):
        """Run the model and return p(x_{t-1} | x_t) = N(mean, variance): see p_mean_variance_from_output.

        The samplers call this: a NaN or inf in the model's output (a diverged model, a broken
        checkpoint) raises a ValueError naming the timesteps, instead of spreading through the chain.

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)               # a model that predicts eps = 0
        >>> out = d.p_mean_variance(zero_eps, np.ones((2, 2)), np.array([10, 999]))
        >>> sorted(out), out["mean"].shape
        (['log_variance', 'mean', 'pred_eps', 'pred_x0', 'variance'], (2, 2))
        """
        self._check(x_t=x_t)
        out = self.run_model(model, x_t, t, model_kwargs)
        self._check_output(unwrap(out), t)
        return self.p_mean_variance_from_output(out, x_t, t, clip_denoised, denoised_fn)

    def _check_output(self, out, t):
        """A ValueError naming the timesteps if a model output array holds NaN or inf."""
        if isinstance(out, np.ndarray) and out.dtype.kind == "f" and not np.isfinite(out).all():
            rows = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
            t = np.atleast_1d(t)
            steps = np.unique(t[rows]) if len(t) == len(out) else np.unique(t)
            raise ValueError(f"model output: {int(rows.sum())} of {len(out)} examples hold NaN or inf, at "
                             f"timesteps t = {steps[:8].tolist()}; the model (or its weights) "
                             "is broken: check the checkpoint and the training loss")

    @finite_result
    def p_mean_variance_from_output(self, model_output, x_t, t, clip_denoised=False, denoised_fn=None):
        """p(x_{t-1} | x_t) from a model output [B, C_out, *rest] (channels on axis 1).

        C_out = C, the channels of x_t: [B, C, *rest], for fixed variances, and 2C for
        learned ones (first C: the mean-type prediction; last C: log-variance or v_raw).
        pred_x0 goes through denoised_fn and, if clip_denoised, is clipped to [-1, 1] (images)
        before the mean mu-tilde(pred_x0, x_t) is formed (DDPM eq. 7 with x_0 replaced by its
        estimate; for eps this equals DDPM eq. 11). For model_mean_type="mean" the mean is the
        model's own and only the reported pred_x0 is processed.
        Returns a dict of [B, *D] values: mean, variance, log_variance, pred_x0 and pred_eps,
        where x_t = sqrt(alpha_bar_t) pred_x0 + sqrt(1 - alpha_bar_t) pred_eps (the model's eps
        itself when eps is predicted and x_0 is not processed). Tensors if model_output is one.

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000), model_var_type="learned_range", loss_type="hybrid")
        >>> x_t, t = np.zeros((1, 2)), np.array([500])
        >>> out = d.p_mean_variance_from_output(np.array([[0.0, 0.0, 1.0, 1.0]]), x_t, t)   # eps = 0, v_raw = +1
        >>> bool(np.isclose(out["variance"][0, 0], d.betas[500]))                            # v = 1: sigma^2 = beta_t
        True
        """
        self._check(x_t=x_t)
        if x_t.ndim < 2:
            raise ValueError(f"x_t: expected [B, C, *rest] with channels on axis 1, got shape {tuple(x_t.shape)}")
        self._check_output(model_output, t)
        C = x_t.shape[1]
        learned = self.model_var_type.startswith("learned")
        expected = (x_t.shape[0], 2 * C if learned else C) + tuple(x_t.shape[2:])
        if tuple(model_output.shape) != expected:
            raise ValueError(f"model output: expected shape {expected} for x_t of shape {tuple(x_t.shape)} "
                             f"and model_var_type={self.model_var_type!r}, got {tuple(model_output.shape)}")
        prediction = model_output[:, :C] if learned else model_output

        if self.model_var_type == "learned":            # the model outputs log sigma^2 itself
            log_variance = model_output[:, C:]
            variance = np.exp(log_variance)
        elif self.model_var_type == "learned_range":    # Nichol & Dhariwal eq. 15
            # v = (v_raw + 1)/2: v_raw = -1 gives beta-tilde_t, +1 gives beta_t; not clamped, as in the paper.
            frac = (model_output[:, C:] + 1.0) / 2.0
            log_variance = (frac * self.coef(self.log_betas, t, x_t)
                            + (1.0 - frac) * self.coef(self.posterior_log_variance_clipped, t, x_t))
            variance = np.exp(log_variance)
        else:                                           # fixed_small or fixed_large: a table lookup
            variance_table, log_variance_table = self._fixed_variances[self.model_var_type]
            variance = self._full(variance_table, t, x_t)
            log_variance = self._full(log_variance_table, t, x_t)

        processed = clip_denoised or denoised_fn is not None

        def process(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return np.clip(x0, -1.0, 1.0) if clip_denoised else x0

        if self.model_mean_type == "mean":              # mean given; x_0 only reported
            mean = prediction
            pred_x0 = process(self.predict_x0_from_mean(x_t, t, prediction))
        else:
            if self.model_mean_type == "eps":
                pred_x0 = self.predict_x0_from_eps(x_t, t, prediction)
            elif self.model_mean_type == "x0":
                pred_x0 = prediction
            else:                                       # "v"
                pred_x0 = self.predict_x0_from_v(x_t, t, prediction)
            pred_x0 = process(pred_x0)
            mean = self.q_posterior_mean_variance(pred_x0, x_t, t)[0]
        if self.model_mean_type == "eps" and not processed:
            pred_eps = prediction
        else:
            pred_eps = self.predict_eps_from_x0(x_t, t, pred_x0)
        return {"mean": mean, "variance": variance, "log_variance": log_variance,
                "pred_x0": pred_x0, "pred_eps": pred_eps}

    @finite_result
    def p_sample(self, model, x_t, t, rng=None, noise=None, clip_denoised=False, denoised_fn=None,
                 model_kwargs=None):
        """One ancestral step x_{t-1} = mean + sigma_t z, z ~ N(0, I), and z = 0 at t = 0
        (DDPM Algorithm 2, lines 3-4; its t = 1 is our t = 0).

        x_t: ndarray [B, *D]; t: int [B]. Returns {"sample": x_{t-1}, "pred_x0": ...} as ndarrays
        (a Tensor model output is read through .data; wrap calls in tinydiff.no_grad() to skip
        recording a graph).

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)
        >>> out = d.p_sample(zero_eps, np.ones((4, 2), np.float32), np.full(4, 999), rng=np.random.default_rng(0))
        >>> out["sample"].shape, out["sample"].dtype
        ((4, 2), dtype('float32'))
        """
        out = self.p_mean_variance(model, x_t, t, clip_denoised, denoised_fn, model_kwargs)
        mean, log_variance, pred_x0 = (unwrap(out[k]) for k in ("mean", "log_variance", "pred_x0"))
        noise = standard_normal_noise(x_t.shape, x_t.dtype, noise, rng)
        last_step = extract(np.arange(self.num_timesteps), t, x_t.shape) == 0   # [B, 1, ..., 1]
        sample = mean + np.where(last_step, 0.0, np.exp(0.5 * log_variance) * noise)
        check_step(sample, t, "p_sample")
        return {"sample": sample.astype(x_t.dtype, copy=False), "pred_x0": pred_x0}

    # ------------------------------------------------------------------ the bound and the losses
    # The bound (DDPM eq. 5, the paper's 1-based steps):
    #
    #   -log p(x_0) <= L_T + sum_{t=2..T} L_{t-1} + L_0,
    #   L_T     = KL( q(x_T | x_0) || N(0, I) )                    prior term, no parameters
    #   L_{t-1} = KL( q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t) )    Gaussian vs Gaussian, closed form
    #   L_0     = -log p(x_0 | x_1)                                  decoder
    #
    # With 0-based code index t the term at index t is the paper's L_t: index 0 is the decoder
    # L_0, and index t >= 1 the KL of the model's step from code x_t to x_{t-1}. "bpd" is bits
    # per dimension: nats / log 2, averaged over the D values of one example.
    @finite_result
    def vb_terms_bpd(self, model_output, x0, x_t, t, clip_denoised=False):
        """The bound's term for each example at its own timestep t, in bits per dimension.

        output[b] = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) (DDPM eq. 5) where t[b] > 0, and the
        decoder NLL -log p(x_0|x_1) where t[b] = 0; both are computed for the whole batch and
        np.where picks one per example (no loop over the batch).
        model_output: [B, C_out, *rest] as returned by the model. x0, x_t: [B, *D]; t: int [B].
        Returns {"output": [B] bits/dim, "pred_x0": [B, *D]} (Tensors if model_output is one).

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(100), loss_type="kl")
        >>> x0, noise, t = np.zeros((2, 2)), np.ones((2, 2)), np.array([0, 50])
        >>> x_t = d.q_sample(x0, t, noise=noise)
        >>> exact = d.predict_eps_from_x0(x_t, t, x0)                   # a perfect eps prediction
        >>> terms = d.vb_terms_bpd(exact, x0, x_t, t)
        >>> round(float(terms["output"][1]), 9)                          # KL(q || p) = 0 when p is exact
        0.0
        """
        self._check(x_t=x_t, x0=x0)
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_mean_variance_from_output(model_output, x_t, t, clip_denoised=clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, p["mean"], p["log_variance"])) / LOG2
        nll = mean_flat(decoder_nll(x0, p["mean"], p["log_variance"], self.decoder_kind(x0))) / LOG2
        return {"output": np.where(np.asarray(t) == 0, nll, kl), "pred_x0": p["pred_x0"]}

    @finite_result
    def training_losses(self, model, x0, t, noise=None, rng=None, model_kwargs=None):
        """Per-example training losses for x0 [B, *D] at timesteps t [B] (DDPM Algorithm 1).

        x_t = q_sample(x0, t, noise); out = model(x_t, t). Returns a dict of [B] arrays, Tensors
        when the model output is a Tensor (so terms["loss"].mean().backward() trains it):
          "mse"  L_simple (DDPM eq. 14): mean over dimensions of (target - prediction)^2, where
                 the target is eps, x_0, v or the posterior mean mu-tilde, per model_mean_type;
          "vb"   the bound term at t in bits/dim (vb_terms_bpd): the paper's L_t, the decoder at
                 t = 0. This is the raw term; improved-diffusion's terms["vb"] already carries
                 its factor T/1000 (so the two differ by that factor);
          "loss" what to minimise:
            mse    -> mse
            kl     -> vb  (so T * E_t[loss] + L_T is the bound on -log p(x_0) in bits/dim)
            hybrid -> mse + lambda * T * vb, lambda = hybrid_vb_weight (0.001),
                      L_hybrid = L_simple + lambda L_vlb of Nichol & Dhariwal sec. 3.1. L_vlb is a
                      sum of T terms; with t uniform, T * vb is its unbiased one-sample estimate,
                      hence the factor T. Inside vb the mean is stop-gradiented (.detach()), so
                      vb trains only the variance and L_simple alone trains the mean.

        >>> d = td.make_diffusion("hybrid", td.linear_beta_schedule(100))
        >>> model = td.models.ToyMLP(heads=2, hidden=16, rng=np.random.default_rng(0))
        >>> x0 = np.ones((4, 2), np.float32)
        >>> terms = d.training_losses(model, x0, np.array([0, 10, 50, 99]), rng=np.random.default_rng(1))
        >>> sorted(terms), terms["loss"].shape
        (['loss', 'mse', 'vb'], (4,))
        >>> terms["loss"].mean().backward()                              # a Tensor: trains the model
        """
        self._check(x0=x0, **({} if noise is None else {"noise": noise}))
        if x0.ndim < 2:
            raise ValueError(f"x0: expected [B, C, *rest] with channels on axis 1, got shape {x0.shape}")
        noise = standard_normal_noise(x0.shape, x0.dtype, noise, rng)
        x_t = self.q_sample(x0, t, noise=noise)
        out = self.run_model(model, x_t, t, model_kwargs)
        terms = {}
        if self.loss_type == "kl":
            terms["vb"] = self.vb_terms_bpd(out, x0, x_t, t)["output"]
            terms["loss"] = terms["vb"]
            return terms

        C = x_t.shape[1]
        learned = self.model_var_type.startswith("learned")
        prediction = out[:, :C] if learned else out
        target = {"eps": lambda: noise,
                  "x0": lambda: x0,
                  "v": lambda: self.velocity(x0, t, noise),
                  "mean": lambda: self.q_posterior_mean_variance(x0, x_t, t)[0]}[self.model_mean_type]()
        terms["mse"] = mean_flat((target - prediction) ** 2)
        terms["loss"] = terms["mse"] if self.mse_weighting == "none" else terms["mse"] * self.mse_weight(t)
        if self.loss_type == "hybrid":
            frozen = prediction.detach() if isinstance(prediction, Tensor) else prediction
            if learned:                                  # stop-gradient on the mean part only
                frozen = np.concatenate([frozen, out[:, C:]], axis=1)
            terms["vb"] = self.vb_terms_bpd(frozen, x0, x_t, t)["output"]
            terms["loss"] = terms["mse"] + self.hybrid_vb_weight * self.num_timesteps * terms["vb"]
        return terms

    def mse_weight(self, t):
        """Min-SNR-gamma weights (Hang et al. 2023, eq. 9 and sec. 3.4) for timesteps t [B]:
        min(SNR_t, gamma) / SNR_t when the model predicts eps, min(SNR_t, gamma) for x0,
        min(SNR_t, gamma) / (SNR_t + 1) for v; float64 [B]. For eps the weight is 1 wherever
        SNR_t <= gamma (the noisy half of the chain) and falls as gamma / SNR_t near the data."""
        snr = self.snr[np.asarray(t)]
        clipped = np.minimum(snr, self.snr_gamma)
        if self.model_mean_type == "eps":
            return clipped / snr
        if self.model_mean_type == "v":
            return clipped / (snr + 1.0)
        return clipped

    @finite_result
    def prior_bpd(self, x0):
        """L_T = KL( q(x_T | x_0) || N(0, I) ) in bits/dim, [B], for x0 [B, *D] (DDPM eq. 5).

        No parameters: it measures how close the last step is to pure noise. Per value it is
        1/2 (alpha_bar x_0^2 - alpha_bar - log(1 - alpha_bar)) nats with alpha_bar = alpha_bar_{T-1},
        ~0 for a schedule that ends near alpha_bar = 0.

        >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
        >>> float(d.prior_bpd(np.zeros((1, 2)))[0]) < 1e-4                 # q(x_T | x_0) is almost N(0, I)
        True
        """
        self._check(x0=x0)
        t = np.full(x0.shape[0], self.num_timesteps - 1, dtype=np.int64)
        mean, _, log_variance = self.q_mean_variance(x0, t)
        zero = np.zeros((), dtype=x0.dtype)               # N(0, I); np.exp(0.0) would be float64
        return mean_flat(normal_kl(mean, log_variance, zero, zero)) / LOG2

    @finite_result
    def calc_bpd_loop(self, model, x0, rng=None, progress=None, clip_denoised=None, model_kwargs=None,
                      num_timesteps=None):
        """The whole variational bound on -log p(x_0), per example and per term.

        For each t (a loop over the chain, vectorised over the batch) draw x_t ~ q(x_t|x_0) with
        a fresh eps from rng, run the model, and record the bound term at t. x0: [B, *D].

        Which number this is depends on the decoder (``decoder_kind(x0)``):
          "discretized" (the default for 8-bit images in [-1, 1]): a bound on -log2 P(x_0), the
              probability of the 256-level pixel values, >= 0; with clip_denoised=True (its
              default here) this is the convention of published bits/dim (DDPM Table 2,
              improved-diffusion's calc_bpd_loop), so the numbers can be compared;
          "continuous" (real-valued data such as 2-D points): a bound on -log2 p(x_0) of a
              density, which can be negative (a narrow density exceeds 1), and clip_denoised
              defaults to False.
        progress(i, K) is called after each of the K model calls.

        num_timesteps=K < T estimates the sum instead of computing all T terms (a T/K-fold
        saving for images): the decoder term t = 0 exactly, and sum_{t=1}^{T-1} L_t by
        stratified sampling: the steps 1..T-1 are cut into K-1 strata of sizes n_k and each
        example draws one t_k uniformly in each, so sum_k n_k L_{t_k} is an unbiased estimate
        of the sum (with a small variance, since L_t varies slowly with t). Returns (arrays in
        x0's dtype):
          "vb"          [B, K] bits/dim: the terms computed; vb[:, 0] = L_0, the decoder, and for
                        the exact loop (K = T) vb[:, t] = the paper's L_t (t >= 1: KL(q(x_{t-1}|x_t,x_0)
                        || p(x_{t-1}|x_t)) in code indices)
          "t"           [B, K] the timestep of each column; "weights" [K] its stratum size
          "prior_bpd"   [B]    bits/dim: L_T
          "total_bpd"   [B]    bits/dim: L_T + sum_k weights_k vb[:, k], the bound on -log p(x_0) / D / log 2
          "total_bits"  [B]    bits per example: total_bpd * D (for 2-D points: bits per point)
          "x0_mse"      [B, K] mean over dims of (pred_x0 - x_0)^2
          "mse"         [B, K] mean over dims of (pred_eps - eps)^2
        A Tensor model output is read through .data; wrap the call in tinydiff.no_grad() to
        skip recording graphs.

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
        B, T = x0.shape[0], self.num_timesteps
        if clip_denoised is None:
            clip_denoised = self.decoder_kind(x0) == "discretized"
        if num_timesteps is None or num_timesteps >= T:
            ts = np.tile(np.arange(T), (B, 1))                             # [B, T]: every term
            weights = np.ones(T)
        else:
            K = int(num_timesteps)
            if K < 2:
                raise ValueError(f"num_timesteps: expected at least 2 (the decoder and one stratum), got {num_timesteps!r}")
            edges = 1 + np.floor(np.arange(K) * (T - 1) / (K - 1)).astype(np.int64)   # strata [edges_k, edges_k+1)
            weights = np.concatenate([[1], np.diff(edges)])
            u = rng.random((B, K - 1))
            ts = np.concatenate([np.zeros((B, 1), np.int64),
                                 edges[:-1] + np.floor(u * weights[1:]).astype(np.int64)], axis=1)
        K = ts.shape[1]
        vb, x0_mse, mse = (np.zeros((B, K), dtype=x0.dtype) for _ in range(3))
        for i in reversed(range(K)):                      # order does not matter: the bound is a sum
            t = ts[:, i]
            noise = standard_normal_noise(x0.shape, x0.dtype, None, rng)
            x_t = self.q_sample(x0, t, noise=noise)
            out = unwrap(self.run_model(model, x_t, t, model_kwargs))
            terms = self.vb_terms_bpd(out, x0, x_t, t, clip_denoised=clip_denoised)
            vb[:, i] = terms["output"]
            x0_mse[:, i] = mean_flat((terms["pred_x0"] - x0) ** 2)
            mse[:, i] = mean_flat((self.predict_eps_from_x0(x_t, t, terms["pred_x0"]) - noise) ** 2)
            if progress is not None:
                progress(K - i, K)
        prior = self.prior_bpd(x0)
        total_bpd = (vb * weights.astype(x0.dtype)).sum(axis=1) + prior
        dims = int(np.prod(x0.shape[1:]))
        return {"total_bpd": total_bpd, "prior_bpd": prior, "vb": vb, "t": ts, "weights": weights,
                "x0_mse": x0_mse, "mse": mse, "total_bits": total_bpd * dims}

"""The forward process q and its posterior, as plain functions of a diffusion's tables.

    q(x_t | x_{t-1})      = N(sqrt(alpha_t) x_{t-1}, beta_t I)                       DDPM eq. 2
    q(x_t | x_0)          = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)             DDPM eq. 4
    q(x_{t-1} | x_t, x_0) = N(mu-tilde_t(x_t, x_0), beta-tilde_t I)                   DDPM eq. 6-7

and the changes of parametrisation between x_0, eps, v and the posterior mean that the
reverse process and the losses use (DDPM eq. 4 solved for x_0; Salimans & Ho 2022).

Every function takes the GaussianDiffusion ``d`` (whose float64 tables, named after their
formulas, are built once in tinydiff/diffusion.py), data x [B, *D] and int timesteps t [B]
(0-based: see tinydiff/schedules.py), and returns arrays in the data's dtype. Nothing here
checks its arguments: the public methods of GaussianDiffusion are the doors that do
(tinydiff/diffusion.py), so code inside the package calls these directly and a sampling step
pays for no scan it does not need.
"""
from __future__ import annotations


def q_step_mean_variance(d, x_prev, t):
    """One forward step q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), DDPM eq. 2.

    x_prev: [B, *D] (the data x_0 when t = 0). Returns (mean, variance, log_variance), each [B, *D].

    >>> d = td.GaussianDiffusion(np.array([0.19, 0.5]))
    >>> mean, var, _ = td.forward.q_step_mean_variance(d, np.ones((1, 1)), np.array([0]))
    >>> float(mean[0, 0]), float(var[0, 0])                  # sqrt(1 - 0.19) = 0.9, and beta_1
    (0.9, 0.19)
    """
    return (d.coef(d.sqrt_alphas, t, x_prev) * x_prev,
            d.full(d.betas, t, x_prev), d.full(d.log_betas, t, x_prev))


def q_step(d, x_prev, t, noise):
    """x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, eps = noise ~ N(0, I) (DDPM eq. 2). [B, *D].

    >>> d = td.GaussianDiffusion(np.array([0.19, 0.5]))
    >>> round(float(td.forward.q_step(d, np.ones((1, 1)), np.array([0]), np.ones((1, 1)))[0, 0]), 4)   # 0.9 + sqrt(0.19)
    1.3359
    """
    return d.coef(d.sqrt_alphas, t, x_prev) * x_prev + d.coef(d.sqrt_betas, t, x_prev) * noise


def q_mean_variance(d, x0, t):
    """q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), DDPM eq. 4.

    x0: [B, *D]. Returns (mean, variance, log_variance), each [B, *D].

    >>> d = td.GaussianDiffusion(np.array([0.19, 0.5]))
    >>> mean, var, _ = td.forward.q_mean_variance(d, np.ones((1, 1)), np.array([1]))
    >>> round(float(mean[0, 0]), 6), round(float(var[0, 0]), 6)    # alpha_bar = 0.81 * 0.5 = 0.405
    (0.636396, 0.595)
    """
    return (d.coef(d.sqrt_alphas_cumprod, t, x0) * x0,
            d.full(1.0 - d.alphas_cumprod, t, x0),
            d.full(d.log_one_minus_alphas_cumprod, t, x0))


def q_sample(d, x0, t, noise):
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eps = noise ~ N(0, I): a draw from
    q(x_t | x_0) in one jump (DDPM eq. 4; the reparametrisation of Algorithm 1 line 5).
    x0, noise: [B, *D]. Returns x_t [B, *D].

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
    >>> x0 = np.ones((1, 2))
    >>> td.forward.q_sample(d, x0, np.array([999]), np.zeros_like(x0)).round(4).tolist()   # sqrt(alpha_bar_T) x_0
    [[0.0064, 0.0064]]
    """
    return (d.coef(d.sqrt_alphas_cumprod, t, x0) * x0
            + d.coef(d.sqrt_one_minus_alphas_cumprod, t, x0) * noise)


def q_posterior_mean_variance(d, x0, x_t, t):
    """q(x_{t-1} | x_t, x_0) = N(mu-tilde_t, beta-tilde_t I), DDPM eq. 6-7:

        mu-tilde_t   = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                     + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        beta-tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

    x0, x_t: [B, *D]. Returns (mean, variance, log_variance_clipped), each [B, *D]; at t = 0
    the variance is 0 and the log-variance is clipped to log beta-tilde_1 (see GaussianDiffusion).

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
    >>> mean, var, _ = td.forward.q_posterior_mean_variance(d, np.zeros((1, 2)), np.ones((1, 2)), np.array([500]))
    >>> bool(0 < mean[0, 0] < 1), bool(var[0, 0] < d.betas[500])     # between x_0 and x_t; beta-tilde < beta
    (True, True)
    """
    mean = (d.coef(d.posterior_mean_coef1, t, x_t) * x0
            + d.coef(d.posterior_mean_coef2, t, x_t) * x_t)
    return mean, d.full(d.posterior_variance, t, x_t), d.full(d.posterior_log_variance_clipped, t, x_t)


# ------------------------------------------------------------------ changes of parametrisation
def predict_x0_from_eps(d, x_t, t, eps):
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), DDPM eq. 4 solved for x_0,
    written as sqrt(1/alpha_bar_t) x_t - sqrt(1/alpha_bar_t - 1) eps. [B, *D].

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
    >>> td.forward.predict_x0_from_eps(d, np.ones((1, 1)), np.array([0]), np.zeros((1, 1))).round(6).tolist()   # 1 / sqrt(1 - 1e-4)
    [[1.00005]]
    """
    return (d.coef(d.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - d.coef(d.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)


def predict_eps_from_x0(d, x_t, t, x0):
    """eps = (sqrt(1/alpha_bar_t) x_t - x_0) / sqrt(1/alpha_bar_t - 1), the inverse of
    predict_x0_from_eps. [B, *D].

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
    >>> x0, eps, t = np.array([[0.5]]), np.array([[0.3]]), np.array([400])
    >>> td.forward.predict_eps_from_x0(d, td.forward.q_sample(d, x0, t, eps), t, x0).round(6).tolist()
    [[0.3]]
    """
    return ((d.coef(d.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0)
            / d.coef(d.sqrt_recipm1_alphas_cumprod, t, x_t))


def predict_x0_from_v(d, x_t, t, v):
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v (Salimans & Ho 2022, sec. 4). [B, *D].

    >>> d = td.GaussianDiffusion(np.array([0.19, 0.5]))
    >>> td.forward.predict_x0_from_v(d, np.ones((1, 1)), np.array([0]), np.zeros((1, 1))).round(6).tolist()   # sqrt(0.81)
    [[0.9]]
    """
    return (d.coef(d.sqrt_alphas_cumprod, t, x_t) * x_t
            - d.coef(d.sqrt_one_minus_alphas_cumprod, t, x_t) * v)


def velocity(d, x0, t, eps):
    """The v-prediction target v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0
    (Salimans & Ho 2022, sec. 4). x0, eps: [B, *D]. Returns v [B, *D].

    >>> d = td.GaussianDiffusion(np.array([0.19, 0.5]))
    >>> td.forward.velocity(d, np.zeros((1, 1)), np.array([0]), np.ones((1, 1))).round(6).tolist()   # sqrt(0.81) eps
    [[0.9]]
    """
    return (d.coef(d.sqrt_alphas_cumprod, t, x0) * eps
            - d.coef(d.sqrt_one_minus_alphas_cumprod, t, x0) * x0)


def predict_x0_from_mean(d, x_t, t, mean):
    """x_0 from the posterior mean: mu-tilde = coef1 x_0 + coef2 x_t solved for x_0 (DDPM eq. 7;
    improved-diffusion's _predict_xstart_from_xprev). [B, *D].

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(100))
    >>> x0, x_t, t = np.array([[0.5]]), np.array([[2.0]]), np.array([40])
    >>> mean = td.forward.q_posterior_mean_variance(d, x0, x_t, t)[0]
    >>> td.forward.predict_x0_from_mean(d, x_t, t, mean).round(6).tolist()
    [[0.5]]
    """
    return ((mean - d.coef(d.posterior_mean_coef2, t, x_t) * x_t)
            / d.coef(d.posterior_mean_coef1, t, x_t))


def score_from_eps(d, x_t, t, eps):
    """grad_{x_t} log q(x_t | x_0) = -eps / sqrt(1 - alpha_bar_t) (Song & Ermon; DDPM sec. 3.2):
    an eps-predictor is a scaled score estimator. [B, *D].

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
    >>> td.forward.score_from_eps(d, np.zeros((1, 1)), np.array([999]), np.ones((1, 1))).round(4).tolist()
    [[-1.0]]
    """
    return -eps / d.coef(d.sqrt_one_minus_alphas_cumprod, t, x_t)

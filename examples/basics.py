"""Two tricks under every diffusion model, done with tinydiff's autograd.

1. Sampling by the inverse CDF. If U ~ Uniform(0, 1) and F is a CDF, then X = F^{-1}(U) has
   CDF F: P(X <= x) = P(U <= F(x)) = F(x). A generative model is a learned version of this
   map from simple noise to data (Sachit Gaudi, "Think Diffusion! Think Probability").
2. The reparameterisation trick, z = mu + sigma eps with eps ~ N(0, 1) (Chien's notes,
   "0 Reparameterization trick"): z keeps its law N(mu, sigma^2) but becomes a differentiable
   function of mu and sigma, so autograd gives unbiased gradients of E[f(z)] -- with far less
   noise than the score-function estimator E[f(z) d log N(z; mu, sigma) / d theta].

Writes basics.png and metrics.json to --out (default out/basics). Run (a few seconds), or open
it as a notebook (`# %%` cells):

    python examples/basics.py
    python examples/basics.py --n 1000000 --mu 0.0 --sigma 1.5       # docs/score.md: the lesson page
"""
# %%
import argparse
import json
import math
import os

import numpy as np

import tinydiff as td

# %% Settings: each one is a flag of the script; in a notebook, edit them here
p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--n", type=td.runs.positive_int, default=100_000, help="number of draws, >= 100 (default: 100000)")
p.add_argument("--mu", type=td.runs.finite_float, default=0.5, help="mean of z ~ N(mu, sigma^2) (default: 0.5)")
p.add_argument("--sigma", type=td.runs.positive_float, default=0.8, help="std of z ~ N(mu, sigma^2) (default: 0.8)")
p.add_argument("--seed", type=td.runs.nonnegative_int, default=0, help="seed of every random draw (default: 0)")
p.add_argument("--out", default=os.path.join("out", "basics"), help="output folder (default: out/basics)")
args = p.parse_args([] if td.progress.in_notebook() else None)          # a notebook: the defaults
if args.n < 100:
    p.error(f"--n must be >= 100, got {args.n}")
os.makedirs(args.out, exist_ok=True)
rng = np.random.default_rng(args.seed)
RATE = 1.5                                                             # lam of the exponential
WEIGHTS, MEANS, STDS = np.array([0.3, 0.5, 0.2]), np.array([-2.0, 0.5, 3.0]), np.array([0.5, 0.8, 0.3])
KS_CRITICAL = 1.63 / math.sqrt(args.n)  # sqrt(n) * (largest CDF gap) exceeds 1.63 with probability 1% (Kolmogorov)


def ks_statistic(samples, cdf):
    """Kolmogorov-Smirnov distance sup_x |F_n(x) - F(x)| between the samples' empirical CDF and F."""
    x, n = np.sort(samples), len(samples)
    return float(max(np.max(np.arange(1, n + 1) / n - cdf(x)), np.max(cdf(x) - np.arange(n) / n)))


def mixture_cdf(x):
    """F(x) = sum_k w_k Phi((x - m_k) / s_k) with Python's exact erf: the reference for the checks. [n] -> [n]."""
    return 0.5 * (1.0 + np.vectorize(math.erf)((np.asarray(x)[:, None] - MEANS) / (STDS * math.sqrt(2.0)))) @ WEIGHTS


# %% [markdown]
# ## 1a. An exponential, inverted in closed form
# F(x) = 1 - exp(-lam x), so x = F^{-1}(u) = -log(1 - u) / lam. Autograd's dx/du gives the
# density back by the change of variables: p(x) = 1 / |dx/du|.

# %%
def exponential_inverse_cdf(u, rate):
    """x = F^{-1}(u) = -log(1 - u) / lam for F(x) = 1 - exp(-lam x). u: an array or a Tensor [n] -> [n]."""
    return -np.log(1.0 - u) / rate                                      # on a Tensor, np.log is autograd's


u = td.Tensor(rng.random(args.n), requires_grad=True)
exp_x = exponential_inverse_cdf(u, RATE)
exp_x.sum().backward()                                                  # u.grad = dx/du, elementwise
exp_x, density_autograd = exp_x.data, 1.0 / u.grad
density_error = float(np.max(np.abs(density_autograd - RATE * np.exp(-RATE * exp_x))))
ks_exp = ks_statistic(exp_x, lambda x: 1.0 - np.exp(-RATE * x))


# %% [markdown]
# ## 1b. A Gaussian mixture: F has no closed-form inverse
# Newton's method solves F(x) = u for all draws at once: x <- x - (F(x) - u) / F'(x), F' by
# autograd (the draws are independent, so one backward of sum_j F(x_j) gives every F'(x_i)).
# Phi is Page's tanh approximation (error < 2e-4, as in DDPM's 8-bit decoder), so autograd can
# differentiate it. Where a step would leave the bracket that holds the root, we bisect.

# %%
def mixture_inverse_cdf(u, iterations=60):
    """Solve F(x) = u for every u [n] at once (Newton with a bisection guard). Returns x [n]."""
    lo, hi = np.full_like(u, MEANS.min() - 10 * STDS.max()), np.full_like(u, MEANS.max() + 10 * STDS.max())
    x = np.full_like(u, float(WEIGHTS @ MEANS))
    for _ in range(iterations):
        xt = td.Tensor(x, requires_grad=True)
        F = (td.approx_standard_normal_cdf((xt.reshape(-1, 1) - MEANS) / STDS) * WEIGHTS).sum(axis=1)   # [n]
        F.sum().backward()                                              # xt.grad = F'(x), elementwise
        gap = F.data - u
        lo, hi = np.where(gap < 0, x, lo), np.where(gap > 0, x, hi)     # the root stays in [lo, hi]
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = x - gap / xt.grad
        x = np.where((newton > lo) & (newton < hi), newton, 0.5 * (lo + hi))
        if np.max(np.abs(gap)) < 1e-12:
            break
    return x


mix_x = mixture_inverse_cdf(rng.random(args.n))
ks_mix = ks_statistic(mix_x, mixture_cdf)
u_demo = np.linspace(0.05, 0.95, 9)                                   # the map u -> x, drawn in the picture

# %% [markdown]
# ## 2. Gradients of E[f(z)], z ~ N(mu, sigma^2), f = exp
# E[e^z] = exp(mu + sigma^2 / 2): d/dmu is that, d/dsigma sigma times that. Reparameterised:
# differentiate f(mu + sigma eps) through the sample; score function: f(z) d log N(z) / d theta.

# %%
def reparameterised_gradients(f, mu, sigma, eps):
    """Per-sample d f(z) / d(mu, sigma), z = mu + sigma eps, by autograd; eps: [n]. Returns two [n]."""
    m, s = (td.Tensor(np.full_like(eps, v), requires_grad=True) for v in (mu, sigma))   # a copy per sample
    f(m + s * eps).sum().backward()
    return m.grad, s.grad


def score_function_gradients(f, mu, sigma, z):
    """Per-sample f(z) d log N(z; mu, sigma^2) / d(mu, sigma), z [n] drawn outside the graph. Two [n]."""
    m, s = (td.Tensor(np.full_like(z, v), requires_grad=True) for v in (mu, sigma))
    (td.gaussian_log_likelihood(z, m, np.log(s)) * f(z)).sum().backward()
    return m.grad, s.grad


mu, sigma, eps = args.mu, args.sigma, rng.standard_normal(args.n)
closed = (math.exp(mu + sigma ** 2 / 2), sigma * math.exp(mu + sigma ** 2 / 2))
grads = {"reparameterised": reparameterised_gradients(np.exp, mu, sigma, eps),
         "score function": score_function_gradients(np.exp, mu, sigma, mu + sigma * eps)}

# %% The picture. Top: inverse-CDF samples against their densities, the map u -> x on the CDF.
# Bottom: both gradient estimators as the number of samples grows, and one sample's spread.
fig = td.viz.figure((13.0, 7.6), dpi=100)
(a, b, c), (d, e, g) = fig.subplots(2, 3)
xs = np.linspace(0, np.quantile(exp_x, 0.999), 400)
a.hist(exp_x, bins=80, range=(0, xs[-1]), density=True, color="#dd8452", alpha=0.6, label="histogram of $F^{-1}(U)$")
a.plot(xs, RATE * np.exp(-RATE * xs), "k", linewidth=1.5, label=r"density $\lambda e^{-\lambda x}$")
order = np.argsort(exp_x[:2000])[::40]
a.plot(exp_x[order], density_autograd[order], "o", color="#4c72b0", markersize=4, label=r"$1/|dx/du|$ by autograd")
a.set_title(rf"exponential, $\lambda$ = {RATE:g}: $x = -\log(1-u)/\lambda$", fontsize=11)
xs = np.linspace(MEANS.min() - 4 * STDS.max(), MEANS.max() + 4 * STDS.max(), 600)
b.hist(mix_x, bins=120, range=(xs[0], xs[-1]), density=True, color="#dd8452", alpha=0.6, label="$F^{-1}(U)$ by Newton")
b.plot(xs, (WEIGHTS * np.exp(-0.5 * ((xs[:, None] - MEANS) / STDS) ** 2) / (STDS * math.sqrt(2 * math.pi))).sum(1),
       "k", linewidth=1.5, label="mixture density $p(x)$")
b.set_title("Gaussian mixture: $F^{-1}$ by Newton's method", fontsize=11)
c.plot(xs, mixture_cdf(xs), "k", linewidth=1.5, label="CDF $F(x)$")
for u_, x_ in zip(u_demo, mixture_inverse_cdf(u_demo)):
    c.annotate("", xy=(x_, 0), xytext=(x_, u_), arrowprops={"arrowstyle": "->", "color": "#4c72b0", "lw": 0.8})
    c.plot([xs[0], x_], [u_, u_], color="#4c72b0", linewidth=0.8)
c.set_title("how: a uniform $u$ on the y axis, read $x$ off the curve", fontsize=11)
c.set_ylabel("$u = F(x)$")
for ax, corner in ((a, "upper right"), (b, "upper left"), (c, "lower right")):
    ax.set_xlabel("$x$")
    ax.legend(fontsize=8, frameon=False, loc=corner)
n_grid = np.unique(np.geomspace(10, args.n, 30).astype(int))
for ax, key, name in ((d, 0, r"\mu"), (e, 1, r"\sigma")):
    for estimator, color in (("reparameterised", "#4c72b0"), ("score function", "#dd8452")):
        per_sample = grads[estimator][key]
        means = np.array([per_sample[:k].mean() for k in n_grid])
        ses = np.array([per_sample[:k].std(ddof=1) / math.sqrt(k) for k in n_grid])
        ax.plot(n_grid, means, "o-", color=color, markersize=3, label=estimator)
        ax.fill_between(n_grid, means - 2 * ses, means + 2 * ses, color=color, alpha=0.2)
    ax.axhline(closed[key], color="k", linewidth=1.2, label="closed form")
    ax.set(xscale="log", xlabel="number of samples N (band: $\\pm$ 2 standard errors)")
    ax.set_title(rf"estimates of $\partial E[e^z] / \partial {name}$", fontsize=11)
    ax.legend(fontsize=8, frameon=False)
span = np.quantile(np.concatenate([grads["reparameterised"][0], grads["score function"][0]]), [0.005, 0.995])
for estimator, color in (("reparameterised", "#4c72b0"), ("score function", "#dd8452")):
    g.hist(grads[estimator][0], bins=100, range=span, density=True, color=color, alpha=0.55,
           label=f"{estimator}: std {grads[estimator][0].std():.2f}")
g.set_title(r"one sample's gradient w.r.t. $\mu$ (central 99%)", fontsize=11)
g.set_xlabel(r"per-sample estimate of $\partial E[e^z]/\partial\mu$")
g.legend(fontsize=8, frameon=False)
fig.suptitle("sampling by the inverse CDF (top) and the reparameterisation trick (bottom)", fontsize=13)
td.viz.save(fig, os.path.join(args.out, "basics.png"))

# %% The numbers, each beside its target
metrics = {"n": args.n, "ks_exponential": ks_exp, "ks_mixture": ks_mix, "ks_critical_1pct": KS_CRITICAL,
           "density_from_autograd_max_error": density_error, "closed_form_gradients": closed}
for name, (gm, gs) in grads.items():
    metrics[name.replace(" ", "_")] = {
        "d_mu": float(gm.mean()), "d_mu_se": float(gm.std(ddof=1) / math.sqrt(args.n)),
        "d_sigma": float(gs.mean()), "d_sigma_se": float(gs.std(ddof=1) / math.sqrt(args.n)),
        "d_mu_std_per_sample": float(gm.std()), "d_sigma_std_per_sample": float(gs.std())}
rows = [("exponential by inverse CDF: KS distance (1% level)", ks_exp, KS_CRITICAL),
        ("mixture by Newton's method: KS distance (1% level)", ks_mix, KS_CRITICAL),
        ("density from autograd's dx/du: largest error", density_error, 1e-9)]
for name in grads:
    for key, truth in (("d_mu", closed[0]), ("d_sigma", closed[1])):
        m, se = metrics[name.replace(" ", "_")][key], metrics[name.replace(" ", "_")][key + "_se"]
        rows.append((f"{name} {key} = {m:.4f} +- {se:.4f} vs {truth:.4f}: in s.e.", abs(m - truth) / se, 4))
print(f"\n{'measured':<62} {'value':>8} {'target':>9}")
for what, value, target in rows:
    print(f"{what:<62} {value:8.2g} {'< %.2g' % target:>9}  {'ok' if value < target else 'MISSED'}")
ratio = metrics["score_function"]["d_mu_std_per_sample"] / metrics["reparameterised"]["d_mu_std_per_sample"]
print(f"per-sample std of d/dmu: the score-function estimator's is {ratio:.1f} x the reparameterised one's, "
      f"so it needs {ratio ** 2:.0f} x the samples for the same precision")
metrics["ok"] = all(value < target for _, value, target in rows)
with td.checkpoint.atomic_write(os.path.join(args.out, "metrics.json")) as f:
    f.write(json.dumps(metrics, indent=2).encode())
print(f"wrote {os.path.abspath(args.out)}: basics.png, metrics.json")

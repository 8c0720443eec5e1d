"""Two tricks under every diffusion model, done with tinydiff's autograd.

1. Sampling by the inverse CDF. If U ~ Uniform(0, 1) and F is a CDF, then X = F^{-1}(U)
   has CDF F: P(X <= x) = P(U <= F(x)) = F(x). A generative model is a learned version of
   this map from simple noise to data (Sachit Gaudi, "Think Diffusion! Think Probability").
   * an exponential, F(x) = 1 - exp(-lam x), inverted in closed form: x = -log(1 - u) / lam;
     autograd's dx/du gives the density back by the change of variables, p(x) = 1 / |dx/du|;
   * a 1-D Gaussian mixture, whose F has no closed-form inverse: Newton's method solves
     F(x) = u for all draws at once, x <- x - (F(x) - u) / F'(x), with F'(x) from autograd.
2. The reparameterisation trick, z = mu + sigma eps with eps ~ N(0, 1) (Chien's notes,
   "0 Reparameterization trick"): z keeps its distribution N(mu, sigma^2) but becomes a
   differentiable function of mu and sigma, so autograd gives unbiased gradients of E[f(z)].
   They are compared with the closed form and with the score-function estimator
   E[f(z) d log N(z; mu, sigma) / d theta], which is unbiased too but far noisier.

Outputs (in --out, default out/basics): basics.png and metrics.json. Run (a few seconds):

    python examples/basics.py
    python examples/basics.py --n 1000000 --mu 0.0 --sigma 1.5
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

import tinydiff as td
from tinydiff.checkpoint import atomic_write

WEIGHTS, MEANS, STDS = np.array([0.3, 0.5, 0.2]), np.array([-2.0, 0.5, 3.0]), np.array([0.5, 0.8, 0.3])
KS_CRITICAL = 1.63         # sqrt(n) * (largest CDF gap) exceeds this with probability 1% (Kolmogorov)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="number of uniform draws and of reparameterised samples")
    p.add_argument("--rate", type=float, default=1.5, help="lam of the exponential distribution")
    p.add_argument("--mu", type=float, default=0.5, help="mean of z ~ N(mu, sigma^2) in the reparameterisation")
    p.add_argument("--sigma", type=float, default=0.8, help="std of z ~ N(mu, sigma^2)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--out", default=os.path.join("out", "basics"), help="output folder")
    args = p.parse_args(argv)
    if args.n < 100:
        p.error(f"--n must be >= 100, got {args.n}")
    if not (args.rate > 0 and args.sigma > 0):
        p.error(f"--rate and --sigma must be positive, got {args.rate} and {args.sigma}")
    return args


# ---------------------------------------------------------------- 1. the inverse CDF
def exponential_inverse_cdf(u, rate):
    """F^{-1}(u) = -log(1 - u) / lam for F(x) = 1 - exp(-lam x). Works on arrays and Tensors."""
    return -np.log(1.0 - u) / rate


def normal_cdf_exact(x):
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2 with Python's exact erf: the reference for the checks."""
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(x) / math.sqrt(2.0)))


def mixture_density(x):
    """p(x) = sum_k w_k N(x; m_k, s_k^2), for x [n] -> [n]."""
    z = (np.asarray(x)[:, None] - MEANS) / STDS
    return np.sum(WEIGHTS * np.exp(-0.5 * z * z) / (STDS * math.sqrt(2 * math.pi)), axis=1)


def mixture_cdf(x):
    """F(x) = sum_k w_k Phi((x - m_k) / s_k), with Page's tanh approximation of Phi
    (td.approx_standard_normal_cdf, error < 2e-4, the one DDPM's 8-bit decoder uses): it is
    built from tanh, so it runs on Tensors and autograd differentiates it. x: [n] -> [n]."""
    z = (x.reshape(-1, 1) - MEANS) / STDS                               # [n, K]
    return (td.approx_standard_normal_cdf(z) * WEIGHTS).sum(axis=1)


def mixture_inverse_cdf(u, iterations=60):
    """Solve F(x) = u for every u at once by Newton's method with a bisection guard.

    Newton: x <- x - (F(x) - u) / F'(x). F' is the density; autograd computes it: the draws are
    independent, so d/dx_i of sum_j F(x_j) is F'(x_i), and one backward pass gives all n of them.
    Where Newton would leave the bracket [lo, hi] known to hold the root (in the valleys
    between modes F' is tiny and the step huge), we bisect instead. Returns x [n]."""
    lo, hi = np.full_like(u, MEANS.min() - 10 * STDS.max()), np.full_like(u, MEANS.max() + 10 * STDS.max())
    x = np.full_like(u, float(WEIGHTS @ MEANS))
    for _ in range(iterations):
        xt = td.Tensor(x, requires_grad=True)
        F = mixture_cdf(xt)
        F.sum().backward()                                              # xt.grad = F'(x), elementwise
        gap = F.data - u
        lo, hi = np.where(gap < 0, x, lo), np.where(gap > 0, x, hi)     # the root stays in [lo, hi]
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = x - gap / xt.grad
        x = np.where((newton > lo) & (newton < hi), newton, 0.5 * (lo + hi))
        if np.max(np.abs(gap)) < 1e-12:
            break
    return x


def ks_statistic(samples, cdf):
    """Kolmogorov-Smirnov distance sup_x |F_n(x) - F(x)| between the samples' empirical CDF and F."""
    x = np.sort(samples)
    n = len(x)
    F = cdf(x)
    return float(max(np.max(np.arange(1, n + 1) / n - F), np.max(F - np.arange(n) / n)))


# ---------------------------------------------------------------- 2. reparameterisation
def reparameterised_gradients(f, mu, sigma, eps):
    """Per-sample gradients of f(z), z = mu + sigma eps, with respect to (mu, sigma), by autograd.
    Their mean is an unbiased estimate of (d/dmu, d/dsigma) E[f(z)]. eps: [n]. Returns two [n]."""
    m = td.Tensor(np.full_like(eps, mu), requires_grad=True)          # one copy of mu per sample, so that
    s = td.Tensor(np.full_like(eps, sigma), requires_grad=True)       # .grad keeps each sample's gradient
    f(m + s * eps).sum().backward()
    return m.grad, s.grad


def score_function_gradients(f, mu, sigma, z):
    """Per-sample score-function (REINFORCE) gradients f(z) d/dtheta log N(z; mu, sigma^2), the
    log-density differentiated by autograd. z: samples drawn without a graph [n]. Returns two [n]."""
    m = td.Tensor(np.full_like(z, mu), requires_grad=True)
    s = td.Tensor(np.full_like(z, sigma), requires_grad=True)
    log_density = td.gaussian_log_likelihood(z, m, np.log(s))         # log N(z; m, s^2)
    (log_density * f(td.Tensor(z)).data).sum().backward()             # f(z) is a constant weight here
    return m.grad, s.grad


# ---------------------------------------------------------------- figure
def plot(path, exp_x, exp_density_autograd, rate, mix_x, u_demo, x_demo, grads, closed, n_grid):
    fig = td.viz.figure((13.0, 7.6), dpi=100)
    (a, b, c), (d, e, g) = fig.subplots(2, 3)
    xs = np.linspace(0, np.quantile(exp_x, 0.999), 400)
    a.hist(exp_x, bins=80, range=(0, xs[-1]), density=True, color="#dd8452", alpha=0.6, label="histogram of $F^{-1}(U)$")
    a.plot(xs, rate * np.exp(-rate * xs), "k", linewidth=1.5, label=r"density $\lambda e^{-\lambda x}$")
    order = np.argsort(exp_x[:2000])
    a.plot(exp_x[:2000][order][::40], exp_density_autograd[:2000][order][::40], "o", color="#4c72b0", markersize=4,
           label=r"$1/|dx/du|$ by autograd")
    a.set_title(rf"exponential, $\lambda$ = {rate:g}: $x = -\log(1-u)/\lambda$", fontsize=11)
    xs = np.linspace(MEANS.min() - 4 * STDS.max(), MEANS.max() + 4 * STDS.max(), 600)
    b.hist(mix_x, bins=120, range=(xs[0], xs[-1]), density=True, color="#dd8452", alpha=0.6,
           label="histogram of $F^{-1}(U)$ (Newton)")
    b.plot(xs, mixture_density(xs), "k", linewidth=1.5, label="mixture density $p(x)$")
    b.set_title("Gaussian mixture: $F^{-1}$ by Newton's method", fontsize=11)
    b.legend(fontsize=8, frameon=False, loc="upper left")
    c.plot(xs, normal_cdf_exact((xs[:, None] - MEANS) / STDS) @ WEIGHTS, "k", linewidth=1.5, label="CDF $F(x)$")
    for u, x in zip(u_demo, x_demo):                                   # the map u -> x, drawn
        c.annotate("", xy=(x, 0), xytext=(x, u), arrowprops={"arrowstyle": "->", "color": "#4c72b0", "lw": 0.8})
        c.plot([xs[0], x], [u, u], color="#4c72b0", linewidth=0.8)
    c.set_title("how: a uniform $u$ on the y axis, read $x$ off the curve", fontsize=11)
    c.set_ylabel("$u = F(x)$")
    a.legend(fontsize=8, frameon=False)
    c.legend(fontsize=8, frameon=False, loc="lower right")
    for ax in (a, b, c):
        ax.set_xlabel("$x$")
    for ax, key, name in ((d, 0, r"\mu"), (e, 1, r"\sigma")):
        for estimator, color in (("reparameterised", "#4c72b0"), ("score function", "#dd8452")):
            per_sample = grads[estimator][key]
            means = np.array([per_sample[:k].mean() for k in n_grid])
            ses = np.array([per_sample[:k].std(ddof=1) / math.sqrt(k) for k in n_grid])
            ax.plot(n_grid, means, "o-", color=color, markersize=3, label=estimator)
            ax.fill_between(n_grid, means - 2 * ses, means + 2 * ses, color=color, alpha=0.2)
        ax.axhline(closed[key], color="k", linewidth=1.2, label="closed form")
        ax.set_xscale("log")
        ax.set_xlabel("number of samples N (band: $\\pm$ 2 standard errors)")
        ax.set_title(rf"estimates of $\partial E[e^z] / \partial {name}$", fontsize=11)
        ax.legend(fontsize=8, frameon=False)
    lo, hi = np.quantile(np.concatenate([grads["reparameterised"][0], grads["score function"][0]]), [0.005, 0.995])
    for estimator, color in (("reparameterised", "#4c72b0"), ("score function", "#dd8452")):
        values = grads[estimator][0]
        g.hist(values, bins=100, range=(lo, hi), density=True, color=color, alpha=0.55,
               label=f"{estimator}: std {values.std():.2f}")
    g.set_title(r"one sample's gradient w.r.t. $\mu$ (central 99%)", fontsize=11)
    g.set_xlabel(r"per-sample estimate of $\partial E[e^z] / \partial \mu$")
    g.legend(fontsize=8, frameon=False)
    fig.suptitle("sampling by the inverse CDF (top) and the reparameterisation trick (bottom)", fontsize=13)
    return td.viz.save(fig, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()

    def stage(text):
        print(f"{text}  ({time.perf_counter() - start:.1f} s)", flush=True)

    # 1a. exponential: closed-form inverse; density back from autograd's dx/du
    u = td.Tensor(rng.random(args.n), requires_grad=True)
    exp_x = exponential_inverse_cdf(u, args.rate)
    exp_x.sum().backward()
    exp_x, density_autograd = exp_x.data, 1.0 / u.grad
    density_error = float(np.max(np.abs(density_autograd - args.rate * np.exp(-args.rate * exp_x))))
    ks_exp = ks_statistic(exp_x, lambda x: 1.0 - np.exp(-args.rate * x))
    stage(f"1/4 inverse CDF of an exponential: {args.n} draws")
    # 1b. mixture: Newton's method with autograd's F'
    mix_x = mixture_inverse_cdf(rng.random(args.n))
    ks_mix = ks_statistic(mix_x, lambda x: normal_cdf_exact((x[:, None] - MEANS) / STDS) @ WEIGHTS)
    u_demo = np.linspace(0.05, 0.95, 9)
    x_demo = mixture_inverse_cdf(u_demo)
    stage(f"2/4 inverse CDF of a Gaussian mixture by Newton's method: {args.n} draws")

    # 2. gradients of E[f(z)], f = exp: E[e^z] = exp(mu + sigma^2 / 2), so
    #    d/dmu = exp(mu + sigma^2 / 2) and d/dsigma = sigma exp(mu + sigma^2 / 2)
    mu, sigma = args.mu, args.sigma
    closed = (math.exp(mu + sigma ** 2 / 2), sigma * math.exp(mu + sigma ** 2 / 2))
    eps = rng.standard_normal(args.n)
    grads = {"reparameterised": reparameterised_gradients(np.exp, mu, sigma, eps),
             "score function": score_function_gradients(np.exp, mu, sigma, mu + sigma * eps)}
    stage("3/4 gradients of E[exp(z)]: reparameterised and score-function estimators")
    n_grid = np.unique(np.geomspace(10, args.n, 30).astype(int))
    plot(os.path.join(args.out, "basics.png"), exp_x, density_autograd, args.rate, mix_x, u_demo, x_demo, grads,
         closed, n_grid)
    stage("4/4 figure")

    critical = KS_CRITICAL / math.sqrt(args.n)
    metrics = {"n": args.n, "ks_exponential": ks_exp, "ks_mixture": ks_mix, "ks_critical_1pct": critical,
               "density_from_autograd_max_error": density_error, "closed_form_gradients": closed}
    for name, (gm, gs) in grads.items():
        key = name.replace(" ", "_")
        metrics[key] = {"d_mu": float(gm.mean()), "d_mu_se": float(gm.std(ddof=1) / math.sqrt(args.n)),
                        "d_sigma": float(gs.mean()), "d_sigma_se": float(gs.std(ddof=1) / math.sqrt(args.n)),
                        "d_mu_std_per_sample": float(gm.std()), "d_sigma_std_per_sample": float(gs.std())}
    with atomic_write(os.path.join(args.out, "metrics.json")) as f:
        f.write(json.dumps(metrics, indent=2).encode())

    ok = {True: "ok", False: "MISSED"}
    print(f"\nwrote {os.path.abspath(args.out)}: basics.png, metrics.json")
    checks = [ks_exp < critical, ks_mix < critical, density_error < 1e-9]
    print(f"exponential by inverse CDF: KS distance {ks_exp:.4f} (target < {critical:.4f}, the 1% level): {ok[checks[0]]}")
    print(f"mixture by Newton's method: KS distance {ks_mix:.4f} (target < {critical:.4f}): {ok[checks[1]]}")
    print(f"density from autograd's dx/du: largest error {density_error:.1e} (target < 1e-9): {ok[checks[2]]}")
    for name in grads:
        m = metrics[name.replace(" ", "_")]
        for key, truth in (("d_mu", closed[0]), ("d_sigma", closed[1])):
            z = abs(m[key] - truth) / m[key + "_se"]
            checks.append(z < 4)
            print(f"{name:>15} {key}: {m[key]:.4f} +- {m[key + '_se']:.4f} vs closed form {truth:.4f} "
                  f"({z:.1f} standard errors; target < 4): {ok[z < 4]}")
    ratio = metrics["score_function"]["d_mu_std_per_sample"] / metrics["reparameterised"]["d_mu_std_per_sample"]
    print(f"per-sample std of d/dmu: the score-function estimator's is {ratio:.1f} x the reparameterised one's, "
          f"so it needs {ratio ** 2:.0f} x the samples for the same precision")
    metrics["ok"] = all(checks)
    return metrics


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)

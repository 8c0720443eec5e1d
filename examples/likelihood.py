"""Exact likelihoods: a diffusion model read as an ODE, checked against the true density.

The lesson of docs/likelihood.md. The chain of a GaussianDiffusion is one SDE in continuous
time (td.sde, Song et al. 2021), and its probability-flow ODE maps data to noise without
noise of its own; integrating the divergence of that ODE along the path gives log p(x)
exactly (td.likelihood: the instantaneous change of variables). On the 8-mode mixture we
know the truth, so the lesson prints three numbers in bits per point:

* the ODE driven by the exact score (td.oracles) -- it must give back the true NLL,
* the ODE driven by a trained ToyMLP (hybrid objective), exact divergence,
* the variational bound of the same network (calc_bpd_loop), a different model of the same net,

and draws energy.png: the energy E(x) = -log p(x) + log Z, its score -grad E (no Z needed), and
the ODE's paths. --mnist-checkpoint adds, for an examples/mnist.py run, the bound term by term
and the ODE NLL (Hutchinson, uniform dequantization) on the first --mnist-digits test digits.
Writes energy.png and metrics.json to --out (default out/likelihood).

    python examples/likelihood.py                           # the toy lesson, about a minute on 2 cores
    python examples/likelihood.py --mnist-checkpoint out/mnist/checkpoint.npz --out out/likelihood-mnist
"""
# %%
import math

import numpy as np

import tinydiff as td

# %% Settings
run, R = td.Run("likelihood", __doc__), td.runs
run.run_flag("steps", 4000, "training steps of the toy model", type=R.positive_int)
run.run_flag("batch", 512, "batch size", type=R.positive_int)
run.run_flag("T", 1000, "diffusion steps (linear betas 0.1 / T .. 20 / T: DDPM's for T = 1000)", type=R.positive_int)
run.run_flag("seed", 0, "seed of every random draw", type=R.nonnegative_int)
run.eval_flag("points", 1000, "held-out points for the trained model's bound and ODE NLL", type=R.positive_int)
run.eval_flag("oracle_points", 20000, "points for the exact-score ODE (cheap: closed form)", type=R.positive_int)
run.eval_flag("rtol", 1e-5, "RK45 relative tolerance (atol the same)", type=R.positive_float)
run.eval_flag("mnist_checkpoint", None, "a trained examples/mnist.py run: also its bound and ODE NLL", type=str)
run.eval_flag("mnist_digits", 500, "MNIST test digits for the bound", type=R.positive_int)
run.eval_flag("mnist_ode_digits", 500, "the first N of them for the ODE NLL (the costly part)", type=R.positive_int)
run.eval_flag("mnist_solver", "rk45", "MNIST ODE solver: rk45, or heun / rk4 on --mnist-ode-steps steps (unstable "
              "near t_min for images unless the steps are many)", choices=["heun", "rk4", "rk45"])
run.eval_flag("mnist_rtol", 1e-3, "MNIST RK45 tolerance (rtol = atol)", type=R.positive_float)
run.eval_flag("mnist_ode_steps", 100, "MNIST fixed-step solver steps", type=R.positive_int)
td.recipes.mnist_flags(run)
args = run.parse()

# %% [markdown]
# ## The truth check: the ODE driven by the exact score
# The 8-mode mixture (std 0.1) has entropy 3 + log2(2 pi e 0.01) = 0.450 bits: no model can do
# better on average. `oracle.score_at` is grad log q_t in closed form at any real t, and
# `score_divergence_at` its divergence, so only the solver and the start at t_min can err.
# %%
data = td.data.make_dataset("8gaussians")
betas = td.linear_beta_schedule(args.T, 0.1 / args.T, 20 / args.T)             # DDPM's 1e-4 .. 0.02 at T = 1000
diffusion = td.make_diffusion("hybrid", betas, decoder_nll="continuous")
sde = td.sde.VPSDE(diffusion)                                  # beta(t) matching the T steps; t_min = 1/T
oracle = td.oracles.GaussianMixtureOracle(data.means, data.std, data.weights, diffusion)
exact_score = lambda x, t: oracle.score_at(x, sde.alpha_bar(t))                      # noqa: E731
exact_div = lambda x, t: oracle.score_divergence_at(x, sde.alpha_bar(t))             # noqa: E731
rng = np.random.default_rng(args.seed + 1)
x_many = data.sample(args.oracle_points, rng, dtype=np.float64)
true_bits = -data.log_prob(x_many) / math.log(2)                    # exact -log2 p of these points
metrics = {"true_nll_bits": float(data.entropy_bits()), "t_min": sde.t_min, "rtol": args.rtol, "atol": args.rtol}
print(f"true NLL (entropy): {metrics['true_nll_bits']:.4f} bits per point")
for tol in (1e-2, 1e-3, args.rtol):                                 # tightening moves it to the truth
    out = td.likelihood.ode_log_likelihood(sde, exact_score, x_many, score_divergence=exact_div, rtol=tol, atol=tol)
    gap = -out["log_prob"] / math.log(2) - true_bits                  # the same points: no sampling noise
    metrics[f"oracle_tol_{tol:g}"] = {"ode_nll_bits": float(np.mean(-out["log_prob"]) / math.log(2)),
                                      "gap_to_exact_bits": float(gap.mean()), "nfe": out["nfe"]}
    print(f"  exact score, rtol = atol = {tol:g}: ODE NLL {np.mean(-out['log_prob']) / math.log(2):.4f} "
          f"(points' own {true_bits.mean():.4f}; gap {gap.mean():+.5f}) in {out['nfe']} calls")
se = lambda v: float(np.std(v, ddof=1) / math.sqrt(len(v)))         # noqa: E731  (standard error of a mean)
best = metrics[f"oracle_tol_{args.rtol:g}"]                          # the tightest tolerance
metrics.update(oracle_ode_nll_bits=best["ode_nll_bits"], oracle_nfe=best["nfe"], oracle_points_stderr=se(true_bits),
               oracle_points_true_nll_bits=float(true_bits.mean()))

# %% [markdown]
# ## A trained model: its bound and its ODE NLL on the same held-out points
# ToyMLP with a learned variance (hybrid objective): the bound needs the variance, the ODE only
# the score -eps / sigma(t). Its divergence is exact here: 2 backward passes per call.
# %%
model = td.models.ToyMLP(heads=2, rng=np.random.default_rng(args.seed))
run.start(model)
trainer = td.Trainer(model, td.DiffusionLoss(diffusion), data, batch_size=args.batch, lr=2e-3,
                     warmup_steps=min(200, args.steps // 10), ema_decay=0.995, lr_decay_steps=args.steps,
                     seed=args.seed, log_every=max(1, args.steps // 10), checkpoint_path=run.checkpoint,
                     checkpoint_every=args.checkpoint_every or max(1, args.steps // 4), config=run.config)
run.train(trainer, warmup=200)
held_out = data.sample(args.points, rng)
points_bits = -data.log_prob(held_out) / math.log(2)
with trainer.ema.average_parameters(model):
    with td.no_grad():
        bound = diffusion.calc_bpd_loop(model, held_out, rng=rng, progress=td.Progress(args.T, "bound"))
    out = td.likelihood.ode_log_likelihood(sde, td.sde.score_fn(sde, model), held_out, model=model,
                                           rtol=args.rtol, atol=args.rtol, progress=td.Progress(0, "ODE NLL"))
ode_bits, bound_bits = -out["log_prob"] / math.log(2), bound["total_bits"].astype(np.float64)
metrics.update(model_ode_nll_bits=float(ode_bits.mean()), model_ode_nll_stderr=se(ode_bits), model_ode_nfe=out["nfe"],
               bound_bits=float(bound_bits.mean()), bound_stderr=se(bound_bits), points=args.points, steps=trainer.step,
               points_true_nll_bits=float(points_bits.mean()), ode_minus_true_bits=float(np.mean(ode_bits - points_bits)),
               ode_minus_true_stderr=se(ode_bits - points_bits), bound_minus_ode_stderr=se(bound_bits - ode_bits),
               bound_minus_ode_bits=float(np.mean(bound_bits - ode_bits)))

# %% [markdown]
# ## Energy and the normaliser, and the flow
# p(x) = exp(-E(x)) / Z with E(x) = -log sum_k exp(-|x - m_k|^2 / 2 s^2): Z = 8 (2 pi s^2) here, but
# for a network's energy it is an integral nobody can do. The score -grad E(x) = grad log p(x)
# does not contain Z, which is why diffusion models learn scores.
# %%
lims = ((-3.0, 3.0), (-3.0, 3.0))
grid, arrows = td.viz.grid_points(lims, 200), td.viz.grid_points(lims, 21)
energy = -np.logaddexp.reduce(-np.sum((grid[:, None] - data.means) ** 2, -1) / (2 * data.std ** 2), axis=1)
log_z_grid = math.log(np.sum(np.exp(-energy)) * (6.0 / 200) ** 2)   # Z by brute force: cells of side 6/200
score0 = exact_score(arrows, 1e-6)                                   # -grad E, the score of the data
fig = td.viz.figure((12.0, 4.2), dpi=100)
axes = fig.subplots(1, 3)
im = axes[0].imshow(np.log10(1 + energy).reshape(200, 200), origin="lower", extent=(-3, 3, -3, 3), cmap="viridis")
fig.colorbar(im, ax=axes[0], fraction=0.046, label="log10(1 + E)")
axes[0].set_title(f"energy E(x); Z = integral of exp(-E): log Z = {log_z_grid:.3f}\n(on the grid; closed form "
                  f"{math.log(8 * 2 * math.pi * 0.01):.3f})", fontsize=10)
length = np.minimum(np.linalg.norm(score0, axis=1, keepdims=True), 40)
axes[1].imshow(np.exp(-energy).reshape(200, 200), origin="lower", extent=(-3, 3, -3, 3), cmap="Greys", alpha=0.6)
axes[1].quiver(*arrows.T, *(score0 / np.maximum(np.linalg.norm(score0, axis=1, keepdims=True), 1e-12) * length).T,
               color="#c44e52", angles="xy", scale_units="xy", scale=40 / 0.28, width=0.006)
axes[1].set_title("score $-\\nabla E(x)$ = $\\nabla \\log p(x)$: no Z in it\n(arrows capped at length 40)", fontsize=10)
paths = td.ode.solve_fixed(lambda t, y: td.sde.ode_drift(sde, exact_score, y, t), held_out[:200].astype(np.float64),
                           td.sde.time_grid(sde, 100, ascending=True), "rk4")["states"]
paths = np.stack(paths)                                              # [101, 200, 2]: data -> noise
for k in range(paths.shape[1]):
    axes[2].plot(paths[:, k, 0], paths[:, k, 1], color="#4c72b0", alpha=0.25, linewidth=0.7)
for end, color, name in ((0, "k", "data x(t_min)"), (-1, "#dd8452", "x(1) ~ N(0, I)")):
    axes[2].scatter(*paths[end].T, s=4, color=color, label=name)
axes[2].legend(fontsize=8, loc="lower right")
axes[2].set_title("probability-flow ODE: paths from data to noise", fontsize=10)
for ax in axes:
    ax.set(xlim=lims[0], ylim=lims[1], aspect="equal", xticks=[], yticks=[])
td.viz.save(fig, run.path("energy.png"))
metrics.update(log_z_grid=log_z_grid, log_z_closed_form=math.log(8 * 2 * math.pi * 0.01))

# %% [markdown]
# ## MNIST (optional): the bound term by term and the ODE NLL on the same test digits
# The ODE NLL uses uniform dequantization, z = (x + u) / 128 - 1, and Hutchinson's estimator
# with one Rademacher probe per digit: bits/dim = -log2 p(z) / 784 + 7 (td.likelihood).
# %%
if args.mnist_checkpoint:
    mnist_diffusion, mnist_model, meta = td.recipes.load_mnist_run(args.mnist_checkpoint)
    images, labels = td.recipes.mnist_digits(args, "test", limit=args.mnist_digits, model_space=False)  # uint8
    conditional = not meta["config"].get("unconditional", False)
    msde, mrng, parts, ode_parts = td.sde.VPSDE(mnist_diffusion), np.random.default_rng(args.seed + 2), [], []
    td.runtime.tune_process(convolutions=True)                      # the UNet's kernels own the cores, not OpenBLAS
    for i in range(0, len(images), 100):
        kw = {"y": labels[i:i + 100]} if conditional else {}
        with td.no_grad():
            parts.append(mnist_diffusion.calc_bpd_loop(mnist_model, td.data.to_model_space(images[i:i + 100]),
                                                       rng=mrng, num_timesteps=100, model_kwargs=kw or None))
    n_ode = min(args.mnist_ode_digits, len(images))
    for i in range(0, n_ode, 100):
        j = min(i + 100, n_ode)
        kw = {"y": labels[i:j]} if conditional else {}
        bpd, o = td.likelihood.dequantized_bits_per_dim(
            msde, td.sde.score_fn(msde, mnist_model, kw), images[i:j, None], mrng, divergence="hutchinson",
            model=mnist_model, method=args.mnist_solver, steps=args.mnist_ode_steps, rtol=args.mnist_rtol,
            atol=args.mnist_rtol, progress=td.Progress(0, f"ODE NLL, digits {i + 1}-{j}"))
        ode_parts.append((bpd, o["nfe"]))
        print(f"  digits {i + 1}-{j}: ODE NLL {bpd.mean():.3f} bits/dim in {o['nfe']} calls")
    x0 = td.data.to_model_space(images).astype(np.float64)         # the decoder's floor: L_0 with x_0 as its mean
    ends = {"beta_tilde": mnist_diffusion.posterior_log_variance_clipped[0], "beta": mnist_diffusion.log_betas[0]}
    floor = {name: float(-td.discretized_gaussian_log_likelihood(x0, means=x0, log_scales=np.full(x0.shape, lv / 2))
                         .mean() / math.log(2)) for name, lv in ends.items()}
    total = np.concatenate([p["total_bpd"] for p in parts]).astype(np.float64)
    vb = np.concatenate([p["vb"] for p in parts]).astype(np.float64)
    ode_bpd = np.concatenate([p[0] for p in ode_parts])
    metrics["mnist"] = {"checkpoint": args.mnist_checkpoint, "steps": meta.get("step"), "digits": len(images),
                        "bound_bits_per_dim": float(total.mean()), "bound_stderr": se(total),
                        "decoder_L_0": float(vb[:, 0].mean()), "decoder_floor_perfect_mean": floor,
                        "kl_terms": float((vb[:, 1:] * parts[0]["weights"][1:]).sum(axis=1).mean()),
                        "prior_L_T": float(np.concatenate([p["prior_bpd"] for p in parts]).mean()),
                        "ode_digits": len(ode_bpd), "ode_bits_per_dim": float(ode_bpd.mean()), "ode_stderr": se(ode_bpd),
                        "ode_solver": args.mnist_solver, "ode_rtol": args.mnist_rtol,
                        "ode_nfe_per_batch": [p[1] for p in ode_parts],
                        "ode_convention": "uniform dequantization z = (x + u) / 128 - 1, Hutchinson (1 Rademacher "
                                          "probe per digit), t_min = 1/T, prior N(0, I) at t = 1"}
    m = metrics["mnist"]
    print(f"MNIST, {m['digits']} test digits: bound {m['bound_bits_per_dim']:.3f} +- {m['bound_stderr']:.3f} bits/dim "
          f"(L_0 {m['decoder_L_0']:.3f}, KL terms {m['kl_terms']:.3f}, L_T {m['prior_L_T']:.4f}); ODE NLL "
          f"{m['ode_bits_per_dim']:.3f} +- {m['ode_stderr']:.3f} on {m['ode_digits']} ({args.mnist_solver}, "
          f"{m['ode_nfe_per_batch'][0]} calls)")

# %% The three numbers, each beside its target
m = metrics
print(f"bits per point: truth {m['true_nll_bits']:.3f} | exact-score ODE {m['oracle_ode_nll_bits']:.3f} | model ODE "
      f"{m['model_ode_nll_bits']:.3f} +- {m['model_ode_nll_stderr']:.3f} | model bound {m['bound_bits']:.3f} +- "
      f"{m['bound_stderr']:.3f}")
R.target(f"exact-score ODE {m['oracle_ode_nll_bits']:.4f} vs truth {m['true_nll_bits']:.4f} ({m['oracle_nfe']} calls "
         f"at rtol {args.rtol:g})", "within 0.02 bits", abs(m["oracle_ode_nll_bits"] - m["true_nll_bits"]) <= 0.02)
R.target(f"model ODE minus the points' true NLL {m['ode_minus_true_bits']:+.4f} "
         f"(stderr {m['ode_minus_true_stderr']:.4f})", "not below -1 stderr", m["ode_minus_true_bits"] >= -m["ode_minus_true_stderr"])
print(f"bound minus ODE NLL {m['bound_minus_ode_bits']:+.4f} +- {m['bound_minus_ode_stderr']:.4f} (two models: the "
      "chain with its variances, and the ODE of its score; docs/likelihood.md)")
run.finish(metrics)

"""The score view of a diffusion model on 2-D data: the learned score field beside the true one,
and sampling by Langevin dynamics on it.

A network trained to predict the noise eps is a score estimator in disguise:

    s_theta(x_t, t) = -eps_theta(x_t, t) / sqrt(1 - alpha_bar_t)  ~  grad_x log q(x_t)

(Vincent 2011; Song & Ermon 2019; Ho et al. 2020, sec. 3.2). For the 8-mode mixture the noised
marginal q(x_t) is a mixture too, so its score is known exactly (td.oracles) and the learned
field can be checked point by point. Writes to --out (default out/score):

* score.png     the learned and the true score at several t, as arrows over the density of
                q(x_t); below, E||s_theta - s||^2 over x_t ~ q(x_t) at every t;
* samples.png   ancestral (DDPM Algorithm 2) beside annealed Langevin samples (Song & Ermon
                2019, Algorithm 1) from the same network;
* metrics.json  the score error per t; energy distance, modes and precision of each sampler
                with the network and with the exact score (which separates the sampler's
                error from the network's).

Run (about a minute on 2 idle cores), or open as a notebook (`# %%` cells):

    python examples/score.py
    python examples/score.py --steps 8000 --langevin-steps 20

The course page: docs/score.md.
"""
# %%
import numpy as np

import tinydiff as td

# %% Settings: each one is a flag of the script; in a notebook, edit them here
run, R = td.Run("score", __doc__), td.runs
run.run_flag("steps", 4000, "training steps", type=R.positive_int)
run.run_flag("batch", 512, "batch size", type=R.positive_int)
run.run_flag("hidden", 256, "width of ToyMLP's hidden layers", type=R.positive_int)
run.run_flag("T", 1000, "number of diffusion steps (linear betas 1e-4..0.02)", type=R.positive_int)
run.run_flag("seed", 0, "seed of every random draw", type=R.nonnegative_int)
run.eval_flag("langevin_levels", 100, "noise levels of annealed Langevin, spaced evenly over the T steps",
              type=R.positive_int)
run.eval_flag("langevin_steps", 10, "Langevin moves per noise level", type=R.positive_int)
run.eval_flag("n_eval", 2000, "points per t for the score error, and samples per sampler", type=R.positive_int)
SHOW_T = (1, 10, 50, 200, 600)                                          # the papers' t of the arrow panels


def check(args):
    if args.T < max(SHOW_T) or args.langevin_levels > args.T:
        raise ValueError(f"--T must be >= {max(SHOW_T)} and >= --langevin-levels, got {args.T} and "
                         f"{args.langevin_levels}")


args = run.parse(check=check)

# %% [markdown]
# ## Train an eps-network (DDPM Algorithm 1)
# The loss ||eps - eps_theta(x_t, t)||^2 is denoising score matching in disguise (Vincent 2011).
# `td.Trainer.train_step` is the loop quickstart.py writes out, with a short warm-up, a cosine
# decay of the learning rate, an exponential moving average (EMA) of the weights, which we
# evaluate, and checkpoints (`--resume` re-evaluates a finished run with other Langevin settings).

# %%
data = td.data.make_dataset("8gaussians")
diffusion = td.make_diffusion("eps", td.linear_beta_schedule(args.T))
model = td.models.ToyMLP(hidden=args.hidden, rng=np.random.default_rng(args.seed))
run.start(model)
trainer = td.Trainer(model, diffusion, data, batch_size=args.batch, lr=2e-3, warmup_steps=min(200, args.steps // 10),
                     lr_decay_steps=args.steps, ema_decay=0.995, seed=args.seed, log_every=max(1, args.steps // 10),
                     checkpoint_path=run.checkpoint, checkpoint_every=args.checkpoint_every or max(1, args.steps // 4),
                     config=run.config)
run.train(trainer, warmup=200)
trainer.ema.copy_to(model)                                              # evaluate the averaged weights


# %% [markdown]
# ## The network read as a score, beside the exact score
# `oracle.score(x_t, t)` is grad log q(x_t) of the noised mixture, in closed form. We compare
# the two at points x_t ~ q(x_t), at 25 log-spaced t: E||s_theta - s||^2, beside E||s||^2 for scale.

# %%
def learned_score(x_t, t):
    """s_theta(x_t, t) = -eps_theta(x_t, t) / sqrt(1 - alpha_bar_t). x_t: [B, 2], t: [B] -> [B, 2]."""
    with td.no_grad():
        eps = diffusion.p_mean_variance(model, x_t, t)["pred_eps"]
    return diffusion.score_from_eps(x_t, t, np.asarray(eps, dtype=np.float64))


oracle = td.oracles.GaussianMixtureOracle(data.means, data.std, data.weights, diffusion)
rng = np.random.default_rng(args.seed + 1)
ts = np.unique(np.geomspace(1, args.T, 25).round().astype(int)) - 1    # code indices, log-spaced
errors, scale = np.zeros(len(ts)), np.zeros(len(ts))
for i, t in enumerate(ts):
    tt = np.full(args.n_eval, t)
    x_t = diffusion.q_sample(data.sample(args.n_eval, rng, dtype=np.float64), tt, rng=rng)      # [n, 2]
    true = oracle.score(x_t, tt)
    errors[i] = np.mean(np.sum((learned_score(x_t, tt) - true) ** 2, axis=1))
    scale[i] = np.mean(np.sum(true ** 2, axis=1))

# %% [markdown]
# ## The picture: both fields over the density of q(x_t), then the error at every t
# One arrow scale per column, from the true field, so the rows compare directly; arrows are
# capped at twice that length, so a wild field (the learned one far from the data, where
# training never looked) stays readable.

# %%
lims, side = ((-3.0, 3.0), (-3.0, 3.0)), 21                              # side x side arrows
fig = td.viz.figure((3.0 * len(SHOW_T), 9.6), dpi=100)
top, bottom = fig.subfigures(2, 1, height_ratios=[2.0, 1.0])
axes = top.subplots(2, len(SHOW_T))
arrows, shade = td.viz.grid_points(lims, side), td.viz.grid_points(lims, 120)      # [side^2, 2], [120^2, 2]
for col, paper_t in enumerate(SHOW_T):
    t = np.full(len(arrows), paper_t - 1)                               # code index
    density = np.exp(oracle.log_prob(shade, np.full(len(shade), paper_t - 1))).reshape(120, 120)
    fields = (learned_score(arrows, t), oracle.score(arrows, t))
    length = np.quantile(np.linalg.norm(fields[1], axis=1), 0.9)
    for row, field in enumerate(fields):
        field = field * np.minimum(1.0, 2.0 * length / np.maximum(np.linalg.norm(field, axis=1, keepdims=True), 1e-12))
        ax = axes[row, col]
        ax.imshow(np.sqrt(density), origin="lower", extent=(*lims[0], *lims[1]), cmap="Greys", alpha=0.7)
        ax.quiver(*arrows.T, *field.T, color="#4c72b0" if row == 0 else "#c44e52", angles="xy", scale_units="xy",
                  scale=length / 0.28, width=0.006)
        ax.set(xlim=lims[0], ylim=lims[1], aspect="equal", xticks=[], yticks=[])
    axes[0, col].set_title(f"t = {paper_t}: an arrow 0.28 long = score {length:.3g}", fontsize=10)
axes[0, 0].set_ylabel(r"learned: $-\epsilon_\theta(x_t, t) / \sqrt{1-\bar\alpha_t}$", fontsize=10)
axes[1, 0].set_ylabel(r"true: $\nabla_x \log q(x_t)$ (oracle)", fontsize=10)
top.suptitle(r"score fields over the true density of $q(x_t)$ (grey); arrows capped at twice the stated length",
             fontsize=12)
ax = bottom.subplots()
ax.plot(ts + 1, errors, "o-", color="#4c72b0", markersize=4, label=r"error $E\,\|s_\theta - \nabla\log q\|^2$")
ax.plot(ts + 1, scale, "s--", color="0.4", markersize=4, label=r"size of the true score $E\,\|\nabla\log q\|^2$")
ax.set(xscale="log", yscale="log", xlabel="diffusion step t (log scale)")
ax.set_title(rf"mean squared score error over $x_t \sim q(x_t)$, {args.n_eval:,} points per t", fontsize=11)
ax.grid(True, alpha=0.25, linewidth=0.5)
ax.legend(fontsize=9, frameon=False)
td.viz.save(fig, run.path("score.png"))

# %% [markdown]
# ## Two samplers on one score
# Ancestral sampling follows p(x_{t-1} | x_t) down the chain. Annealed Langevin dynamics needs
# only the score: at each noise level, a few moves x <- x + (a/2) s(x) + sqrt(a) z. Each runs
# once on the network and once on the exact score (`oracle.eps_model()`): what the exact score
# misses is the sampler's error, the rest is the network's.

# %%
fresh = data.sample(args.n_eval, np.random.default_rng(12345))         # the reference for energy distances
samples, results = {}, {}
for name, net in (("network", model), ("exact score", oracle.eps_model())):
    samples["ancestral", name] = td.ddpm_sample_loop(diffusion, net, (args.n_eval, 2), rng,
                                                     progress=td.Progress(args.T, f"ancestral ({name})"))
    samples["langevin", name] = td.langevin_sample_loop(diffusion, net, (args.n_eval, 2), rng,
                                                        steps=args.langevin_levels, n_steps_each=args.langevin_steps,
                                                        progress=td.Progress(0, f"langevin ({name})"))
for (sampler, name), x in samples.items():
    results[f"{sampler}, {name}"] = {"energy_distance": td.metrics.energy_distance(x, fresh),
                                     "mode_coverage": int(td.metrics.mode_coverage(x, data.means, data.std)),
                                     "mode_precision": float(td.metrics.mode_precision(x, data.means, data.std))}
td.viz.plot_samples(samples["langevin", "network"], samples["ancestral", "network"],
                    run.path("samples.png"), names=("ancestral (DDPM)", "annealed Langevin"),
                    title=f"one eps-network, two samplers (Langevin: {args.langevin_levels} noise levels x "
                          f"{args.langevin_steps} moves)")

# %% [markdown]
# ## The numbers

# %%
metrics = {"steps": args.steps, "T": args.T, "langevin_levels": args.langevin_levels,
           "langevin_steps": args.langevin_steps, "score_mse_per_t": {str(t + 1): e for t, e in zip(ts, errors)},
           "true_score_size_per_t": {str(t + 1): s for t, s in zip(ts, scale)}, "samplers": results,
           "held_out_energy_distance": td.metrics.energy_distance(data.sample(args.n_eval, rng), fresh)}
net = results["ancestral, network"]
print("score error relative to its size, E||s_theta - s||^2 / E||s||^2: " +
      ", ".join(f"{e / s:.2g} at t = {t + 1}" for e, s, t in list(zip(errors, scale, ts))[::6]))
print(f"{'sampler, score':<28} {'energy dist.':>12} {'modes':>6} {'precision':>10}   "
      f"(two samples of the data itself: energy distance {metrics['held_out_energy_distance']:.4f})")
for name, m in results.items():
    print(f"{name:<28} {m['energy_distance']:>12.4f} {m['mode_coverage']:>4}/8 {m['mode_precision']:>10.3f}")
metrics["ok"] = R.target(f"ancestral samples from the network: {net['mode_coverage']}/8 modes, precision "
                         f"{net['mode_precision']:.3f}", "8/8 and >= 0.9", net["mode_coverage"] == 8 and
                         net["mode_precision"] >= 0.9)
run.finish(metrics)

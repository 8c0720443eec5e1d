"""Train a diffusion model on 2-D toy data and check it against the truth.

The first lesson to run (docs/toy2d.md). ToyMLP learns points from a distribution whose density
we know; the lesson then draws samples beside the data (samples.png), animates the forward process
destroying the data and the reverse process rebuilding it (forward.gif, reverse.gif), computes the
variational bound on -log p(x) in bits per point on held-out points beside the true negative
log-likelihood (the entropy, which no model can beat), counts the 8-mode mixture's modes covered,
and ends in one line per target.

Run it (about a minute on 2 cores), or open it as a notebook (jupytext, VS Code: # %% cells):

    python examples/toy2d.py                               # 8-mode mixture, hybrid objective
    python examples/toy2d.py --objective eps               # fixed variance: a worse bound
    python examples/toy2d.py --dataset swiss_roll --T 40 --schedule logsnr --objective sohl-dickstein
    python examples/toy2d.py --resume --sampler ddim       # re-sample the run: samples.sampler-ddim.png

Everything lands in --out (default out/toy2d): samples.npy, samples.png, loss.png, forward.gif,
reverse.gif, metrics.json and checkpoint.npz.
"""
# %%
import numpy as np

import tinydiff as td

# %% [markdown]
# ## Settings
# Run flags define what is trained: `--resume` refuses other values, by name. Evaluation flags
# only change what is computed from the trained model: other values write new file names.
# %%
run, R = td.Run("toy2d", __doc__), td.runs        # R: the flag types (positive_int, ...) and checks
run.run_flag("dataset", "8gaussians", "training data",
             choices=["8gaussians", "gaussian", "swiss_roll", "moons", "checkerboard"])
run.run_flag("noise", None, "swiss_roll / moons: std of the noise around the curve", type=R.nonnegative_float)
run.run_flag("objective", "hybrid", "eps: predict the noise, variance beta_t, L_simple (Ho et al. 2020); "
                                    "hybrid: also a learned variance, L_simple + 0.001 L_vlb (Nichol & Dhariwal "
                                    "2021); sohl-dickstein: mean and variance trained on the bound (2015)",
             choices=sorted(td.OBJECTIVES))
run.run_flag("sd_mean", "direct", "sohl-dickstein: output the mean, or a residual", choices=["direct", "residual"])
run.run_flag("schedule", "linear", "beta_t: linear; rescaled (both ends x 1000/T); cosine (Nichol & Dhariwal "
                                   "eq. 17); logsnr (log-SNR linear in t)",
             choices=["linear", "rescaled", "cosine", "logsnr"])
run.run_flag("beta_start", 1e-4, "linear/rescaled: the first beta", type=R.open_unit)
run.run_flag("beta_end", 0.02, "linear/rescaled: the last beta", type=R.open_unit)
run.run_flag("logsnr_max", 14.0, "logsnr: log-SNR after the first step", type=R.finite_float)
run.run_flag("logsnr_min", -5.0, "logsnr: log-SNR after the last step", type=R.finite_float)
run.run_flag("T", 1000, "number of diffusion steps", type=R.positive_int)
run.run_flag("steps", 6000, "training steps", type=R.positive_int)
run.run_flag("batch", 512, "batch size", type=R.positive_int)
run.run_flag("lr", 2e-3, "peak learning rate (AdamW)", type=R.positive_float)
run.run_flag("lr_decay", "cosine", "cosine-decay the lr to 0 at --steps, or not", choices=["cosine", "none"])
run.run_flag("ema", 0.995, "EMA decay of the weights used for evaluation", type=R.decay_rate)
run.run_flag("hidden", 256, "width of ToyMLP's hidden layers", type=R.positive_int)
run.run_flag("seed", 0, "seed of every random draw", type=R.nonnegative_int)
run.eval_flag("sampler", "ddpm", "ancestral DDPM, deterministic DDIM, or annealed Langevin on the score",
              choices=["ddpm", "ddim", "langevin"])
run.eval_flag("sample_steps", None, "sample on this many of the T steps (default: all; langevin 100)",
              type=R.positive_int)
run.eval_flag("eval_points", 2000, "held-out points for the bound, samples for the metrics", type=R.positive_int)
run.flag("no_gifs", False, "skip the animations (faster)")


def make_betas(args):     # float64 [T]
    if args.schedule in ("linear", "rescaled"):
        scale = 1000.0 / args.T if args.schedule == "rescaled" else 1.0   # improved-diffusion's rescaling
        if args.beta_end * scale >= 1:
            raise ValueError(f"the last beta, --beta-end * 1000 / T = {args.beta_end * scale:g}, must stay below 1")
        return td.linear_beta_schedule(args.T, args.beta_start * scale, args.beta_end * scale)
    if args.schedule == "cosine":
        return td.cosine_beta_schedule(args.T)
    return td.logsnr_beta_schedule(args.T, args.logsnr_max, args.logsnr_min)


def check(args):
    """Flags that make no sense together: refused in one line (an argparse error) before any work."""
    if args.noise is not None and args.dataset not in ("swiss_roll", "moons"):
        raise ValueError(f"--noise: only swiss_roll and moons have a noise level, got --dataset {args.dataset}")
    if args.sd_mean == "residual" and args.objective != "sohl-dickstein":
        raise ValueError(f"--sd-mean residual: only the sohl-dickstein objective outputs a mean, got "
                         f"--objective {args.objective}")
    try:
        betas = make_betas(args)
    except ValueError as err:
        raise ValueError(f"--schedule {args.schedule} with --T {args.T}: {err}") from None
    R.check_chain(betas, args, langevin_step_lr=2e-5 if args.sampler == "langevin" else None)


args = run.parse(check=check)

# %% [markdown]
# ## The data, the diffusion and the model
# `make_diffusion` picks what the network predicts and its loss (td.OBJECTIVES); a learned
# variance needs a second output head.
# %%
data = td.data.make_dataset(args.dataset, **({} if args.noise is None else {"noise": args.noise}))
diffusion = td.make_diffusion(args.objective, make_betas(args), decoder_nll="continuous")
model = td.models.ToyMLP(heads=2 if diffusion.learned_variance else 1, hidden=args.hidden,
                         rng=np.random.default_rng(args.seed))
if args.sd_mean == "residual":
    model = td.models.ForwardResidual(model, diffusion.betas)
run.start(model, extra_bytes=10_000_000, growable=("steps",) if args.lr_decay == "none" else ())

# %% [markdown]
# ## Training: DDPM Algorithm 1
# Each step (`td.Trainer.train_step`): a batch x_0 of data, t ~ U{1..T} and eps ~ N(0, I) per
# point, the loss ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2 (hybrid adds
# 0.001 L_vlb for the variance head), backward, an AdamW step, the EMA of the weights, and a
# checkpoint every --checkpoint-every steps.
# %%
trainer = td.Trainer(model, td.DiffusionLoss(diffusion), data, batch_size=args.batch, lr=args.lr,
                     warmup_steps=min(200, args.steps // 10), ema_decay=args.ema,
                     lr_decay_steps=args.steps if args.lr_decay == "cosine" else None, seed=args.seed,
                     log_every=max(1, args.steps // 10), checkpoint_path=run.checkpoint,
                     checkpoint_every=args.checkpoint_every or max(1, args.steps // 4), config=run.config)
train_seconds = run.train(trainer, warmup=200)

# %% [markdown]
# ## The bound and the samples, with the averaged (EMA) weights
# calc_bpd_loop sums every term of the bound on held-out points; a density can be negative
# in bits, so the bound is compared with the data's true entropy, not with 0.
# %%
n, eval_rng = args.eval_points, np.random.default_rng(args.seed + 1)        # separate from training's stream
# Langevin visits 100 noise levels by default: its 10 moves per level cost as much as 1,000 DDPM steps
steps = args.sample_steps or (min(100, args.T) if args.sampler == "langevin" else None)
held_out = data.sample(n, eval_rng)
with trainer.ema.average_parameters(model), td.no_grad():
    bound = diffusion.calc_bpd_loop(model, held_out, rng=eval_rng, progress=td.Progress(args.T, "bound"))
    samples, trajectory = td.sample(diffusion, model, (n, 2), eval_rng, sampler=args.sampler, steps=steps,
                                    return_trajectory=True,
                                    progress=td.Progress(0, f"sampling ({args.sampler})"))
bits = bound["total_bits"].astype(np.float64)
metrics = {"dataset": args.dataset, "objective": args.objective, "sampler": args.sampler, "T": args.T,
           "steps": trainer.step, "train_seconds": round(train_seconds, 2),
           "final_loss": float(np.mean(trainer.losses[-100:])), "nll_bound_bits": float(bits.mean()),
           "nll_bound_bits_stderr": float(bits.std(ddof=1) / np.sqrt(len(bits))),
           "prior_bits": float(bound["prior_bpd"].mean() * 2), "decoder_bits": float(bound["vb"][:, 0].mean() * 2),
           "energy_distance": td.metrics.energy_distance(samples, data.sample(n, eval_rng))}
if args.sample_steps is not None:
    metrics["sample_steps"] = args.sample_steps
if hasattr(data, "entropy_bits") and getattr(data, "noise", 1.0) > 0:     # a noiseless roll has no density
    metrics["true_nll_bits"] = float(data.entropy_bits())
    metrics["bound_gap_bits"] = metrics["nll_bound_bits"] - metrics["true_nll_bits"]
if args.dataset == "8gaussians":
    metrics["mode_coverage"] = int(td.metrics.mode_coverage(samples, data.means, data.std))
    metrics["mode_precision"] = float(td.metrics.mode_precision(samples, data.means, data.std))

# %% [markdown]
# ## Pictures: the samples, the loss, and the two processes as animations
# %%
run.save("samples.npy", samples.astype(np.float32))
td.viz.plot_samples(samples, held_out, run.path("samples.png"),
                    title=f"{args.objective} on {args.dataset}, {args.sampler} sampler")
td.viz.plot_loss(trainer.losses, path=run.path("loss.png"), title=f"training loss ({args.objective})")


def frames(length, n=40, dense_at_start=True):
    """n frame indices in 0..length-1, quadratically denser near t = 0, where the structure forms."""
    u = np.linspace(0, 1, n) ** 2
    return np.unique(((u if dense_at_start else 1 - u[::-1]) * (length - 1)).round().astype(int))


if not args.no_gifs:
    lims = td.viz.square_limits(held_out, trajectory[0], trajectory[-1])
    ts = frames(args.T)                                              # code indices: the papers' t = ts + 1
    forward = [held_out] + [diffusion.q_sample(held_out, np.full(n, t), rng=eval_rng) for t in ts]
    density, title = "histogram", None                                # else: a histogram of the points
    if isinstance(data, td.data.GaussianMixture):                    # q(x_t) is a mixture too: draw the truth
        grid = td.viz.grid_points(lims, 64)
        oracle = td.oracles.GaussianMixtureOracle(data.means, data.std, data.weights, diffusion)
        density = [np.exp(data.log_prob(grid))] + [np.exp(oracle.log_prob(grid, np.full(len(grid), t))) for t in ts]
        density, title = np.stack(density).reshape(-1, 64, 64), "true density of $x_t$, $q(x_t)$"
    td.viz.animate_clouds(forward, ["t = 0 (data)"] + [f"t = {t + 1}" for t in ts], run.path("forward.gif"),
                          title=r"forward $q(x_t \mid x_0)$", lims=lims, reference=held_out, points_label="$x_t$",
                          density=density, density_title=title)
    # trajectory[k] follows k reverse steps: on a chain of K kept steps it sits at the papers' t = kept[K-1-k]
    kept = (td.respace(diffusion, steps) if steps else diffusion).timestep_map + 1
    K, keep = len(kept), frames(len(trajectory), dense_at_start=False)
    if args.sampler == "langevin":          # its frames are x_t / sqrt(abar_t) after each noise level
        labels, title, points = ([f"level t = {kept[K - max(k, 1)]}" for k in keep], "annealed Langevin on the "
                                 "score", r"$x_t / \sqrt{\bar\alpha_t}$")
    else:
        labels = [f"t = {kept[K - 1 - k]}" if k < K else "t = 0 (sample)" for k in keep]
        title, points = rf"reverse $p_\theta(x_{{t-1}} \mid x_t)$, {args.sampler}", "$x_t$"
    td.viz.animate_clouds(trajectory[keep], labels, run.path("reverse.gif"), title=title, lims=lims,
                          reference=held_out, points_label=points, density="histogram")

# %% The numbers, each beside its target
m = metrics
print(f"bound on -log p(x): {m['nll_bound_bits']:.3f} +- {m['nll_bound_bits_stderr']:.3f} bits per point (prior "
      f"L_T {m['prior_bits']:.3f}, decoder L_0 {m['decoder_bits']:.2f}: a density, so it can be < 0)")
if "bound_gap_bits" in m:      # below the truth by more than 4 standard errors would mean the bound is wrong
    floor = -4 * m["nll_bound_bits_stderr"]
    R.target(f"gap {m['bound_gap_bits']:.3f} bits to the true NLL {m['true_nll_bits']:.3f}",
             f"<= 0.3, and not below {floor:.3f}", floor < m["bound_gap_bits"] <= 0.3)
if "mode_coverage" in m:
    R.target(f"modes covered {m['mode_coverage']}/8", "8/8", m["mode_coverage"] == 8)
    R.target(f"mode precision {m['mode_precision']:.3f}", ">= 0.95; a perfect sampler scores 0.989",
             m["mode_precision"] >= 0.95)
print(f"energy distance {m['energy_distance']:.4f} (0: indistinguishable from fresh data)")
run.finish(metrics)

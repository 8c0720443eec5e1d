"""Train a class-conditional diffusion model on MNIST, then draw digits and score them.

The second lesson, after toy2d.py (docs/mnist.md): the same GaussianDiffusion and Trainer, now
with the library's UNet on 28 x 28 images. It

* trains eps_theta(x_t, t, y) with labels dropped to "null" 10% of the time, so one network
  also predicts eps(x_t, t, null) for classifier-free guidance (Ho & Salimans 2022),
* draws 500 digits (50 of each class) with guidance: a 10 x 10 grid (row k = digit k),
  samples.npy and labels.npy; the same noise at guidance w = 0, 1, 3, 5; a denoising trajectory,
* estimates the variational bound in bits/dim on 500 test digits (discretized decoder, the
  convention of published image likelihoods), term by term,
* and scores the digits with tinydiff's MNIST classifier (td.scorer): how often a sample is
  read as the digit asked for, and a Frechet distance to real digits beside the real-vs-real floor.

Run it (2,000 steps by default, under 10 minutes of training on 2 cores), or open it as a notebook:

    python examples/mnist.py                       # the default run (docs/mnist.md)
    python examples/mnist.py --steps 12000         # the longer documented run (under an hour)
    python examples/mnist.py --minutes 5           # or: train for a time budget instead of a step count
    python examples/mnist.py --resume --guidance 5 # re-sample a finished run (grid.guidance-5.0.png, ...)

MNIST is read from --data-dir, $TINYDIFF_DATA/mnist or ~/.cache/tinydiff/mnist, and downloaded
there (with checksums) when missing unless --no-download is given. Outputs land in --out
(default out/mnist).
"""
# %%
import time

import numpy as np

import tinydiff as td

# %% [markdown]
# ## Settings
# %%
run, R = td.Run("mnist", __doc__, checkpoint_every=250), td.runs     # R: the flag types and checks
td.recipes.mnist_flags(run)                                           # --data-dir, --no-download, --train-limit
run.run_flag("steps", 2000, "training steps (2,000 of batch 64: about 9 minutes on 2 cores)", type=R.positive_int)
run.run_flag("batch", 64, "batch size", type=R.positive_int)
run.run_flag("lr", 2e-3, "peak learning rate (AdamW), cosine-decayed to 0", type=R.positive_float)
run.run_flag("ema", 0.999, "EMA decay of the sampling weights (with warm-up)", type=R.decay_rate)
run.run_flag("label_dropout", 0.1, "probability of training on the null label (for guidance)", type=R.probability)
run.run_flag("unconditional", False, "train without labels (no guidance)")
run.run_flag("seed", 0, "seed of every random draw", type=R.nonnegative_int)
run.run_flag("width", 16, "UNet base channels (16 trains 2.4x faster than the UNet() default 32)",
             type=R.positive_int)
run.run_flag("mults", "1,2,2", "UNet channel multiplier per level, comma-separated")
run.run_flag("T", 1000, "number of diffusion steps", type=R.positive_int)
run.run_flag("schedule", "cosine", "noise schedule: cosine (Nichol & Dhariwal eq. 17) or DDPM's linear",
             choices=["cosine", "linear"])
run.run_flag("cosine_s", 0.008, "the cosine schedule's offset s: smaller makes the first step, and the bound's "
                                "decoder term, smaller", type=R.positive_float)
run.run_flag("objective", "eps", "eps: L_simple, fixed variance (Ho et al. 2020); hybrid: plus a learned "
                                 "variance trained on the bound (Nichol & Dhariwal 2021)", choices=["eps", "hybrid"])
run.run_flag("weighting", "min_snr", "per-timestep weight of the MSE: min_snr (Hang et al. 2023) or none (DDPM)",
             choices=["min_snr", "none"])
run.eval_flag("sampler", "ddim", "DDIM (eta 0) or ancestral DDPM", choices=["ddim", "ddpm"])
run.eval_flag("sample_steps", 30, "sampling steps (a respaced chain of the T)", type=R.positive_int)
run.eval_flag("guidance", 1.5, "classifier-free guidance scale w (0 = none)", type=R.nonnegative_float)
run.eval_flag("n_samples", 500, "digits to draw (an equal number per class)", type=R.positive_int)
run.eval_flag("bpd_digits", 500, "test digits for the bits/dim bound (0: skip)", type=R.nonnegative_int)
run.eval_flag("bpd_timesteps", 100, "model calls per digit for the bound (an unbiased estimate of the sum; "
                                    "T = every term exactly)", type=R.positive_int)
run.eval_flag("no_score", False, "skip the classifier scores")


def check(args):
    if args.n_samples % 10 and not args.unconditional:
        raise ValueError(f"--n-samples must be a multiple of 10 (an equal number of each digit), got {args.n_samples}")
    if args.bpd_digits and args.bpd_timesteps < 2:
        raise ValueError(f"--bpd-timesteps {args.bpd_timesteps}: the bound needs at least 2 (the decoder and one "
                         "stratum)")
    args.mults = R.unet_shape_flags(args.width, args.mults)           # "1,2,2" -> (1, 2, 2), or a ValueError
    R.check_chain(td.recipes.mnist_betas(args.T, args.schedule, args.cosine_s), args)
    for name in ("--guidance", "--label-dropout"):
        if args.unconditional and name in run.typed:
            raise ValueError(f"{name} with --unconditional: a model without labels has nothing to guide toward")
    if args.unconditional:
        args.guidance, args.label_dropout = 0.0, 0.0


args = run.parse(check=check)
conditional = not args.unconditional

# %% [markdown]
# ## The diffusion, the UNet and the data
# `td.recipes.mnist_model` is the recipe other lessons share: `make_diffusion(objective, betas,
# decoder_nll="discretized", mse_weighting=weighting)` and `UNet(base_channels=width, ...,
# num_classes=10)`, the images scaled to [-1, 1].
# %%
diffusion, model = td.recipes.mnist_model(args)
x_train, labels = td.recipes.mnist_digits(args)                        # [N, 1, 28, 28] in [-1, 1], [N]
print(f"MNIST: {len(x_train)} training digits; UNet: {model.num_parameters():,} parameters; {args.objective} "
      f"objective, {args.schedule} schedule, T = {args.T}")
run.start(model)

# %% [markdown]
# ## Training: DDPM Algorithm 1, with labels dropped to null 10% of the time
# One step (`td.Trainer.train_step`): a batch of digits and labels, t and eps, the weighted
# eps-loss, backward, AdamW (warm-up, cosine decay), EMA; a checkpoint every 250 steps.
# %%
trainer = td.recipes.mnist_trainer(diffusion, model, x_train, labels, args, checkpoint_path=run.checkpoint,
                                   checkpoint_every=args.checkpoint_every, config=run.config)
train_seconds = run.train(trainer)

# %% [markdown]
# ## Sampling with the averaged weights, and the bound on test digits
# clip_denoised clips each step's estimate of x_0 to [-1, 1]: without it the first steps of the
# cosine schedule turn a small error in eps into a huge x_0, and the digits saturate
# (measured: 23% read as asked, against 99% with clipping; docs/mnist.md).
# %%
rng = np.random.default_rng(args.seed + 1)                                   # evaluation's own stream
options = dict(sampler=args.sampler, steps=args.sample_steps, clip_denoised=True,
               guidance=args.guidance if conditional else None)
y = np.arange(args.n_samples) % 10                                           # 0, 1, ..., 9, 0, 1, ...
metrics = {"steps": trainer.step, "planned_steps": int(trainer.config["steps_resolved"]),
           "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(run.train_cpu_seconds, 1),
           "batch": args.batch, "final_loss": float(np.mean(trainer.losses[-100:])), "sampler": args.sampler,
           "sample_steps": args.sample_steps, "guidance": args.guidance if conditional else None,
           "n_samples": args.n_samples}
with trainer.ema.average_parameters(model), td.no_grad():
    start, cpu_start = time.perf_counter(), time.process_time()
    x = td.sample(diffusion, model, (args.n_samples, 1, 28, 28), rng, model_kwargs={"y": y} if conditional else None,
                  progress=td.Progress(0, f"sampling {args.n_samples} digits"), **options)
    metrics["sample_seconds"] = round(time.perf_counter() - start, 1)
    metrics["sample_cpu_seconds"] = round(time.process_time() - cpu_start, 1)
    samples = td.data.from_model_space(x)[:, 0]                             # [N, 28, 28] in [0, 1]
    strip_noise = rng.standard_normal((10, 1, 28, 28), dtype=np.float32)    # one noise, four guidance scales
    strip = [td.data.from_model_space(td.sample(diffusion, model, (10, 1, 28, 28), np.random.default_rng(0),
                                                noise=strip_noise, model_kwargs={"y": np.arange(10)},
                                                **{**options, "guidance": w})) for w in (0.0, 1.0, 3.0, 5.0)
             ] if conditional else None
    _, trajectory = td.sample(diffusion, model, (5, 1, 28, 28), np.random.default_rng(1), return_trajectory=True,
                              model_kwargs={"y": np.arange(0, 10, 2)} if conditional else None, **options)
    if args.bpd_digits:                     # 100 test digits at a time: each a sum over bpd_timesteps terms
        x0, y0 = td.recipes.mnist_digits(args, "test", limit=args.bpd_digits)
        parts = [diffusion.calc_bpd_loop(model, x0[i:i + 100], rng=rng, num_timesteps=args.bpd_timesteps,
                                         model_kwargs={"y": y0[i:i + 100]} if conditional else None,
                                         progress=td.Progress(0, f"bound, digits {i + 1}-{min(i + 100, len(x0))}"))
                 for i in range(0, len(x0), 100)]
        total, prior, vb = (np.concatenate([p[k] for p in parts]) for k in ("total_bpd", "prior_bpd", "vb"))
        total, vb = total.astype(np.float64), vb.astype(np.float64)
        metrics["bpd"] = {
            "total": float(total.mean()), "stderr": float(total.std(ddof=1) / np.sqrt(len(total))),
            "prior_L_T": float(prior.mean()), "decoder_L_0": float(vb[:, 0].mean()),
            "kl_terms_L_1_to_L_T-1": float((vb[:, 1:] * parts[0]["weights"][1:]).sum(axis=1).mean()),
            "digits": len(total), "model_calls_per_digit": int(vb.shape[1]),
            "convention": "bound on -log2 P(x) of the 8-bit digit (discretized decoder) / 784, "
                          + ("class-conditional" if conditional else "unconditional")}

# %% [markdown]
# ## Pictures: the grid (row k = digit k), the guidance strip, the denoising trajectory
# %%
run.save("samples.npy", samples.astype(np.float32))
run.save("labels.npy", y.astype(np.int64))
per_digit = min(10, args.n_samples // 10)
order = (np.argsort(y, kind="stable").reshape(10, -1)[:, :per_digit].ravel() if conditional
         else np.arange(min(100, args.n_samples)))
td.images.save_image_grid(samples[order], run.path("grid.png"), nrow=per_digit if conditional else 10)
if conditional:
    td.images.plot_image_rows([s[:, 0] for s in strip], run.path("guidance.png"),
                              row_labels=[f"w = {w:g}" for w in (0, 1, 3, 5)], col_labels=[str(k) for k in range(10)],
                              title="the same noise at four guidance scales")
# trajectory[i]: the state after i of the K steps; frame i in 1..K-1 sits at timestep_map[K - 1 - i]
chain_t, K = td.respace(diffusion, args.sample_steps).timestep_map, len(trajectory) - 1
frames = np.unique(np.round(np.linspace(0, K, 9)).astype(int))
names = ["noise" if f == 0 else "x_0" if f == K else f"t = {chain_t[K - 1 - f]}" for f in frames]
rows = [td.data.from_model_space(trajectory[frames, k, 0]) for k in range(trajectory.shape[1])]
td.images.plot_image_rows(rows, run.path("trajectory.png"), col_labels=names,
                          row_labels=[f"y = {k}" for k in range(0, 10, 2)] if conditional else None,
                          title=f"denoising: {args.sampler}, {args.sample_steps} of {args.T} steps")

# %% The scores, and one line per target of the default run (docs/mnist.md)
if not args.no_score:
    scorer = td.scorer.DigitScorer.load(data_dir=args.data_dir)
    metrics["scorer"] = score = scorer.score(samples, y if conditional else None, seed=args.seed)
    if score.get("accuracy") is not None:
        R.target(f"{100 * score['accuracy']:.1f}% read as the digit asked for", ">= 95%", score["accuracy"] >= 0.95)
    ratio = score["fid"] / score["fid_floor"]
    R.target(f"Frechet distance {score['fid']:.1f} = {ratio:.2f} x the real-vs-real floor {score['fid_floor']:.1f}",
             "<= 4 x floor", ratio <= 4)
if "bpd" in metrics:
    print(f"bound: {metrics['bpd']['total']:.3f} +- {metrics['bpd']['stderr']:.3f} bits/dim")
R.target(f"{metrics['sample_seconds']:.0f} s for {args.n_samples} digits", "<= 60 s", metrics["sample_seconds"] <= 60)
run.finish(metrics)

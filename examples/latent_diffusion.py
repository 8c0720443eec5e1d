"""Latent diffusion on MNIST: a class-conditional diffusion model in a frozen VAE's latent space.

The third MNIST lesson (docs/vae-and-latent.md), after mnist.py (diffusion on pixels) and vae.py
(a one-step latent model). Rombach et al. (2022) put the two together: an autoencoder compresses
the images once, and the diffusion model works on the small latent grid. This lesson freezes a
VAE with a 4 x 7 x 7 latent (trained first with vae.py's recipe when --vae is missing), trains the
library's UNet with classifier-free guidance on its scaled codes, samples 500 latents with DDIM,
decodes them once and scores the digits, beside the same decoder fed z ~ N(0, I); then times one
training step and one guided chain against mnist.py's default pixel-space UNet.

Run it (5 minutes of training on 2 cores, 3 more for a missing VAE, then a minute of sampling,
scoring and timing), or open it as a notebook (`# %%` cells):

    python examples/latent_diffusion.py
    python examples/latent_diffusion.py --resume --guidance 4     # re-sample a finished run

MNIST is read as in examples/mnist.py. Everything lands in --out (default out/latent_diffusion).
"""
# %%
import os
import time

import numpy as np

import tinydiff as td

# %% Settings: each one is a flag of the script; in a notebook, edit them here
run, R = td.Run("latent_diffusion", __doc__, checkpoint_every=500), td.runs
td.recipes.mnist_flags(run)                                           # --data-dir, --no-download, --train-limit
run.run_flag("vae", None, "the VAE to freeze (vae.npz; default OUT/vae/vae.npz, trained first if missing)", type=str)
run.flag("vae_steps", 1500, "steps of vae.py's recipe (latent 4x7x7) for a missing VAE", type=R.positive_int)
run.flag("vae_channels", "16,64", "its widths", type=td.recipes.parse_channels)
run.run_flag("steps", 5000, "training steps", type=R.positive_int)
run.run_flag("batch", 64, "batch size", type=R.positive_int)
run.run_flag("lr", 2e-3, "peak learning rate (AdamW), cosine-decayed to 0", type=R.positive_float)
run.run_flag("ema", 0.999, "EMA decay of the sampling weights (with warm-up)", type=R.decay_rate)
run.run_flag("label_dropout", 0.1, "probability of training on the null label (for guidance)", type=R.probability)
run.run_flag("seed", 0, "seed of every random draw", type=R.nonnegative_int)
run.run_flag("width", 32, "UNet base channels (32 samples 5x faster than the pixel UNet)", type=R.positive_int)
run.run_flag("T", 1000, "number of diffusion steps", type=R.positive_int)
run.run_flag("schedule", "cosine", "cosine (Nichol & Dhariwal eq. 17) or DDPM's linear", choices=["cosine", "linear"])
run.run_flag("prediction", "v", "what the UNet predicts: v = sqrt(ab) eps - sqrt(1 - ab) z0 (Salimans & Ho 2022), "
                                "bounded at the noisiest step, or eps (Ho et al. 2020)", choices=["v", "eps"])
run.run_flag("weighting", "min_snr", "MSE weight per t: min_snr (Hang et al. 2023)", choices=["min_snr", "none"])
run.eval_flag("sampler", "ddim", "DDIM (eta 0) or ancestral DDPM", choices=["ddim", "ddpm"])
run.eval_flag("sample_steps", 50, "sampling steps (a respaced chain of the T)", type=R.positive_int)
run.eval_flag("guidance", 2.0, "classifier-free guidance scale w (0 = none)", type=R.nonnegative_float)
run.eval_flag("n_samples", 500, "digits to draw (an equal number per class)", type=R.positive_int)
run.eval_flag("no_score", False, "skip the classifier scores")
run.eval_flag("timing_rounds", 2, "rounds of the latent-vs-pixel timing (0: skip it)", type=R.nonnegative_int)
run.eval_flag("timing_batch", 100, "digits per timed training step and sampling chain", type=R.positive_int)


def check(args):
    if args.n_samples % 10:
        raise ValueError(f"--n-samples must be a multiple of 10 (an equal number of each digit), got {args.n_samples}")
    args.mults = R.unet_shape_flags(args.width, "1", image_size=7)    # one level: 7 x 7 does not halve
    R.check_chain(td.recipes.mnist_betas(args.T, args.schedule), args)
    args.vae = args.vae or os.path.join(args.out, "vae", "vae.npz")


args = run.parse(check=check)

# %% [markdown]
# ## The frozen VAE, and the scale of its codes: s = 1 / std of posterior samples z ~ q(z | x)
# over all values of all training digits (`td.latent.LatentSpace`), the unit scale the schedule assumes.

# %%
x_train, labels = td.recipes.mnist_digits(args)                        # [N, 1, 28, 28] in [-1, 1], [N]
vae_seconds = 0.0
if not os.path.exists(args.vae):
    print(f"no VAE at {args.vae}: training vae.py's recipe there, latent 4x7x7, {args.vae_steps} steps")
    vae_seconds = td.recipes.train_vae(args.vae, x_train, dict(latent=(4, 7, 7), channels=args.vae_channels,
                                                                steps=args.vae_steps, seed=args.seed))
vae = td.recipes.load_vae(args.vae)
if len(vae.latent_shape) != 3:
    raise R.RunError(f"--vae {args.vae}: latent diffusion needs a spatial latent (k x 7 x 7), this VAE has latent "
                     f"shape {vae.latent_shape}; train one with --latent 4x7x7")
space = td.latent.LatentSpace.fit(vae, x_train, np.random.default_rng(args.seed + 2))
data = td.latent.LatentBatches(space, *space.posterior(x_train), labels)   # fresh s * z ~ q(z | x) per visit
print(f"VAE {args.vae}: latent {' x '.join(map(str, space.shape))}, s = 1 / std(z) = {space.scale_factor:.4f}")

# %% [markdown]
# ## The diffusion and the UNet on the 4 x 7 x 7 grid, trained as in pixel space
# L_simple, fixed variance (a bound in bits/dim means nothing for latents); one step is
# `td.Trainer.train_step` (DDPM Algorithm 1) on `data`: fresh codes s * z, z ~ q(z | x), at every
# visit. A resumed run refuses a VAE whose codes changed (another scale factor).

# %%
diffusion = td.make_diffusion("eps", td.recipes.mnist_betas(args.T, args.schedule), model_mean_type=args.prediction,
                              mse_weighting=args.weighting)
model = td.models.UNet(in_channels=space.shape[0], base_channels=args.width, channel_mults=args.mults,
                       num_classes=10, rng=np.random.default_rng(args.seed))
run.start(model)
if run.saved is not None and not np.isclose(run.config.get("scale_factor", np.nan), space.scale_factor, rtol=1e-6):
    raise R.RunError(f"--resume: {run.checkpoint} was trained on codes with scale factor {run.config['scale_factor']}, "
                     f"but {args.vae} now gives {space.scale_factor:.6g}: the frozen VAE changed; pass another --out")
trainer = td.Trainer(model, td.DiffusionLoss(diffusion, label_dropout=args.label_dropout), data, batch_size=args.batch,
                     lr=args.lr, warmup_steps=min(100, args.steps // 10), lr_decay_steps=args.steps, ema_decay=args.ema,
                     ema_warmup=True, seed=args.seed, log_every=100, checkpoint_path=run.checkpoint,
                     checkpoint_every=args.checkpoint_every, config={**run.config, "scale_factor": space.scale_factor})
train_seconds = run.train(trainer)
trainer.ema.copy_to(model)                                             # sample with the averaged weights

# %% [markdown]
# ## Sampling: guided DDIM on latents, decoded once; and the VAE's own prior for contrast

# %%
rng, y = np.random.default_rng(args.seed + 1), np.arange(args.n_samples) % 10      # sampling's own stream
chain = dict(sampler=args.sampler, steps=args.sample_steps)
with td.no_grad():
    start = time.perf_counter()
    codes = td.sample(diffusion, model, (args.n_samples, *space.shape), rng, model_kwargs={"y": y},
                      guidance=args.guidance, **chain)
    samples = td.data.from_model_space(space.decode(codes))[:, 0]      # [N, 28, 28] in [0, 1]
    sample_seconds = time.perf_counter() - start
    noise = rng.standard_normal((10, *space.shape), dtype=np.float32)             # one noise, four guidance scales
    strip = [td.data.from_model_space(space.decode(td.sample(diffusion, model, noise.shape, np.random.default_rng(0),
             noise=noise, model_kwargs={"y": np.arange(10)}, guidance=w, **chain)))[:, 0] for w in (0, 1, 3, 5)]
    prior = td.data.from_model_space(vae.generate(rng.standard_normal((args.n_samples, *space.shape),
                                                                      dtype=np.float32)))[:, 0]

# %% [markdown]
# ## Latent against pixel space: seconds per 100 digits
# One training step (forward + backward) and one guided chain (same sampler, steps, guidance,
# batch) of this UNet + the decoder, and of mnist.py's default pixel UNet (untrained: the time
# does not depend on the weights). They alternate, so both see the same machine load; the
# minimum over rounds is the least disturbed.

# %%
pixel_diffusion, pixel = td.recipes.mnist_model()
batch, y_t = args.timing_batch, np.arange(args.timing_batch) % 10
nets = {"latent": (diffusion, model, (batch, *space.shape), space.decode),
        "pixel": (pixel_diffusion, pixel, (batch, 1, 28, 28), np.asarray)}
times = {(what, kind): [] for what in ("train", "sample") for kind in nets}
for r in range(args.timing_rounds):
    for kind, (d, net, shape, decode) in nets.items():
        x, start = np.random.default_rng(0).standard_normal(shape).astype(np.float32), time.perf_counter()
        td.DiffusionLoss(d)(net, (x, {"y": y_t}), np.random.default_rng(1))[0].backward()
        net.zero_grad()
        times["train", kind].append(time.perf_counter() - start)
        start = time.perf_counter()
        with td.no_grad():
            decode(td.sample(d, net, shape, np.random.default_rng(2), model_kwargs={"y": y_t}, guidance=args.guidance,
                             **chain))
        times["sample", kind].append(time.perf_counter() - start)
    print(f"  timing round {r + 1}/{args.timing_rounds}: sampling {batch} digits, latent "
          f"{times['sample', 'latent'][-1]:.1f} s, pixel {times['sample', 'pixel'][-1]:.1f} s", flush=True)
per100 = {key: round(100 * min(v) / batch, 3) for key, v in times.items() if v}      # seconds per 100 digits

# %% [markdown]
# ## Pictures: the grid (row k = digit k), the guidance strip, one decoder with two priors

# %%
run.save("samples.npy", samples.astype(np.float32))
run.save("labels.npy", y.astype(np.int64))
per_digit = min(10, args.n_samples // 10)
order = np.argsort(y, kind="stable").reshape(10, -1)[:, :per_digit].ravel()
td.images.save_image_grid(samples[order], run.path("grid.png"), nrow=per_digit)
td.images.plot_image_rows(strip, run.path("guidance.png"), row_labels=[f"w = {w:g}" for w in (0, 1, 3, 5)],
                          col_labels=[str(k) for k in range(10)], title="the same latent noise at four guidance scales")
td.images.plot_image_rows([prior[:10], prior[10:20], samples[order][::per_digit], samples[order][1::per_digit]],
                          run.path("prior_vs_diffusion.png"), row_labels=["z ~ N(0, I)", "", "z ~ diffusion", ""],
                          title="one decoder, two priors: the VAE's own N(0, I) and the latent diffusion model")

# %% [markdown]
# ## The scores and the numbers, each beside its target

# %%
metrics = {"vae": args.vae, "latent_shape": list(space.shape), "scale_factor": space.scale_factor,
           "scale_rule": "s = 1 / std of posterior samples z ~ q(z|x), all values of all training digits",
           "steps": trainer.step, "batch": args.batch, "parameters": model.num_parameters(),
           "train_seconds": round(train_seconds, 1), "vae_train_seconds": round(vae_seconds, 1),
           "final_loss": float(np.mean(trainer.losses[-100:])), "sampler": args.sampler,
           "sample_steps": args.sample_steps, "guidance": args.guidance, "sample_seconds": round(sample_seconds, 1)}
if vae_seconds:
    metrics["total_train_seconds"] = round(train_seconds + vae_seconds, 1)
    R.target(f"training: VAE {vae_seconds:.0f} s + diffusion {train_seconds:.0f} s", "<= 600 s",
             metrics["total_train_seconds"] <= 600)
if not args.no_score:
    scorer = td.scorer.DigitScorer.load(data_dir=args.data_dir)
    metrics["scorer"] = sc = scorer.score(samples, y, seed=args.seed)
    metrics["scorer_vae_prior"] = p = dict(scorer.score(prior, None, seed=args.seed),
                                           on="the same decoder fed z ~ N(0, I), the VAE's own prior")
    R.target(f"guided samples (w = {args.guidance:g}) read as the digit asked for: {sc['accuracy']:.1%}, Frechet "
             f"distance {sc['fid']:.1f} (floor {sc['fid_floor']:.1f})", ">= 90%", sc["accuracy"] >= 0.9)
    print(f"the same decoder fed z ~ N(0, I): {p['confident_fraction']:.1%} confident, Frechet distance {p['fid']:.1f}")
if args.timing_rounds:
    metrics["timing"] = t = {f"{w}_seconds_per_100": {k: per100[w, k] for k in nets} for w in ("train", "sample")}
    t["sampling_speedup"] = round(per100["sample", "pixel"] / per100["sample", "latent"], 2)
    t["training_speedup"] = round(per100["train", "pixel"] / per100["train", "latent"], 2)
    t["setup"] = (f"{args.sampler}, {args.sample_steps} steps, guidance {args.guidance:g} (two network passes per "
                  f"step), batch {batch}, latent time includes decoding; one training step = forward + backward at "
                  f"batch {batch}; minimum of {args.timing_rounds} interleaved rounds")
    t["pixel_model"] = f"examples/mnist.py's default UNet ({pixel.num_parameters():,} parameters, 1 x 28 x 28)"
    t["latent_model"] = f"this UNet ({model.num_parameters():,} parameters, {space.shape}) + the VAE decoder"
    R.target(f"sampling s / 100 digits: latent {per100['sample', 'latent']:.2f}, pixel {per100['sample', 'pixel']:.2f}"
             f": {t['sampling_speedup']:.1f}x faster; a training step {t['training_speedup']:.1f}x", ">= 5x",
             t["sampling_speedup"] >= 5)
run.finish(metrics)

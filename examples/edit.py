"""Editing real digits with a trained MNIST model: SDEdit, inpainting and DDIM inversion.

A model trained only to generate can also edit, without retraining, because its reverse chain
can be entered part-way (td.editing; docs/editing.md). On --n real test digits: SDEdit (Meng et
al. 2022), inpainting (with RePaint's resampling in one run) and DDIM inversion, each measured.
Run it with a finished examples/mnist.py run, or let it train mnist.py's default model first
(2,000 steps, about 5 minutes on 2 idle cores, in --out; --resume continues a killed one), then
about 2 minutes of editing. Or open it as a notebook (`# %%` cells):

    python examples/edit.py --checkpoint out/mnist/checkpoint.npz
    python examples/edit.py                                    # trains its model in out/edit first

Outputs in --out (default out/edit): sdedit.png, inpaint.png, inversion.png, metrics.json.
"""
# %%
import time

import numpy as np

import tinydiff as td

# %% Settings: each one is a flag of the script; in a notebook, edit them here
run, R = td.Run("edit", __doc__, checkpoint_every=250), td.runs
td.recipes.mnist_flags(run)                                           # --data-dir, --no-download, --train-limit
run.flag("checkpoint", None, "a finished mnist.py run's checkpoint.npz (default: train one in OUT)", type=str)
run.run_flag("steps", 2000, "without --checkpoint: training steps of mnist.py's default model", type=R.positive_int)
run.run_flag("seed", 0, "seed of the model, the digits, the labels and the noise", type=R.nonnegative_int)
run.eval_flag("n", 100, "test digits to edit", type=R.positive_int)
run.eval_flag("t0", "0.2,0.3,0.4,0.5,0.6,0.7,0.8", "SDEdit strengths t0 (the fraction of the chain noised)")
run.eval_flag("sample_steps", 50, "steps of a full chain (SDEdit runs ceil(steps t0) of them)", type=R.positive_int)
run.eval_flag("guidance", 2.0, "classifier-free guidance w toward the new label", type=R.nonnegative_float)
run.eval_flag("resample", 5, "RePaint resampling passes r of the extra left-half run (1: skip it)", type=R.positive_int)
run.eval_flag("jump", 5, "RePaint jump length (chain steps)", type=R.positive_int)
run.eval_flag("no_score", False, "skip the digit scorer (pixel distances only)")


def check(args):
    try:
        args.t0 = tuple(float(v) for v in str(args.t0).split(","))
    except ValueError:
        raise ValueError(f"--t0: expected numbers such as 0.3,0.5,0.7, got {args.t0!r}") from None
    if not all(0 < v <= 1 for v in args.t0):
        raise ValueError(f"--t0: SDEdit strengths lie in (0, 1] (the fraction of the chain noised), got {args.t0}")
    if args.jump >= args.sample_steps:
        raise ValueError(f"--jump {args.jump}: RePaint goes back up --jump steps, so it must be below "
                         f"--sample-steps {args.sample_steps}")


args = run.parse(check=check)

# %% [markdown]
# ## The model: a finished mnist.py run, or mnist.py's default run trained here
# Either way the sampling weights are the averaged (EMA) ones. The training is DDPM Algorithm 1
# with labels dropped to null 10% of the time (`td.recipes.mnist_trainer`, `Trainer.train_step`).

# %%
if args.checkpoint:
    diffusion, model, meta = td.recipes.load_mnist_run(args.checkpoint)
    if meta["config"].get("unconditional"):
        raise R.RunError(f"--checkpoint {args.checkpoint}: an unconditional model cannot edit toward a label")
    run.start()
else:
    diffusion, model = td.recipes.mnist_model(args)                    # mnist.py's default model, untrained
    run.start(model)
    trainer = td.recipes.mnist_trainer(diffusion, model, *td.recipes.mnist_digits(args), args,   # digits, labels
                                       checkpoint_path=run.checkpoint, checkpoint_every=args.checkpoint_every,
                                       config=run.config)
    run.train(trainer)
    trainer.ema.copy_to(model)                                         # sample with the averaged weights
model_step = meta["step"] if args.checkpoint else trainer.step

# %% The digits to edit, each with another label to edit toward, and how an edit is measured
rng = np.random.default_rng(args.seed)
images, test_labels = td.recipes.mnist_digits(args, "test")
pick = rng.permutation(len(images))[:args.n]
x0, y = images[pick], test_labels[pick].astype(np.int64)              # [n, 1, 28, 28] in [-1, 1], [n]
y_new = (y + rng.integers(1, 10, size=len(y))) % 10                   # another digit for each
original = td.data.from_model_space(x0)                               # [n, 1, 28, 28] in [0, 1]
scorer = None if args.no_score else td.scorer.DigitScorer.load(data_dir=args.data_dir)


def read_as(images_01, wanted):
    """The fraction of images [n, 1, 28, 28] in [0, 1] the scorer reads as ``wanted`` [n]."""
    return None if scorer is None else float(np.mean(scorer.predict(images_01[:, 0]) == wanted))


def distance(a, b, where=None):
    """Mean |a - b| per image over ``where`` (default: every pixel); images in [0, 1]. [n]."""
    w = np.broadcast_to(True if where is None else where, np.shape(a)).reshape(len(a), -1)
    return (np.abs(a - b).reshape(len(a), -1) * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1)


metrics = {"checkpoint": args.checkpoint or run.checkpoint, "model_step": model_step, "n": args.n,
           "sample_steps": args.sample_steps, "guidance": args.guidance, "seed": args.seed,
           "pixel_distance": "mean |difference| per pixel, intensities in [0, 1]",
           "distance_between_two_random_test_digits": float(distance(original, np.roll(original, 1, axis=0)).mean()),
           "originals_read_as_their_label": read_as(original, y)}
chain = dict(steps=args.sample_steps, clip_denoised=True)
show = np.arange(min(10, args.n))                                     # the pictures' columns

# %% [markdown]
# ## SDEdit: noise to t0 with q(x_t0 | x_0), then denoise under the new label

# %%
metrics["sdedit"], sd_rows = [], []
for t0 in args.t0:
    start = time.perf_counter()
    with td.no_grad():
        edited = td.data.from_model_space(td.editing.sdedit(diffusion, model, x0, t0, y_new, np.random.default_rng(
            args.seed + 1), guidance=args.guidance, progress=td.Progress(0, f"SDEdit t0 = {t0:g}"), **chain))
    sd_rows.append(edited[show, 0])
    metrics["sdedit"].append({"t0": t0, "timestep": td.editing.sdedit_timestep(diffusion, t0),
                              "read_as_new_label": read_as(edited, y_new), "read_as_original_label": read_as(edited, y),
                              "pixel_distance": float(distance(edited, original).mean()),
                              "seconds": round(time.perf_counter() - start, 1)})

# %% [markdown]
# ## Inpainting: after every reverse step, the known pixels are the digit noised to that step
# x_{t-1} = m * x_known + (1 - m) * x_unknown, x_known ~ q(x_{t-1} | x_0) (RePaint eq. 6-8).

# %%
masks = {"left half": np.broadcast_to(np.arange(28) >= 14, x0.shape),            # True: the pixel is KNOWN
         "top half": np.broadcast_to(np.arange(28)[:, None] >= 14, x0.shape),
         "random 50%": np.random.default_rng(args.seed + 2).random(x0.shape) < 0.5}
jobs = [(name, 1, None) for name in masks] + [("left half", args.resample, None)] * (args.resample > 1)
metrics["inpaint"], ip_rows, ip_names = [], [original[show, 0]], ["original"]
for name, r, labels_ in jobs + [("left half", 1, y)]:                 # the last: told which digit it is
    known, start = masks[name], time.perf_counter()
    row = f"{name}: RePaint r = {r}" if r > 1 else f"{name}: its label" if labels_ is not None else "filled in"
    with td.no_grad():
        filled = td.editing.inpaint(diffusion, model, x0, known, labels_, np.random.default_rng(args.seed + 3),
                                    resample=r, jump=args.jump, progress=td.Progress(0, f"inpainting, {row}"), **chain)
    f01 = td.data.from_model_space(filled)
    if row == "filled in":                                            # the input first, hidden pixels grey
        ip_rows, ip_names = ip_rows + [np.where(known, original, 0.5)[show, 0]], ip_names + [f"{name} hidden"]
    ip_rows, ip_names = ip_rows + [f01[show, 0]], ip_names + [row]
    metrics["inpaint"].append({
        "hidden": name, "label": "original" if labels_ is not None else "null", "resample": r,
        "jump": args.jump if r > 1 else None, "known_fraction": float(np.mean(known)),
        "read_as_original_label": read_as(f01, y), "masked_input_read_as_original_label": read_as(known * original, y),
        "hidden_pixel_error": float(distance(f01, original, ~known).mean()),
        "known_pixels_unchanged": bool(np.array_equal(filled[known], x0[known])),
        "seconds": round(time.perf_counter() - start, 1)})

# %% [markdown]
# ## DDIM inversion: encode under the digit's own label, decode under its own and a new one
# Both ways clip the x_0 estimates to [-1, 1] as the sampler does (td.editing.ddim_invert: why).

# %%
start = time.perf_counter()
with td.no_grad():
    latent = td.editing.ddim_invert(diffusion, model, x0, y, progress=td.Progress(0, "DDIM inversion"), **chain)
    back, other = (td.data.from_model_space(td.ddim_sample_loop(
        diffusion, model, x0.shape, np.random.default_rng(0), model_kwargs={"y": labels_}, noise=latent, guidance=w,
        dtype=np.float32, progress=td.Progress(0, f"decoding, {what} label"), **chain))
        for labels_, w, what in ((y, None, "own"), (y_new, args.guidance, "new")))
metrics["inversion"] = {
    "latent_mean": float(latent.mean()), "latent_std": float(latent.std()),
    "reconstruction_pixel_error": float(distance(back, original).mean()),
    "reconstruction_max_pixel_error": float(np.abs(back - original).max()),
    "reconstruction_read_as_original_label": read_as(back, y),
    "new_label": {"read_as_new_label": read_as(other, y_new),
                  "pixel_distance": float(distance(other, original).mean())},
    "seconds": round(time.perf_counter() - start, 1)}

# %% The pictures: one column per digit; "a → b" asks digit a to become b
arrows = [f"{a} → {b}" for a, b in zip(y[show], y_new[show])]
td.images.plot_image_rows([original[show, 0]] + sd_rows, run.path("sdedit.png"), col_labels=arrows,
                          row_labels=["original"] + [f"t0 = {t0:g}" for t0 in args.t0],
                          title=f"SDEdit: noise to t0, denoise as the new digit (w = {args.guidance:g})")
td.images.plot_image_rows(ip_rows, run.path("inpaint.png"), row_labels=ip_names, col_labels=[str(v) for v in y[show]],
                          title="inpainting (grey: hidden), with the null label unless 'its label'")
td.images.plot_image_rows([original[show, 0], np.clip((latent[show, 0] / 3.0 + 1.0) / 2.0, 0, 1),   # -3..3 sigma
                           back[show, 0], other[show, 0]], run.path("inversion.png"), col_labels=arrows,
                          row_labels=["original", "inverted noise", "decoded, own", "decoded, new"],
                          title="DDIM inversion: encode, then decode under each label")

# %% The numbers: the tables of docs/editing.md, and one line per target
pct = lambda v: "     -" if v is None else f"{v:6.1%}"                  # noqa: E731
print(f"SDEdit  {'t0':>5} {'new label':>10} {'original':>9} {'distance':>9}   (two random test digits are "
      f"{metrics['distance_between_two_random_test_digits']:.3f} apart)")
for r in metrics["sdedit"]:
    print(f"        {r['t0']:5.2f} {pct(r['read_as_new_label']):>10} {pct(r['read_as_original_label']):>9} "
          f"{r['pixel_distance']:9.3f}")
print(f"inpaint {'hidden':>12} {'label':>8} {'r':>2} {'original':>9} {'masked in':>9} {'hidden err':>10}")
for r in metrics["inpaint"]:
    print(f"        {r['hidden']:>12} {r['label']:>8} {r['resample']:2d} {pct(r['read_as_original_label']):>9} "
          f"{pct(r['masked_input_read_as_original_label']):>9} {r['hidden_pixel_error']:10.3f}")
inv, new = metrics["inversion"], metrics["inversion"]["new_label"]
print(f"inversion: reconstruction error {inv['reconstruction_pixel_error']:.4f} per pixel (max "
      f"{inv['reconstruction_max_pixel_error']:.3f}); decoded under a new label: "
      f"{pct(new['read_as_new_label']).strip()} read as it, {new['pixel_distance']:.3f} away")
if scorer is not None:
    best = max(metrics["sdedit"], key=lambda r: r["read_as_new_label"])
    R.target(f"SDEdit: {best['read_as_new_label']:.1%} read as the new label at t0 = {best['t0']:g}",
             ">= 80% at some t0", best["read_as_new_label"] >= 0.8)
    for r in [r for r in metrics["inpaint"] if r["hidden"] == "left half" and r["resample"] == 1]:
        R.target(f"the left half inpainted, {r['label']} label: {r['read_as_original_label']:.1%} read as the "
                 "original digit", ">= 85%", r["read_as_original_label"] >= 0.85)
run.finish(metrics)

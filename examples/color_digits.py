"""Two attributes: coloured digits, guidance on each attribute, and pairs never seen in training.

Seed 000 asks for "digits with a respective colour" (docs/two-attributes.md). This lesson

* trains a UNet conditioned on (digit, colour) on MNIST digits drawn in 6 colours
  (td.data.ColoredMNIST), each label dropped to its own "null" independently, so one network
  predicts eps(d, c), eps(d, null), eps(null, c) and eps(null, null). It predicts
  v = sqrt(ab) eps - sqrt(1 - ab) x_0 (Salimans & Ho 2022), from which eps follows, and the
  time-and-label embedding scales and shifts each block's GroupNorm (AdaGN, Dhariwal & Nichol
  2021): docs/two-attributes.md measures both choices;
* holds 10 of the 60 digit-colour pairs out of training (digit d is never shown in colour
  d % 6, the diagonal of the grid) and asks for them anyway;
* samples every pair from the same noise with two forms of classifier-free guidance:

      joint      eps(null, null) + (1 + w) (eps(d, c) - eps(null, null))
      composed   eps(null, null) + (1 + w_d) (eps(d, null) - eps(null, null))
                                 + (1 + w_c) (eps(null, c) - eps(null, null))   (Liu et al. 2022)

* and reads each sample twice: its digit (the MNIST scorer on the brightest channel) and its
  colour (the palette colour nearest to the mean colour of its stroke pixels).

Run it (3,000 steps: about 12 minutes of training on 2 idle cores), or open it as a notebook:

    python examples/color_digits.py
    python examples/color_digits.py --resume --guidance 4      # re-sample the run (new file names)

Outputs in --out (default out/color_digits): grid_joint.png and grid_composed.png (row = digit,
column = colour, held-out pairs framed), samples.npy, labels.npy, metrics.json, checkpoint.npz.
"""
# %%
import time

import numpy as np

import tinydiff as td
from tinydiff.data import COLOUR_NAMES, PALETTE

# %% [markdown]
# ## Settings
# %%
run, R = td.Run("color_digits", __doc__, checkpoint_every=250), td.runs
td.recipes.mnist_flags(run)
run.run_flag("steps", 3000, "training steps (3,000 of batch 64: about 12 minutes on 2 cores)", type=R.positive_int)
run.run_flag("batch", 64, "batch size", type=R.positive_int)
run.run_flag("lr", 2e-3, "peak learning rate (AdamW), cosine-decayed to 0", type=R.positive_float)
run.run_flag("ema", 0.999, "EMA decay of the sampling weights", type=R.decay_rate)
run.run_flag("label_dropout", 0.2, "probability of dropping each label to its null, independently",
             type=R.probability)
run.run_flag("held_out", "diagonal", "pairs never shown in training: diagonal = colour d %% 6 for digit d",
             choices=["diagonal", "none"])
run.run_flag("seed", 0, "seed of every random draw", type=R.nonnegative_int)
run.run_flag("width", 16, "UNet base channels", type=R.positive_int)
run.run_flag("mults", "1,2,2", "UNet channel multiplier per level, comma-separated")
run.run_flag("conditioning", "scale_shift", "the embedding scales and shifts each GroupNorm (AdaGN), or "
                                            "shifts only", choices=["scale_shift", "shift"])
run.run_flag("T", 1000, "number of diffusion steps", type=R.positive_int)
run.run_flag("schedule", "cosine", "noise schedule", choices=["cosine", "linear"])
run.run_flag("objective", "v", "what the UNet predicts: v (Salimans & Ho 2022) or eps", choices=["v", "eps"])
run.run_flag("weighting", "min_snr", "per-timestep weight of the MSE (min_snr: Hang et al. 2023)",
             choices=["min_snr", "none"])
run.eval_flag("sample_steps", 50, "DDIM steps (eta 0, x_0 clipped)", type=R.positive_int)
run.eval_flag("guidance", 2.0, "joint guidance scale w (0 = the conditional model)", type=R.nonnegative_float)
run.eval_flag("guidance_digit", 2.0, "composed guidance: the digit's scale w_d", type=R.nonnegative_float)
run.eval_flag("guidance_colour", 2.0, "composed guidance: the colour's scale w_c", type=R.nonnegative_float)
run.eval_flag("per_pair", 5, "samples per digit-colour pair and guidance form (60 pairs)", type=R.positive_int)
run.eval_flag("no_score", False, "skip the digit scorer (colour accuracy only)")


def check(args):
    args.mults = R.unet_shape_flags(args.width, args.mults)       # "1,2,2" -> (1, 2, 2), or a ValueError
    R.check_chain(td.recipes.mnist_betas(args.T, args.schedule), args)


args = run.parse(check=check)

# %% [markdown]
# ## Data, diffusion and a UNet with two labels
# x = colour * intensity on black, [3, 28, 28]; labels y = [digit, colour], 10 and 6 classes
# plus a null for each.
# %%
images, labels = td.recipes.mnist_digits(args, model_space=False)
held_out = td.data.HELD_OUT if args.held_out == "diagonal" else ()
data = td.data.ColoredMNIST(images, labels, held_out=held_out)
diffusion = td.GaussianDiffusion(td.recipes.mnist_betas(args.T, args.schedule), model_mean_type=args.objective,
                                 model_var_type="fixed_large", loss_type="mse", mse_weighting=args.weighting)
model = td.models.UNet(in_channels=3, base_channels=args.width, channel_mults=args.mults,
                       num_classes=(10, len(PALETTE)), scale_shift=args.conditioning == "scale_shift",
                       rng=np.random.default_rng(args.seed))
print(f"{data}; held out: {', '.join(f'{d} {COLOUR_NAMES[c]}' for d, c in held_out) or 'nothing'}; "
      f"UNet: {model.num_parameters():,} parameters")
run.start(model)

# %% [markdown]
# ## Training: Algorithm 1 with each label dropped to its null (p = --label-dropout)
# One step (`td.Trainer.train_step`): a batch, t and eps, the v-loss, backward, AdamW, EMA.
# %%
trainer = td.Trainer(model, td.DiffusionLoss(diffusion, label_dropout=args.label_dropout), data,
                     batch_size=args.batch, lr=args.lr, warmup_steps=min(100, args.steps // 10),
                     lr_decay_steps=args.steps, ema_decay=args.ema, ema_warmup=True, seed=args.seed, log_every=50,
                     checkpoint_path=run.checkpoint, checkpoint_every=args.checkpoint_every, config=run.config)
train_seconds = run.train(trainer)

# %% [markdown]
# ## Every pair, both forms of guidance, the same noise
# %%
pairs = np.array([(d, c) for d in range(10) for c in range(len(PALETTE))], dtype=np.int64)
y = np.repeat(pairs, args.per_pair, axis=0)                                    # [N, 2], digit-major
held = td.data.held_out_mask(held_out)[y[:, 0], y[:, 1]]                      # [N] bool
noise = np.random.default_rng(args.seed + 1).standard_normal((len(y), 3, 28, 28), dtype=np.float32)
forms = {"joint": args.guidance, "composed": (args.guidance_digit, args.guidance_colour)}
scorer = None if args.no_score else td.scorer.DigitScorer.load(data_dir=args.data_dir)


def accuracies(digit_ok, colour_ok, select) -> dict:
    """Fractions right among the selected samples (digit_ok None without the scorer)."""
    out = {"n": int(select.sum()), "colour_accuracy": float(colour_ok[select].mean())}
    if digit_ok is not None:
        out["digit_accuracy"] = float(digit_ok[select].mean())
        out["both_right"] = float((digit_ok & colour_ok)[select].mean())
    return out


metrics = {"steps": trainer.step, "planned_steps": int(trainer.config["steps_resolved"]),
           "train_seconds": round(train_seconds, 1), "final_loss": float(np.mean(trainer.losses[-100:])),
           "palette": list(COLOUR_NAMES), "held_out": [list(p) for p in held_out],
           "sample_steps": args.sample_steps, "per_pair": args.per_pair,
           "guidance_convention": "w of Ho & Salimans (0 = the conditional model); Liu et al.'s weight is 1 + w"}
samples = {}
with trainer.ema.average_parameters(model), td.no_grad():
    for form, scale in forms.items():
        start = time.perf_counter()
        x = td.ddim_sample_loop(diffusion, model, noise.shape, np.random.default_rng(0), steps=args.sample_steps,
                                model_kwargs={"y": y}, guidance=scale, clip_denoised=True, noise=noise,
                                progress=td.Progress(0, f"sampling {len(y)} digits, {form} guidance"))
        seconds = time.perf_counter() - start
        samples[form] = rgb = td.data.from_model_space(x)                     # [N, 3, 28, 28] in [0, 1]
        colour_ok = td.data.nearest_colour(rgb) == y[:, 1]
        digit_ok = None if scorer is None else scorer.predict(td.data.to_grey(rgb)) == y[:, 0]
        metrics[form] = {"scale": scale, "liu_weight": (1 + scale) if form == "joint" else [1 + w for w in scale],
                         "sample_seconds": round(seconds, 1), "seen": accuracies(digit_ok, colour_ok, ~held),
                         "held_out": accuracies(digit_ok, colour_ok, held),
                         "held_out_pairs": {f"{d} {COLOUR_NAMES[c]}": accuracies(
                             digit_ok, colour_ok, (y[:, 0] == d) & (y[:, 1] == c)) for d, c in held_out}}

# %% [markdown]
# ## Pictures: one sample per pair, rows = digits, columns = colours
# %%
first = np.arange(0, len(y), args.per_pair)                                   # one sample per pair
for form, rgb in samples.items():
    scale = forms[form]
    how = f"joint, w = {scale:g}" if form == "joint" else f"composed, w_d = {scale[0]:g}, w_c = {scale[1]:g}"
    td.images.plot_image_rows(list(rgb[first].reshape(10, len(PALETTE), 3, 28, 28)), run.path(f"grid_{form}.png"),
                              row_labels=[str(d) for d in range(10)], col_labels=list(COLOUR_NAMES),
                              marked=list(held_out), title=f"{how}; framed: pairs never seen in training")
run.save("samples.npy", np.stack([samples[form] for form in forms]).astype(np.float32))   # [2, N, 3, 28, 28]
run.save("labels.npy", y)

# %% The table: digit and colour read as asked, seen and held-out pairs; then the targets
print(f"{'':10} {'pairs':9} {'digit':>7} {'colour':>7} {'both':>7}   n")
for form in forms:
    for part in ("seen", "held_out"):
        r = metrics[form][part]
        digit, both = (f"{r[k]:7.1%}" if k in r else "      -" for k in ("digit_accuracy", "both_right"))
        print(f"{form:10} {part:9} {digit} {r['colour_accuracy']:7.1%} {both}   {r['n']}")
for form in forms:
    seen = metrics[form]["seen"]
    if "digit_accuracy" in seen:
        R.target(f"{form}: digit accuracy on seen pairs {seen['digit_accuracy']:.1%}", ">= 90%",
                 seen["digit_accuracy"] >= 0.9)
    R.target(f"{form}: colour accuracy on seen pairs {seen['colour_accuracy']:.1%}", ">= 95%",
             seen["colour_accuracy"] >= 0.95)
run.finish(metrics)

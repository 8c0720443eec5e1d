"""Two attributes: coloured digits, guidance on each attribute, and pairs never seen in training.

Seed 000 asks for "digits with a respective colour". This example

* trains a UNet conditioned on (digit, colour) on MNIST digits drawn in 6 colours
  (tinydiff.data.ColoredMNIST), each label dropped to its own "null" independently, so one
  network predicts eps(d, c), eps(d, null), eps(null, c) and eps(null, null). It predicts
  v = sqrt(ab) eps - sqrt(1 - ab) x_0 (Salimans & Ho 2022), from which eps follows: with eps
  as the target it must copy three channels of noise to its output, and in 10 minutes it
  learns the colour but hardly the digit (README "Two attributes" has the numbers). The
  time and label embedding scales and shifts each residual block's GroupNorm (AdaGN,
  Dhariwal & Nichol 2021; ``--conditioning scale_shift``): with a shift alone the digit
  label is used only weakly (README: "Why scale and shift");
* holds 10 of the 60 digit-colour pairs out of training (digit d is never shown in colour
  d % 6: the diagonal of the grid) and asks for them anyway;
* samples every pair with two forms of classifier-free guidance (tinydiff.guidance), from
  the same noise:

      joint      eps(null, null) + (1 + w) (eps(d, c) - eps(null, null))
      composed   eps(null, null) + (1 + w_d) (eps(d, null) - eps(null, null))
                                 + (1 + w_c) (eps(null, c) - eps(null, null))
                 (Liu et al. 2022, compositional guidance; they write 1 + w as the weight)

* and measures each sample twice: its digit (the MNIST scorer, tinydiff.scorer, on the
  grey-scale image: the brightest channel) and its colour (the palette colour nearest to
  the mean colour of its stroke pixels), for seen and held-out pairs, for both forms.

Run (10 minutes of training by default, about 12 in all on 2 busy cores):

    python examples/color_digits.py
    python examples/color_digits.py --resume --guidance 4      # re-sample a finished run (new file names)

Outputs in --out (default out/color_digits): grid_joint.png and grid_composed.png (row =
digit, column = colour, held-out pairs framed), samples.npy, labels.npy, metrics.json and
the checkpoint. MNIST is read as in examples/mnist.py (--data-dir, --no-download).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# One OpenBLAS thread: tinydiff's convolutions thread themselves (see examples/mnist.py and
# README "Speed": OpenBLAS's own threads compete with them). An explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

import tinydiff as td
from tinydiff import runs
from tinydiff.checkpoint import atomic_write
from tinydiff.data import COLOUR_NAMES, HELD_OUT, PALETTE, ColoredMNIST, from_model_space, load_mnist
from tinydiff.data import nearest_colour, to_grey

HELD_OUT_SETS = {"diagonal": HELD_OUT, "none": ()}
# Flags that define the run (refused on --resume if they differ) and flags that only change the
# evaluation (allowed on --resume; the outputs then get new names): see tinydiff/runs.py.
RUN_FLAGS = ("minutes", "steps", "batch", "lr", "ema", "label_dropout", "held_out", "seed", "width", "mults",
             "conditioning", "T", "schedule", "objective", "weighting", "train_limit")
EVAL_FLAGS = ("sample_steps", "guidance", "guidance_digit", "guidance_colour", "per_pair", "no_score")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("training")
    g.add_argument("--minutes", type=runs.positive_float, default=10.0,
                   help="training budget: the number of steps is set from the speed of the first steps")
    g.add_argument("--steps", type=runs.positive_int, default=None,
                   help="train exactly this many steps (overrides --minutes)")
    g.add_argument("--batch", type=runs.positive_int, default=64, help="batch size")
    g.add_argument("--lr", type=runs.positive_float, default=2e-3, help="peak learning rate (AdamW), cosine-decayed")
    g.add_argument("--ema", type=runs.decay_rate, default=0.999, help="EMA decay of the sampling weights")
    g.add_argument("--label-dropout", type=runs.probability, default=0.2,
                   help="probability of dropping each label to its null, independently: (d, null) and "
                        "(null, c) are then each trained on p (1 - p) of the examples, (null, null) on p^2")
    g.add_argument("--held-out", default="diagonal", choices=sorted(HELD_OUT_SETS),
                   help="digit-colour pairs never shown in training: diagonal = colour d %% 6 for digit d")
    g.add_argument("--seed", type=runs.nonnegative_int, default=0, help="seed of every random draw")
    m = p.add_argument_group("model and diffusion")
    m.add_argument("--width", type=runs.positive_int, default=16, help="UNet base channels")
    m.add_argument("--mults", default="1,2,2", help="UNet channel multiplier per level, comma-separated")
    m.add_argument("--conditioning", default="scale_shift", choices=["scale_shift", "shift"],
                   help="how the time and label embedding enters each residual block: scale_shift = a gain and "
                        "a bias on its GroupNorm (AdaGN, Dhariwal & Nichol 2021), shift = a bias only (MNIST-UNET)")
    m.add_argument("--T", type=runs.positive_int, default=1000, help="number of diffusion steps")
    m.add_argument("--schedule", default="cosine", choices=["cosine", "linear"], help="noise schedule")
    m.add_argument("--objective", default="v", choices=["v", "eps"],
                   help="what the UNet predicts: v = sqrt(ab) eps - sqrt(1 - ab) x_0 (Salimans & Ho 2022) or eps. "
                        "eps learns the digit far more slowly in 3 channels (README: 'Two attributes')")
    m.add_argument("--weighting", default="min_snr", choices=["min_snr", "none"],
                   help="per-timestep weight of the MSE (min_snr: Hang et al. 2023, for the objective's target)")
    s = p.add_argument_group("sampling and evaluation")
    s.add_argument("--sample-steps", type=runs.positive_int, default=50, help="DDIM steps (eta 0, x_0 clipped)")
    s.add_argument("--guidance", type=runs.nonnegative_float, default=2.0,
                   help="joint guidance scale w (Ho & Salimans's w: 0 = the conditional model; Liu et al.'s "
                        "weight is 1 + w)")
    s.add_argument("--guidance-digit", type=runs.nonnegative_float, default=2.0,
                   help="composed guidance: the digit's scale w_d (same convention)")
    s.add_argument("--guidance-colour", type=runs.nonnegative_float, default=2.0,
                   help="composed guidance: the colour's scale w_c (same convention)")
    s.add_argument("--per-pair", type=runs.positive_int, default=5,
                   help="samples per digit-colour pair and guidance form (60 pairs)")
    s.add_argument("--no-score", action="store_true", help="skip the digit scorer (colour accuracy only)")
    runs.add_mnist_run_flags(p, "color_digits", checkpoint_every=250, redo="re-sample")
    args = p.parse_args(argv)
    if args.sample_steps > args.T:
        p.error(f"--sample-steps {args.sample_steps}: a sampler can visit at most the T = {args.T} trained steps")
    try:
        args.mults = runs.unet_shape_flags(args.width, args.mults)
    except ValueError as err:
        p.error(str(err))
    try:
        runs.check_reaches_noise(make_betas(args))
    except ValueError as err:
        p.error(f"--schedule {args.schedule} with --T {args.T}: {err}")
    return args


def make_betas(args):
    return td.cosine_beta_schedule(args.T) if args.schedule == "cosine" else td.linear_beta_schedule(args.T)


def build(args):
    """The diffusion and the two-attribute UNet the flags describe: 3 colour channels in and
    out, labels y = [digit, colour] with 10 and 6 classes (plus a null for each)."""
    diffusion = td.GaussianDiffusion(make_betas(args), model_mean_type=args.objective, model_var_type="fixed_large",
                                     loss_type="mse", mse_weighting=args.weighting)
    model = td.models.UNet(in_channels=3, base_channels=args.width, channel_mults=args.mults,
                           num_classes=(10, len(PALETTE)), scale_shift=args.conditioning == "scale_shift",
                           rng=np.random.default_rng(args.seed))
    return diffusion, model


def pair_labels(per_pair: int) -> np.ndarray:
    """Every (digit, colour) pair per_pair times, digit-major: int64 [60 per_pair, 2]."""
    pairs = np.array([(d, c) for d in range(10) for c in range(len(PALETTE))], dtype=np.int64)
    return np.repeat(pairs, per_pair, axis=0)


def accuracies(digit_ok, colour_ok, select) -> dict:
    """Fractions right among the selected samples (digit_ok None when there is no scorer)."""
    n = int(select.sum())
    out = {"n": n, "colour_accuracy": float(colour_ok[select].mean())}
    if digit_ok is not None:
        out["digit_accuracy"] = float(digit_ok[select].mean())
        out["both_right"] = float((digit_ok & colour_ok)[select].mean())
    return out


def evaluate(args, diffusion, model, trainer, train_seconds, held_out, tag="") -> dict:
    """Sample every pair with both guidance forms, draw the grids, measure digit and colour."""
    def out(name):
        return os.path.join(args.out, runs.tagged(name, tag))

    y = pair_labels(args.per_pair)                                           # [N, 2]
    held = td.data.held_out_mask(held_out)[y[:, 0], y[:, 1]]                  # [N] bool
    noise = np.random.default_rng(args.seed + 1).standard_normal((len(y), 3, 28, 28), dtype=np.float32)
    forms = {"joint": args.guidance, "composed": (args.guidance_digit, args.guidance_colour)}
    scorer = None
    if not args.no_score:
        from tinydiff.scorer import DigitScorer
        scorer = DigitScorer.load(data_dir=args.data_dir)
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
            rgb = from_model_space(x)                                         # [N, 3, 28, 28] in [0, 1]
            samples[form] = rgb
            colour_ok = nearest_colour(rgb) == y[:, 1]
            digit_ok = None if scorer is None else scorer.predict(to_grey(rgb)) == y[:, 0]
            result = {"scale": scale, "liu_weight": (1 + scale) if form == "joint" else [1 + w for w in scale],
                      "sample_seconds": round(seconds, 1),
                      "seen": accuracies(digit_ok, colour_ok, ~held),
                      "held_out": accuracies(digit_ok, colour_ok, held), "held_out_pairs": {}}
            for d, c in held_out:                                             # each held-out pair on its own
                pick = (y[:, 0] == d) & (y[:, 1] == c)
                result["held_out_pairs"][f"{d} {COLOUR_NAMES[c]}"] = accuracies(digit_ok, colour_ok, pick)
            metrics[form] = result

    marked = [(d, c) for d, c in held_out]
    first = np.arange(0, len(y), args.per_pair)                               # one sample per pair
    for form, rgb in samples.items():
        grid = rgb[first].reshape(10, len(PALETTE), 3, 28, 28)
        scale = forms[form]
        how = f"joint, w = {scale:g}" if form == "joint" else f"composed, w_d = {scale[0]:g}, w_c = {scale[1]:g}"
        td.images.plot_image_rows(list(grid), out(f"grid_{form}.png"), row_labels=[str(d) for d in range(10)],
                                  col_labels=list(COLOUR_NAMES), marked=marked,
                                  title=f"{how}; framed: pairs never seen in training")
    with atomic_write(out("samples.npy")) as f:
        np.save(f, np.stack([samples[form] for form in forms]).astype(np.float32))    # [2, N, 3, 28, 28]
    with atomic_write(out("labels.npy")) as f:
        np.save(f, y)
    with atomic_write(out("metrics.json")) as f:
        f.write(json.dumps(metrics, indent=2).encode())
    report(metrics)
    print(f"wrote grid_joint.png, grid_composed.png, samples.npy, labels.npy, metrics.json to {args.out}"
          + (f" (named *.{tag}.*)" if tag else ""))
    return metrics


def report(metrics: dict) -> None:
    """The table of the README's "Two attributes" section, and one line per target."""
    print(f"{'':10} {'pairs':9} {'digit':>7} {'colour':>7} {'both':>7}   n")
    for form in ("joint", "composed"):
        for part in ("seen", "held_out"):
            r = metrics[form][part]
            digit = f"{r['digit_accuracy']:7.1%}" if "digit_accuracy" in r else "      -"
            both = f"{r['both_right']:7.1%}" if "both_right" in r else "      -"
            print(f"{form:10} {part:9} {digit} {r['colour_accuracy']:7.1%} {both}   {r['n']}")
    for form in ("joint", "composed"):
        seen = metrics[form]["seen"]
        if "digit_accuracy" in seen:
            ok = seen["digit_accuracy"] >= 0.9
            print(f"{form}: digit accuracy on seen pairs {seen['digit_accuracy']:.1%} (target >= 90%): "
                  f"{'ok' if ok else 'MISSED'}")
        ok = seen["colour_accuracy"] >= 0.95
        print(f"{form}: colour accuracy on seen pairs {seen['colour_accuracy']:.1%} (target >= 95%): "
              f"{'ok' if ok else 'MISSED'}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    td.runtime.reuse_freed_memory()
    checkpoint = os.path.join(args.out, "checkpoint.npz")
    saved = runs.read_run_config(checkpoint, resume=args.resume, restart=args.restart)
    if saved is not None:
        runs.check_same_run(saved["config"], vars(args), RUN_FLAGS, checkpoint)
    tag = runs.evaluation_tag(saved and saved["config"], vars(args), EVAL_FLAGS)
    diffusion, model = build(args)
    removed = runs.prepare_output_dir(args.out, need_bytes=2 * runs.checkpoint_bytes(model) + 20_000_000)
    if removed:
        print(f"removed {len(removed)} temporary file(s) left in {args.out} by a killed run: {', '.join(removed)}")
    try:
        images, labels = load_mnist("train", args.data_dir, download=not args.no_download, limit=args.train_limit)
    except (OSError, ValueError) as err:
        raise runs.RunError(f"MNIST: {err}") from None
    held_out = HELD_OUT_SETS[args.held_out]
    data = ColoredMNIST(images, labels, held_out=held_out)
    print(f"{data}: {len(PALETTE)} colours ({', '.join(COLOUR_NAMES)}); held out: "
          + (", ".join(f"{d} {COLOUR_NAMES[c]}" for d, c in held_out) or "nothing"))
    print(f"UNet: {model.num_parameters():,} parameters, labels (digit, colour); {args.objective} objective, {args.schedule} "
          f"schedule, T = {args.T}")
    warmup = 100 if args.steps is None else min(100, args.steps // 10)
    trainer = td.Trainer(model, td.DiffusionLoss(diffusion, label_dropout=args.label_dropout), data,
                         batch_size=args.batch, lr=args.lr, warmup_steps=warmup, ema_decay=args.ema, ema_warmup=True,
                         seed=args.seed, log_every=50, checkpoint_path=checkpoint,
                         checkpoint_every=args.checkpoint_every, config=vars(args) if saved is None else saved["config"])
    train_seconds = runs.train_within_budget(trainer, checkpoint, steps=args.steps, minutes=args.minutes,
                                             saved=saved, warmup=warmup)
    if tag:
        print(f"evaluating with other settings than the run's own: outputs are named *.{tag}.*")
    try:
        return evaluate(args, diffusion, model, trainer, train_seconds, held_out, tag)
    except OSError as err:
        raise runs.RunError(f"could not write the outputs in {args.out} ({err}); the checkpoint holds step "
                            f"{trainer.step}: --resume writes them again") from None


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

"""Train a class-conditional diffusion model on MNIST, then draw digits and score them.

The second example, after toy2d.py: the same GaussianDiffusion and Trainer, now with the
library's UNet on 28 x 28 images. It

* trains eps_theta(x_t, t, y) with labels dropped to "null" 10% of the time, so one network
  also predicts eps(x_t, t, null) for classifier-free guidance (Ho & Salimans 2022),
* draws 500 digits (50 of each class) with guidance and writes them as a 10 x 10 grid
  (row k = digit k), samples.npy and labels.npy,
* shows the same noise at guidance w = 0, 1, 3, 5 and a denoising trajectory,
* estimates the variational bound in bits/dim on 500 test digits (discretized decoder, the
  convention of published image likelihoods), term by term,
* and scores the digits with tinydiff's MNIST classifier (tinydiff.scorer): how often a
  sample is read as the digit asked for, and a Frechet distance to real test digits beside
  the real-vs-real floor at the same N.

Run (10 minutes of training by default, about 12 in all on 2 cores):

    python examples/mnist.py                       # the default recipe (README: "MNIST")
    python examples/mnist.py --minutes 60          # the longer documented run
    python examples/mnist.py --resume --guidance 5 # re-sample a finished run (new file names)

MNIST is read from --data-dir, $TINYDIFF_DATA/mnist or ~/.cache/tinydiff/mnist, and
downloaded there (with checksums) when missing unless --no-download is given.
Everything lands in --out (default out/mnist).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import tinydiff as td
from tinydiff.checkpoint import atomic_write
from tinydiff.data import from_model_space, load_mnist, to_model_space
from tinydiff.images import plot_image_rows, save_image_grid
from tinydiff.models import UNet
from tinydiff.objectives import DiffusionLoss, make_diffusion
from tinydiff.runtime import reuse_freed_memory
from tinydiff.samplers import sample as run_sampler
from tinydiff.schedules import cosine_beta_schedule, linear_beta_schedule
from tinydiff.train import Trainer

GUIDANCE_STRIP = (0.0, 1.0, 3.0, 5.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("training")
    g.add_argument("--minutes", type=float, default=10.0,
                   help="training budget: the number of steps is set from the speed of the first steps")
    g.add_argument("--steps", type=int, default=None, help="train exactly this many steps (overrides --minutes)")
    g.add_argument("--batch", type=int, default=64, help="batch size")
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW), cosine-decayed to 0")
    g.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights used for sampling (with warm-up)")
    g.add_argument("--label-dropout", type=float, default=0.1,
                   help="probability of training on the null label (what classifier-free guidance needs)")
    g.add_argument("--unconditional", action="store_true", help="train without labels (no guidance)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    m = p.add_argument_group("model and diffusion")
    m.add_argument("--width", type=int, default=32, help="UNet base channels (32: MNIST-UNET)")
    m.add_argument("--mults", default="1,2,2", help="UNet channel multiplier per level, comma-separated")
    m.add_argument("--T", type=int, default=1000, help="number of diffusion steps")
    m.add_argument("--schedule", default="cosine", choices=["cosine", "linear"],
                   help="noise schedule: cosine (Nichol & Dhariwal eq. 17) or DDPM's linear 1e-4..0.02")
    m.add_argument("--objective", default="eps", choices=["eps", "hybrid"],
                   help="eps: L_simple with fixed variance (Ho et al. 2020); hybrid: plus a learned "
                        "variance trained on the bound (Nichol & Dhariwal 2021)")
    m.add_argument("--weighting", default="min_snr", choices=["min_snr", "none"],
                   help="per-timestep weight of the MSE: min_snr (Hang et al. 2023, gamma 5) or none (DDPM)")
    s = p.add_argument_group("sampling and evaluation")
    s.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"], help="DDIM (eta 0) or ancestral DDPM")
    s.add_argument("--sample-steps", type=int, default=50, help="sampling steps (a respaced chain of the T)")
    s.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale w (0 = none)")
    s.add_argument("--n-samples", type=int, default=500, help="digits to draw (an equal number per class)")
    s.add_argument("--bpd-digits", type=int, default=500, help="test digits for the bits/dim bound (0: skip)")
    s.add_argument("--bpd-timesteps", type=int, default=100,
                   help="model calls per digit for the bound: the decoder term plus one t in each of the "
                        "other strata (an unbiased estimate of the full sum; T = every term exactly)")
    s.add_argument("--no-score", action="store_true", help="skip the classifier scores")
    d = p.add_argument_group("data and files")
    d.add_argument("--data-dir", default=None, help="folder with the MNIST files (default: $TINYDIFF_DATA/mnist "
                                                    "or ~/.cache/tinydiff/mnist)")
    d.add_argument("--no-download", action="store_true", help="never download MNIST; fail if it is missing")
    d.add_argument("--train-limit", type=int, default=None, help="use only the first N training digits")
    d.add_argument("--out", default=os.path.join("out", "mnist"), help="output folder")
    d.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz (or re-sample a finished run)")
    args = p.parse_args(argv)
    for name in ("batch", "T", "width", "sample_steps", "n_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps is not None and args.steps < 1 or args.minutes <= 0:
        p.error("--steps and --minutes must be positive")
    if args.n_samples % 10 and not args.unconditional:
        p.error(f"--n-samples must be a multiple of 10 (an equal number of each digit), got {args.n_samples}")
    if args.sample_steps > args.T:
        p.error(f"--sample-steps {args.sample_steps} exceeds --T {args.T}")
    if args.guidance < 0 or not 0 <= args.label_dropout <= 1 or args.lr <= 0:
        p.error("--guidance must be >= 0, --label-dropout in [0, 1] and --lr > 0")
    try:
        args.mults = tuple(int(v) for v in str(args.mults).split(","))
    except ValueError:
        p.error(f"--mults: expected comma-separated integers such as 1,2,2, got {args.mults!r}")
    if args.unconditional:
        args.guidance, args.label_dropout = 0.0, 0.0
    return args


def progress_printer(label: str):
    """A progress(i, n) callback that prints about ten lines."""
    start = time.perf_counter()

    def progress(i, n):
        if i == n or i % max(1, n // 10) == 0:
            print(f"  {label}: {i}/{n}  ({time.perf_counter() - start:.1f} s)", flush=True)
    return progress


def build(args):
    """The diffusion and the UNet the flags describe."""
    betas = cosine_beta_schedule(args.T) if args.schedule == "cosine" else linear_beta_schedule(args.T)
    diffusion = make_diffusion(args.objective, betas, decoder_nll="discretized", mse_weighting=args.weighting)
    model = UNet(base_channels=args.width, channel_mults=args.mults,
                 num_classes=None if args.unconditional else 10, learned_variance=diffusion.learned_variance,
                 rng=np.random.default_rng(args.seed))
    return diffusion, model


def train(args, diffusion, model, images, labels):
    """Train with a time budget: the first steps measure the speed, which fixes the step count
    (and with it the cosine learning-rate decay); a resumed run keeps its saved count."""
    data = images if args.unconditional else (images, labels)
    checkpoint = os.path.join(args.out, "checkpoint.npz")
    loss = DiffusionLoss(diffusion, label_dropout=args.label_dropout)
    trainer = Trainer(model, loss, data, batch_size=args.batch, lr=args.lr, warmup_steps=100,
                      ema_decay=args.ema, ema_warmup=True, seed=args.seed, log_every=50,
                      checkpoint_path=checkpoint, checkpoint_every=250, config=vars(args))
    if args.resume and os.path.exists(checkpoint):
        trainer.resume(checkpoint)
        steps = int((trainer.resumed_config or {}).get("steps_resolved", trainer.step))
        print(f"resumed from {checkpoint} at step {trainer.step} of {steps}")
    elif args.steps is not None:
        steps = args.steps
    else:                                   # calibrate the budget: 5 steps to warm up, 10 timed
        start = time.perf_counter()
        trainer.train(5)
        mid = time.perf_counter()
        trainer.train(15)
        rate = 10 / (time.perf_counter() - mid)
        steps = max(20, int((args.minutes * 60 - (mid - start)) * rate) + 5)
        print(f"{rate:.2f} steps/s: {args.minutes:g} minutes is {steps} steps of batch {args.batch}")
    trainer.warmup.warmup_steps = min(100, steps // 10)
    trainer.warmup.decay_steps = steps
    trainer.config["steps_resolved"] = steps
    start = time.perf_counter()
    trainer.train(steps)
    return trainer, time.perf_counter() - start


def balanced_labels(n: int) -> np.ndarray:
    """0, 1, ..., 9, 0, 1, ...: n labels, an equal share of each digit."""
    return np.arange(n) % 10


def main(argv=None) -> dict:
    args = parse_args(argv)
    reuse_freed_memory()                       # keep NumPy's freed temporaries mapped: see tinydiff/runtime.py
    os.makedirs(args.out, exist_ok=True)
    images, labels = load_mnist("train", args.data_dir, download=not args.no_download, limit=args.train_limit)
    x_train = to_model_space(images)                                            # [N, 1, 28, 28] in [-1, 1]
    print(f"MNIST: {len(x_train)} training digits")
    diffusion, model = build(args)
    print(f"UNet: {model.num_parameters():,} parameters; {args.objective} objective, {args.schedule} schedule, "
          f"T = {args.T}")
    trainer, train_seconds = train(args, diffusion, model, x_train, labels)

    rng = np.random.default_rng(args.seed + 1)                                 # evaluation's own stream
    conditional = not args.unconditional
    sample_kw = dict(sampler=args.sampler, steps=args.sample_steps, guidance=args.guidance if conditional else None)
    y = balanced_labels(args.n_samples)
    metrics = {"steps": trainer.step, "train_seconds": round(train_seconds, 1), "batch": args.batch,
               "final_loss": float(np.mean(trainer.losses[-100:])), "sampler": args.sampler,
               "sample_steps": args.sample_steps, "guidance": args.guidance if conditional else None}
    with trainer.ema.average_parameters(model), td.no_grad():
        start = time.perf_counter()
        x = run_sampler(diffusion, model, (args.n_samples, 1, 28, 28), rng,
                        model_kwargs={"y": y} if conditional else None,
                        progress=progress_printer(f"sampling {args.n_samples} digits"), **sample_kw)
        metrics["sample_seconds"] = round(time.perf_counter() - start, 1)
        samples = from_model_space(x)[:, 0]                                    # [N, 28, 28] in [0, 1]

        strip_noise = rng.standard_normal((10, 1, 28, 28), dtype=np.float32)
        if conditional:
            strip = [from_model_space(run_sampler(diffusion, model, (10, 1, 28, 28), np.random.default_rng(0),
                                                  noise=strip_noise, model_kwargs={"y": np.arange(10)},
                                                  **{**sample_kw, "guidance": w})) for w in GUIDANCE_STRIP]
        _, trajectory = run_sampler(diffusion, model, (5, 1, 28, 28), np.random.default_rng(1),
                                    model_kwargs={"y": np.arange(0, 10, 2)} if conditional else None,
                                    return_trajectory=True, **sample_kw)

        if args.bpd_digits:
            test_images, test_labels = load_mnist("test", args.data_dir, download=not args.no_download,
                                                  limit=args.bpd_digits)
            x0 = to_model_space(test_images)
            bound = {k: [] for k in ("total_bpd", "prior_bpd", "vb", "t", "weights")}
            for i in range(0, len(x0), 100):                                     # 100 digits at a time
                part = diffusion.calc_bpd_loop(model, x0[i:i + 100], rng=rng, num_timesteps=args.bpd_timesteps,
                                               model_kwargs={"y": test_labels[i:i + 100]} if conditional else None,
                                               progress=progress_printer(f"bound, digits {i + 1}-{i + len(x0[i:i + 100])}"))
                for k in bound:
                    bound[k].append(part[k])
            total = np.concatenate(bound["total_bpd"]).astype(np.float64)
            vb, weights = np.concatenate(bound["vb"]).astype(np.float64), bound["weights"][0]
            metrics["bpd"] = {
                "total": float(total.mean()), "stderr": float(total.std(ddof=1) / np.sqrt(len(total))),
                "prior_L_T": float(np.concatenate(bound["prior_bpd"]).mean()),
                "decoder_L_0": float(vb[:, 0].mean()),
                "kl_terms_L_1_to_L_T-1": float((vb[:, 1:] * weights[1:]).sum(axis=1).mean()),
                "digits": len(total), "model_calls_per_digit": int(vb.shape[1]),
                "convention": "bound on -log2 P(x) of the 8-bit digit (discretized decoder) / 784, "
                              + ("class-conditional" if conditional else "unconditional"),
            }

    np.save(os.path.join(args.out, "samples.npy"), samples.astype(np.float32))
    np.save(os.path.join(args.out, "labels.npy"), y.astype(np.int64))
    per_digit = min(10, args.n_samples // 10)                               # row k = digit k
    order = (np.argsort(y, kind="stable").reshape(10, -1)[:, :per_digit].ravel() if conditional
             else np.arange(min(100, args.n_samples)))
    save_image_grid(samples[order], os.path.join(args.out, "grid.png"), nrow=per_digit if conditional else 10)
    if conditional:
        plot_image_rows([s[:, 0] for s in strip], os.path.join(args.out, "guidance.png"),
                        row_labels=[f"w = {w:g}" for w in GUIDANCE_STRIP], col_labels=[str(k) for k in range(10)],
                        title="the same noise at four guidance scales")
    frames = np.unique(np.round(np.linspace(0, len(trajectory) - 1, 9) ** 1.0).astype(int))
    plot_image_rows([from_model_space(trajectory[frames, k, 0]) for k in range(trajectory.shape[1])],
                    os.path.join(args.out, "trajectory.png"),
                    col_labels=[f"{len(trajectory) - 1 - f} left" for f in frames],
                    title=f"denoising: {args.sampler}, {args.sample_steps} steps, from noise (left) to digit (right)")

    if not args.no_score:
        from tinydiff.scorer import DigitScorer
        scorer = DigitScorer.load(data_dir=args.data_dir)
        metrics["scorer"] = scorer.score(samples, y if conditional else None, seed=args.seed)
    with atomic_write(os.path.join(args.out, "metrics.json")) as f:
        f.write(json.dumps(metrics, indent=2).encode())
    print(json.dumps(metrics, indent=2))
    print(f"wrote grid.png, guidance.png, trajectory.png, samples.npy, labels.npy, metrics.json to {args.out}")
    return metrics


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

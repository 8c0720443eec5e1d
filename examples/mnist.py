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

Run (2,000 training steps by default, under 10 minutes of training on 2 cores):

    python examples/mnist.py                       # the default recipe (README: "MNIST")
    python examples/mnist.py --steps 12000         # the longer documented run (under an hour)
    python examples/mnist.py --minutes 5           # or: train for a time budget instead of a step count
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

# The UNet's convolutions run on tinydiff's own threads (tinydiff/parallel.py), each GEMM on one
# OpenBLAS thread. Left at its default, OpenBLAS keeps threads of its own that compete with
# tinydiff's for the same cores: a training step took 409 ms instead of 283 ms on 2 idle cores
# (README "Speed"). Set before NumPy loads OpenBLAS; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

import tinydiff as td
from tinydiff import runs
from tinydiff.checkpoint import atomic_write
from tinydiff.data import from_model_space, load_mnist, to_model_space
from tinydiff.images import plot_image_rows, save_image_grid
from tinydiff.models import UNet
from tinydiff.objectives import DiffusionLoss, make_diffusion
from tinydiff.runtime import reuse_freed_memory
from tinydiff.samplers import respace
from tinydiff.samplers import sample as run_sampler
from tinydiff.schedules import cosine_beta_schedule, linear_beta_schedule
from tinydiff.train import CheckpointWriteError, NonFiniteError, Trainer

GUIDANCE_STRIP = (0.0, 1.0, 3.0, 5.0)
# A resumed run must be the same run (tinydiff/runs.py): these flags define what is trained and are
# refused on --resume if they differ from the checkpoint's. --steps and --minutes fix the cosine
# learning-rate decay, so they are among them.
RUN_FLAGS = ("minutes", "steps", "batch", "lr", "ema", "label_dropout", "unconditional", "seed", "width", "mults",
             "T", "schedule", "objective", "weighting", "train_limit")
# These only change what is computed from the trained model: allowed on --resume, with the outputs
# under new names (grid.guidance-5.0.png), so the run's own are never overwritten.
EVAL_FLAGS = ("sampler", "sample_steps", "guidance", "n_samples", "bpd_digits", "bpd_timesteps", "no_score")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=runs.positive_int, default=2000,
                   help="training steps (2,000 of batch 64 take about 9 minutes on 2 cores)")
    g.add_argument("--minutes", type=runs.positive_float, default=None,
                   help="train for this many minutes instead of --steps: the step count is set from the speed "
                        "of the first steps, and training stops at the budget if the machine slows down")
    g.add_argument("--batch", type=runs.positive_int, default=64, help="batch size")
    g.add_argument("--lr", type=runs.positive_float, default=2e-3,
                   help="peak learning rate (AdamW), cosine-decayed to 0")
    g.add_argument("--ema", type=runs.decay_rate, default=0.999,
                   help="EMA decay of the weights used for sampling (with warm-up)")
    g.add_argument("--label-dropout", type=runs.probability, default=0.1,
                   help="probability of training on the null label (what classifier-free guidance needs)")
    g.add_argument("--unconditional", action="store_true", help="train without labels (no guidance)")
    g.add_argument("--seed", type=runs.nonnegative_int, default=0, help="seed of every random draw")
    m = p.add_argument_group("model and diffusion")
    m.add_argument("--width", type=runs.positive_int, default=16,
                   help="UNet base channels (32 is MNIST-UNET, the UNet() default; 16 trains 2.4x faster)")
    m.add_argument("--mults", default="1,2,2", help="UNet channel multiplier per level, comma-separated")
    m.add_argument("--T", type=runs.positive_int, default=1000, help="number of diffusion steps")
    m.add_argument("--schedule", default="cosine", choices=["cosine", "linear"],
                   help="noise schedule: cosine (Nichol & Dhariwal eq. 17) or DDPM's linear 1e-4..0.02")
    m.add_argument("--objective", default="eps", choices=["eps", "hybrid"],
                   help="eps: L_simple with fixed variance (Ho et al. 2020); hybrid: plus a learned "
                        "variance trained on the bound (Nichol & Dhariwal 2021)")
    m.add_argument("--weighting", default="min_snr", choices=["min_snr", "none"],
                   help="per-timestep weight of the MSE: min_snr (Hang et al. 2023, gamma 5) or none (DDPM)")
    s = p.add_argument_group("sampling and evaluation")
    s.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"], help="DDIM (eta 0) or ancestral DDPM")
    s.add_argument("--sample-steps", type=runs.positive_int, default=30,
                   help="sampling steps (a respaced chain of the T)")
    s.add_argument("--guidance", type=runs.nonnegative_float, default=1.5,
                   help="classifier-free guidance scale w (0 = none)")
    s.add_argument("--n-samples", type=runs.positive_int, default=500,
                   help="digits to draw (an equal number per class)")
    s.add_argument("--bpd-digits", type=runs.nonnegative_int, default=500,
                   help="test digits for the bits/dim bound (0: skip)")
    s.add_argument("--bpd-timesteps", type=runs.positive_int, default=100,
                   help="model calls per digit for the bound: the decoder term plus one t in each of the "
                        "other strata (an unbiased estimate of the full sum; T = every term exactly)")
    s.add_argument("--no-score", action="store_true", help="skip the classifier scores")
    runs.add_mnist_run_flags(p, "mnist", checkpoint_every=250, redo="re-sample")
    args = p.parse_args(argv)
    if args.n_samples % 10 and not args.unconditional:
        p.error(f"--n-samples must be a multiple of 10 (an equal number of each digit), got {args.n_samples}")
    if args.sample_steps > args.T:
        p.error(f"--sample-steps {args.sample_steps} exceeds --T {args.T}")
    if args.bpd_digits and args.bpd_timesteps < 2:
        p.error(f"--bpd-timesteps {args.bpd_timesteps}: the bound needs at least 2 (the decoder and one stratum)")
    try:
        args.mults = runs.unet_shape_flags(args.width, args.mults)
    except ValueError as err:
        p.error(str(err))
    try:
        runs.check_reaches_noise(make_betas(args))
    except ValueError as err:
        p.error(f"--schedule {args.schedule} with --T {args.T}: {err}")
    typed = {word.split("=")[0] for word in (sys.argv[1:] if argv is None else argv)}
    for flag in ("--guidance", "--label-dropout"):
        if args.unconditional and flag in typed:
            p.error(f"{flag} with --unconditional: a model without labels has nothing to guide toward")
    if args.unconditional:
        args.guidance, args.label_dropout = 0.0, 0.0
    return args


def make_betas(args):
    """The schedule the flags describe, float64 [T]."""
    return cosine_beta_schedule(args.T) if args.schedule == "cosine" else linear_beta_schedule(args.T)


def build(args):
    """The diffusion and the UNet the flags describe."""
    betas = make_betas(args)
    diffusion = make_diffusion(args.objective, betas, decoder_nll="discretized", mse_weighting=args.weighting)
    model = UNet(base_channels=args.width, channel_mults=args.mults,
                 num_classes=None if args.unconditional else 10, learned_variance=diffusion.learned_variance,
                 rng=np.random.default_rng(args.seed))
    return diffusion, model


def train(args, diffusion, model, images, labels, checkpoint, saved):
    """Train for --steps, or for a --minutes budget: then the first steps measure the speed, which
    fixes the step count (and with it the cosine learning-rate decay); a resumed run keeps its saved count.
    saved: the checkpoint's metadata when resuming (runs.read_run_config), else None."""
    data = images if args.unconditional else (images, labels)
    loss = DiffusionLoss(diffusion, label_dropout=args.label_dropout)
    warmup = 100 if args.minutes is not None else min(100, args.steps // 10)
    trainer = Trainer(model, loss, data, batch_size=args.batch, lr=args.lr, warmup_steps=warmup,
                      ema_decay=args.ema, ema_warmup=True, seed=args.seed, log_every=50,
                      checkpoint_path=checkpoint, checkpoint_every=args.checkpoint_every,
                      config=vars(args) if saved is None else saved["config"])
    begin, cpu_begin, budget = time.perf_counter(), time.process_time(), None
    if saved is not None:
        trainer.resume(checkpoint)
        steps = int((trainer.resumed_config or {}).get("steps_resolved", trainer.step))
        print(f"resumed from {checkpoint} at step {trainer.step} of {steps}")
    elif args.minutes is None:
        steps = args.steps
    else:                                   # calibrate the budget: 5 steps to warm up, 10 timed
        trainer.train(5)
        mid = time.perf_counter()
        trainer.train(15)
        rate = 10 / (time.perf_counter() - mid)
        budget = args.minutes * 60
        steps = max(20, int((budget - (time.perf_counter() - begin)) * rate) + 15)
        print(f"{rate:.2f} steps/s: {args.minutes:g} minutes is about {steps} steps of batch {args.batch} "
              "(training stops at the budget if the machine slows down)")
    if saved is None:                       # the schedule now that the step count is known
        trainer.warmup.warmup_steps = min(warmup, steps // 10)
        trainer.warmup.decay_steps = steps
        trainer.optimizer.lr = trainer.warmup.lr_at(trainer.warmup.step_count)
    trainer.config["steps_resolved"] = steps
    try:
        trainer.train(steps, max_seconds=None if budget is None else budget - (time.perf_counter() - begin))
    except KeyboardInterrupt:
        kept = f"{checkpoint} holds step {trainer.saved_step}" if trainer.saved_step else "no checkpoint was written"
        raise runs.RunError(f"interrupted at step {trainer.step}; {kept} (--resume continues from it)") from None
    except (NonFiniteError, CheckpointWriteError) as err:
        raise runs.RunError(str(err)) from None
    if trainer.step < steps:
        print(f"the {args.minutes:g}-minute budget ran out at step {trainer.step} of {steps} "
              "(--resume finishes the planned steps)")
    # Process CPU time (all threads) beside wall time: on a machine busy with other work the wall
    # clock overstates what training costs.
    return trainer, {"wall": time.perf_counter() - begin, "cpu": time.process_time() - cpu_begin}


def report(metrics: dict) -> None:
    """One line per target of the default run (README "MNIST"), each with ok or MISSED."""
    lines = [("sampling", metrics["sample_seconds"], f"{metrics['sample_seconds']:.0f} s for "
              f"{metrics['n_samples']} digits", metrics["sample_seconds"] <= 60, "<= 60 s")]
    score = metrics.get("scorer")
    if score and score.get("accuracy") is not None:
        lines.append(("accuracy", score["accuracy"], f"{100 * score['accuracy']:.1f}% read as the digit asked for",
                      score["accuracy"] >= 0.95, ">= 95%"))
    if score:
        ratio = score["fid"] / score["fid_floor"]
        lines.append(("fid", ratio, f"Frechet distance {score['fid']:.1f} = {ratio:.2f} x the real-vs-real floor "
                      f"{score['fid_floor']:.1f}", ratio <= 4, "<= 4 x floor"))
    for _, _, text, ok, target in lines:
        print(f"{text} (target {target}): {'ok' if ok else 'MISSED'}")


def balanced_labels(n: int) -> np.ndarray:
    """0, 1, ..., 9, 0, 1, ...: n labels, an equal share of each digit."""
    return np.arange(n) % 10


def main(argv=None) -> dict:
    args = parse_args(argv)
    reuse_freed_memory()                       # keep NumPy's freed temporaries mapped: see tinydiff/runtime.py
    checkpoint = os.path.join(args.out, "checkpoint.npz")
    saved = runs.read_run_config(checkpoint, resume=args.resume, restart=args.restart)    # None: a new run
    if saved is not None:
        runs.check_same_run(saved["config"], vars(args), RUN_FLAGS, checkpoint)
    tag = runs.evaluation_tag(saved and saved["config"], vars(args), EVAL_FLAGS)
    diffusion, model = build(args)
    # Two checkpoints (the new one is written beside the old) plus ~20 MB of samples and pictures.
    removed = runs.prepare_output_dir(args.out, need_bytes=2 * runs.checkpoint_bytes(model) + 20_000_000)
    if removed:
        print(f"removed {len(removed)} temporary file(s) left in {args.out} by a killed run: {', '.join(removed)}")
    try:
        images, labels = load_mnist("train", args.data_dir, download=not args.no_download, limit=args.train_limit)
    except (OSError, ValueError) as err:              # missing files, no network, a corrupt file: one line
        raise runs.RunError(f"MNIST: {err}") from None
    x_train = to_model_space(images)                                            # [N, 1, 28, 28] in [-1, 1]
    print(f"MNIST: {len(x_train)} training digits")
    print(f"UNet: {model.num_parameters():,} parameters; {args.objective} objective, {args.schedule} schedule, "
          f"T = {args.T}")
    trainer, train_seconds = train(args, diffusion, model, x_train, labels, checkpoint, saved)
    if tag:
        print(f"evaluating with other settings than the run's own: outputs are named *.{tag}.*")
    try:
        return evaluate(args, diffusion, model, trainer, train_seconds, tag)
    except OSError as err:
        raise runs.RunError(f"could not write the outputs in {args.out} ({err}); files already there are intact "
                            f"and the checkpoint holds step {trainer.step}: --resume writes them again") from None


def evaluate(args, diffusion, model, trainer, train_seconds, tag="") -> dict:
    """Samples, pictures, the bound and the scores of the trained model, written to args.out
    (names tagged with ``tag`` when re-evaluated with other settings: see tinydiff/runs.py)."""
    def out(name):
        return os.path.join(args.out, runs.tagged(name, tag))

    rng = np.random.default_rng(args.seed + 1)                                 # evaluation's own stream
    conditional = not args.unconditional
    # clip_denoised: each step's estimate of x_0 is clipped to the data range [-1, 1] before the
    # step is taken. Without it the first steps of the cosine schedule (alpha_bar_T ~ 1e-9) turn a
    # small error in eps into a huge x_0 estimate, and the digits come out saturated
    # (measured: 23% read as the digit asked for, against 99% with clipping; README "MNIST").
    sample_kw = dict(sampler=args.sampler, steps=args.sample_steps, clip_denoised=True,
                     guidance=args.guidance if conditional else None)
    y = balanced_labels(args.n_samples)
    metrics = {"steps": trainer.step, "planned_steps": int(trainer.config["steps_resolved"]),
               "train_seconds": round(train_seconds["wall"], 1),
               "train_cpu_seconds": round(train_seconds["cpu"], 1), "batch": args.batch,
               "final_loss": float(np.mean(trainer.losses[-100:])), "sampler": args.sampler,
               "sample_steps": args.sample_steps, "guidance": args.guidance if conditional else None,
               "n_samples": args.n_samples}
    with trainer.ema.average_parameters(model), td.no_grad():
        start, cpu_start = time.perf_counter(), time.process_time()
        x = run_sampler(diffusion, model, (args.n_samples, 1, 28, 28), rng,
                        model_kwargs={"y": y} if conditional else None,
                        progress=td.Progress(0, f"sampling {args.n_samples} digits"), **sample_kw)
        metrics["sample_seconds"] = round(time.perf_counter() - start, 1)
        metrics["sample_cpu_seconds"] = round(time.process_time() - cpu_start, 1)
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
            try:
                test_images, test_labels = load_mnist("test", args.data_dir, download=not args.no_download,
                                                      limit=args.bpd_digits)
            except (OSError, ValueError) as err:
                raise runs.RunError(f"MNIST test digits for the bound (--bpd-digits): {err}") from None
            x0 = to_model_space(test_images)
            bound = {k: [] for k in ("total_bpd", "prior_bpd", "vb", "t", "weights")}
            for i in range(0, len(x0), 100):                                     # 100 digits at a time
                part = diffusion.calc_bpd_loop(model, x0[i:i + 100], rng=rng, num_timesteps=args.bpd_timesteps,
                                               model_kwargs={"y": test_labels[i:i + 100]} if conditional else None,
                                               progress=td.Progress(0, f"bound, digits {i + 1}-{i + len(x0[i:i + 100])}"))
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

    with atomic_write(out("samples.npy")) as f:
        np.save(f, samples.astype(np.float32))
    with atomic_write(out("labels.npy")) as f:
        np.save(f, y.astype(np.int64))
    per_digit = min(10, args.n_samples // 10)                               # row k = digit k
    order = (np.argsort(y, kind="stable").reshape(10, -1)[:, :per_digit].ravel() if conditional
             else np.arange(min(100, args.n_samples)))
    save_image_grid(samples[order], out("grid.png"), nrow=per_digit if conditional else 10)
    if conditional:
        plot_image_rows([s[:, 0] for s in strip], out("guidance.png"),
                        row_labels=[f"w = {w:g}" for w in GUIDANCE_STRIP], col_labels=[str(k) for k in range(10)],
                        title="the same noise at four guidance scales")
    # trajectory[i] is the state after i of the K sampling steps: frame 0 is x_T (pure noise), frame
    # i >= 1 is x at the model timestep timestep_map[K - 1 - i] of the respaced chain, frame K the digit.
    chain_t = respace(diffusion, args.sample_steps).timestep_map
    K = len(trajectory) - 1
    frames = np.unique(np.round(np.linspace(0, K, 9)).astype(int))
    names = ["noise" if f == 0 else "x_0" if f == K else f"t = {chain_t[K - 1 - f]}" for f in frames]
    plot_image_rows([from_model_space(trajectory[frames, k, 0]) for k in range(trajectory.shape[1])],
                    out("trajectory.png"), col_labels=names,
                    row_labels=[f"y = {k}" for k in range(0, 10, 2)] if conditional else None,
                    title=f"denoising: {args.sampler}, {args.sample_steps} of {args.T} steps")

    if not args.no_score:
        from tinydiff.scorer import DigitScorer
        scorer = DigitScorer.load(data_dir=args.data_dir)
        metrics["scorer"] = scorer.score(samples, y if conditional else None, seed=args.seed)
    with atomic_write(out("metrics.json")) as f:
        f.write(json.dumps(metrics, indent=2).encode())
    print(json.dumps(metrics, indent=2))
    report(metrics)
    print(f"wrote grid.png, guidance.png, trajectory.png, samples.npy, labels.npy, metrics.json to {args.out}"
          + (f" (named *.{tag}.*)" if tag else ""))
    return metrics


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

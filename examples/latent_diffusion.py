"""Latent diffusion on MNIST: a class-conditional diffusion model in a frozen VAE's latent space.

The third MNIST example, after mnist.py (diffusion on pixels) and vae.py (a one-step latent
model). Rombach et al. (2022) put the two together: an autoencoder compresses the images once,
and the diffusion model works on the small latent grid. This example

* loads the VAE that examples/vae.py trained with a 4 x 7 x 7 latent (--vae; if it is missing,
  it trains one first by running examples/vae.py), and freezes it,
* encodes the training digits once, scales the codes to unit standard deviation with one factor
  s = 1 / std(z) (``tinydiff.latent.LatentSpace``; the factor is printed and saved),
* trains the library's UNet, class-conditional with labels dropped 10% of the time, on fresh
  draws z ~ q(z | x) of those codes (the same DiffusionLoss and Trainer as in pixel space),
* samples 500 latents (50 per digit) with classifier-free guidance and DDIM, decodes them once,
  and writes the grid, the guidance strip and, for contrast, the same decoder fed z ~ N(0, I),
* scores the digits with tinydiff's MNIST classifier (accuracy for the label asked for, the
  confident fraction, a Frechet distance beside the real-vs-real floor),
* and times, in this process and interleaved, one training step and one guided sampling chain
  (same steps, same batch) of this latent model (+ decoder) and of examples/mnist.py's default
  pixel-space UNet: seconds per 100 digits for both.

Run (5 minutes of training on 2 shared cores, 3 of them the VAE's when it must be trained, then
about a minute of sampling, scoring and timing):

    python examples/latent_diffusion.py                       # README: "The VAE and latent diffusion"
    python examples/latent_diffusion.py --resume --guidance 4 # re-sample a finished run

MNIST is read from --data-dir, $TINYDIFF_DATA/mnist or ~/.cache/tinydiff/mnist (downloaded
there unless --no-download). Everything lands in --out (default out/latent_diffusion).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

# One OpenBLAS thread: tinydiff's convolutions thread themselves (see examples/mnist.py and
# README "Speed": OpenBLAS's own threads compete with them). An explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

import tinydiff as td
from tinydiff import runs
from tinydiff.checkpoint import atomic_write
from tinydiff.data import EpochSampler, from_model_space, load_mnist, to_model_space
from tinydiff.images import plot_image_rows, save_image_grid
from tinydiff.latent import LatentSpace
from tinydiff.models import UNet
from tinydiff.objectives import DiffusionLoss, make_diffusion
from tinydiff.runtime import reuse_freed_memory
from tinydiff.samplers import sample as run_sampler
from tinydiff.schedules import cosine_beta_schedule, linear_beta_schedule
from tinydiff.train import CheckpointWriteError, NonFiniteError, Trainer

GUIDANCE_STRIP = (0.0, 1.0, 3.0, 5.0)
# A resumed run must be the same run (tinydiff/runs.py): these flags define what is trained (the
# frozen VAE among them: its codes are the data).
RUN_FLAGS = ("vae", "steps", "batch", "lr", "ema", "label_dropout", "seed", "width", "mults", "T", "schedule",
             "prediction", "weighting", "train_limit")
# These only change what is computed from the trained model: allowed on --resume, outputs renamed.
EVAL_FLAGS = ("sampler", "sample_steps", "guidance", "n_samples", "no_score", "timing_rounds", "timing_batch")


def example(name: str):
    """examples/<name>.py as a module: vae.py trains (and saves, and loads) the VAE this example
    freezes; mnist.py builds the pixel-space model the timing compares with."""
    spec = importlib.util.spec_from_file_location(f"{name}_example", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    v = p.add_argument_group("the frozen VAE")
    v.add_argument("--vae", default=None, help="the VAE to freeze (vae.npz written by examples/vae.py); "
                                              "default OUT/vae/vae.npz, trained first if missing")
    v.add_argument("--vae-steps", type=runs.positive_int, default=None,
                   help="training steps when the VAE must be trained (default: examples/vae.py's own)")
    v.add_argument("--vae-latent", default="4x7x7", help="latent shape when the VAE must be trained")
    v.add_argument("--vae-kl-weight", type=runs.nonnegative_float, default=1.0,
                   help="KL weight when the VAE must be trained (1: the ELBO; Rombach et al. use ~1e-6)")
    v.add_argument("--vae-args", default="", help="more flags for examples/vae.py when it must be trained, "
                                                  "e.g. \"--channels 8,16\"")
    g = p.add_argument_group("training the diffusion model")
    g.add_argument("--steps", type=runs.positive_int, default=5000, help="training steps")
    g.add_argument("--batch", type=runs.positive_int, default=64, help="batch size")
    g.add_argument("--lr", type=runs.positive_float, default=2e-3, help="peak learning rate (AdamW), cosine-decayed to 0")
    g.add_argument("--ema", type=runs.decay_rate, default=0.999,
                   help="EMA decay of the weights used for sampling (with warm-up)")
    g.add_argument("--label-dropout", type=runs.probability, default=0.1,
                   help="probability of training on the null label (what classifier-free guidance needs)")
    g.add_argument("--seed", type=runs.nonnegative_int, default=0, help="seed of every random draw")
    m = p.add_argument_group("model and diffusion")
    m.add_argument("--width", type=runs.positive_int, default=32,
                   help="UNet base channels (a multiple of 8; 32 samples 5x faster than the pixel UNet, 64 does not)")
    m.add_argument("--mults", default="1", help="UNet channel multiplier per level (a 7 x 7 grid allows one level)")
    m.add_argument("--T", type=runs.positive_int, default=1000, help="number of diffusion steps")
    m.add_argument("--schedule", default="cosine", choices=["cosine", "linear"],
                   help="noise schedule: cosine (Nichol & Dhariwal eq. 17) or DDPM's linear 1e-4..0.02")
    m.add_argument("--prediction", default="v", choices=["v", "eps"],
                   help="what the UNet predicts: v = sqrt(ab) eps - sqrt(1 - ab) z0 (Salimans & Ho 2022), whose "
                        "z0 estimate stays bounded at the noisiest step, or eps (Ho et al. 2020)")
    m.add_argument("--weighting", default="min_snr", choices=["min_snr", "none"],
                   help="per-timestep weight of the MSE: min_snr (Hang et al. 2023, gamma 5) or none (DDPM)")
    s = p.add_argument_group("sampling, scores and timing")
    s.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"], help="DDIM (eta 0) or ancestral DDPM")
    s.add_argument("--sample-steps", type=runs.positive_int, default=50,
                   help="sampling steps (a respaced chain of the T)")
    s.add_argument("--guidance", type=runs.nonnegative_float, default=2.0,
                   help="classifier-free guidance scale w (0 = none)")
    s.add_argument("--n-samples", type=runs.positive_int, default=500,
                   help="digits to draw (an equal number per class)")
    s.add_argument("--no-score", action="store_true", help="skip the classifier scores")
    s.add_argument("--timing-rounds", type=runs.nonnegative_int, default=2,
                   help="interleaved rounds of the latent-vs-pixel timing (0: skip it)")
    s.add_argument("--timing-batch", type=runs.positive_int, default=100,
                   help="digits per timed training step and sampling chain")
    runs.add_mnist_run_flags(p, "latent_diffusion", checkpoint_every=500, redo="re-sample")
    args = p.parse_args(argv)
    if args.n_samples % 10:
        p.error(f"--n-samples must be a multiple of 10 (an equal number of each digit), got {args.n_samples}")
    if args.sample_steps > args.T:
        p.error(f"--sample-steps {args.sample_steps} exceeds --T {args.T}")
    try:
        args.mults = tuple(int(v) for v in str(args.mults).split(","))
    except ValueError:
        p.error(f"--mults: expected comma-separated integers such as 1, got {args.mults!r}")
    if not args.mults or min(args.mults) < 1:
        p.error(f"--mults: expected positive integers such as 1, got {','.join(map(str, args.mults))}")
    if args.width % 8:
        p.error(f"--width {args.width}: GroupNorm's 8 groups need a multiple of 8")
    if len(args.mults) > 1:
        p.error(f"--mults {','.join(map(str, args.mults))}: {len(args.mults)} levels would halve the 7 x 7 latent "
                "grid, which does not divide by 2; use one level (--mults 1) and a wider --width")
    try:
        runs.check_reaches_noise(make_betas(args))
    except ValueError as err:
        p.error(f"--schedule {args.schedule} with --T {args.T}: {err}")
    args.vae = args.vae or os.path.join(args.out, "vae", "vae.npz")
    return args


def make_betas(args):
    """The schedule the flags describe, float64 [T]."""
    return cosine_beta_schedule(args.T) if args.schedule == "cosine" else linear_beta_schedule(args.T)


# ---------------------------------------------------------------- the frozen VAE
def frozen_vae(args):
    """The VAE at args.vae; trained first (examples/vae.py, its own output folder) when missing.
    Returns (vae, seconds spent training it here: 0 when it was already there)."""
    vae_py = example("vae")
    if not os.path.exists(args.vae):
        folder = os.path.dirname(os.path.abspath(args.vae))
        print(f"no VAE at {args.vae}: training one with examples/vae.py (latent {args.vae_latent}) into {folder}")
        argv = ["--latent", args.vae_latent, "--kl-weight", str(args.vae_kl_weight), "--out", folder, "--no-score",
                "--seed", str(args.seed)]
        argv += ["--steps", str(args.vae_steps)] if args.vae_steps else []
        argv += ["--data-dir", args.data_dir] if args.data_dir else []
        argv += ["--no-download"] if args.no_download else []
        argv += ["--train-limit", str(args.train_limit)] if args.train_limit else []
        argv += ["--resume"] if os.path.exists(os.path.join(folder, "checkpoint.npz")) else []   # a killed run
        metrics = vae_py.main(argv + args.vae_args.split())
        if os.path.abspath(os.path.join(folder, "vae.npz")) != os.path.abspath(args.vae):
            raise FileNotFoundError(f"--vae {args.vae}: examples/vae.py writes vae.npz, so name the file vae.npz")
        trained_seconds = metrics["train_seconds"]
    else:
        trained_seconds = 0.0
    vae = vae_py.load_vae(args.vae)
    if len(vae.latent_shape) != 3:
        raise ValueError(f"--vae {args.vae}: latent diffusion needs a spatial latent (k x 7 x 7), this VAE has "
                         f"latent shape {vae.latent_shape}; train one with --latent 4x7x7")
    return vae, trained_seconds


class LatentBatches(EpochSampler):
    """Batches (s * z, {"y": labels}) for the Trainer: the digits in epochs (an EpochSampler over
    their posterior means and log-variances, computed once), and a fresh z = mu + sigma * eps
    at every visit, so the diffusion learns the codes the decoder was trained on."""

    def __init__(self, space: LatentSpace, mean, log_variance, labels):
        super().__init__(np.stack([mean, log_variance], axis=1), labels)          # [N, 2, *latent]
        self.space = space

    def __call__(self, rng, n):
        params, kwargs = super().__call__(rng, n)
        return self.space.sample_codes(params[:, 0], params[:, 1], rng=rng), kwargs

    def peek(self, n):
        params, kwargs = super().peek(n)
        return self.space.scale(params[:, 0]), kwargs


def build(args, latent_shape):
    """The diffusion (L_simple with a fixed variance; a bound in bits/dim would mean nothing for
    latents) predicting v or eps, and the UNet."""
    diffusion = make_diffusion("eps", make_betas(args), model_mean_type=args.prediction, mse_weighting=args.weighting)
    model = UNet(in_channels=latent_shape[0], base_channels=args.width, channel_mults=args.mults, num_classes=10,
                 rng=np.random.default_rng(args.seed))
    return diffusion, model


def train(args, diffusion, model, data, checkpoint, saved, scale_factor):
    """Train with DiffusionLoss; saved: the checkpoint's metadata when resuming, else None. The
    run's config records the latent scale factor, and a resume refuses a VAE whose codes changed."""
    config = vars(args) if saved is None else saved["config"]
    if saved is not None and not np.isclose(config.get("scale_factor", np.nan), scale_factor, rtol=1e-6):
        raise runs.RunError(f"--resume: {checkpoint} was trained on codes with scale factor "
                            f"{config.get('scale_factor')}, but {args.vae} now gives {scale_factor:.6g}: the frozen "
                            "VAE changed; pass --out to train a new run on it")
    trainer = Trainer(model, DiffusionLoss(diffusion, label_dropout=args.label_dropout), data,
                      batch_size=args.batch, lr=args.lr, warmup_steps=min(100, args.steps // 10),
                      lr_decay_steps=args.steps, ema_decay=args.ema, ema_warmup=True, seed=args.seed,
                      log_every=100, checkpoint_path=checkpoint, checkpoint_every=args.checkpoint_every,
                      config={**config, "scale_factor": scale_factor})
    if saved is not None:
        trainer.resume(checkpoint)
        print(f"resumed from {checkpoint} at step {trainer.step} of {args.steps}")
    start = time.perf_counter()
    try:
        trainer.train(args.steps)
    except KeyboardInterrupt:
        kept = f"{checkpoint} holds step {trainer.saved_step}" if trainer.saved_step else "no checkpoint was written"
        raise runs.RunError(f"interrupted at step {trainer.step}; {kept} (--resume continues from it)") from None
    except (NonFiniteError, CheckpointWriteError) as err:
        raise runs.RunError(str(err)) from None
    return trainer, time.perf_counter() - start


# ---------------------------------------------------------------- latent vs pixel timing
def time_latent_vs_pixel(args, diffusion, model, space, rounds: int, batch: int = 100) -> dict:
    """Seconds per 100 digits of one training step and of one guided sampling chain (the same
    sampler, steps, guidance and batch), for this latent UNet + decoder and for the pixel-space
    diffusion and UNet that examples/mnist.py builds with its default flags (untrained: the time
    does not depend on the weights). The two alternate within each round, so both see the same
    machine load; the minimum over rounds is reported (the least disturbed run)."""
    pixel_args = SimpleNamespace(**td.recipes.MNIST_DEFAULTS)
    pixel_diffusion, pixel = td.recipes.mnist_model(pixel_args)
    latent_loss = DiffusionLoss(diffusion, label_dropout=args.label_dropout)
    pixel_loss = DiffusionLoss(pixel_diffusion, label_dropout=pixel_args.label_dropout)
    rng = np.random.default_rng(0)
    y = np.arange(batch) % 10
    x_pixel = rng.uniform(-1, 1, (batch, 1, 28, 28)).astype(np.float32)
    z_latent = rng.standard_normal((batch, *space.shape)).astype(np.float32)
    sample_kw = dict(sampler=args.sampler, steps=args.sample_steps, guidance=args.guidance, model_kwargs={"y": y})

    def train_step(loss, net, x):
        start = time.perf_counter()
        value, _ = loss(net, (x, {"y": y}), np.random.default_rng(1))
        value.backward()
        net.zero_grad()
        return time.perf_counter() - start

    def sample_pixels():
        start = time.perf_counter()
        run_sampler(pixel_diffusion, pixel, (batch, 1, 28, 28), np.random.default_rng(2), **sample_kw)
        return time.perf_counter() - start

    def sample_latents():
        start = time.perf_counter()
        space.decode(run_sampler(diffusion, model, (batch, *space.shape), np.random.default_rng(2), **sample_kw))
        return time.perf_counter() - start

    times = {"train_pixel": [], "train_latent": [], "sample_pixel": [], "sample_latent": []}
    for r in range(rounds):
        times["train_latent"].append(train_step(latent_loss, model, z_latent))
        times["train_pixel"].append(train_step(pixel_loss, pixel, x_pixel))
        times["sample_latent"].append(sample_latents())
        times["sample_pixel"].append(sample_pixels())
        print(f"  timing round {r + 1}/{rounds}: sampling {batch} digits, latent {times['sample_latent'][-1]:.1f} s, "
              f"pixel {times['sample_pixel'][-1]:.1f} s", flush=True)
    per100 = {k: round(100 * min(v) / batch, 3) for k, v in times.items()}
    return {"train_seconds_per_100": {"latent": per100["train_latent"], "pixel": per100["train_pixel"]},
            "sample_seconds_per_100": {"latent": per100["sample_latent"], "pixel": per100["sample_pixel"]},
            "sampling_speedup": round(per100["sample_pixel"] / per100["sample_latent"], 2),
            "training_speedup": round(per100["train_pixel"] / per100["train_latent"], 2),
            "setup": f"{args.sampler}, {args.sample_steps} steps, guidance {args.guidance:g} (two network passes per "
                     f"step), batch {batch}, latent time includes decoding; one training step = forward + "
                     f"backward at batch {batch}; minimum of {rounds} interleaved rounds",
            "pixel_model": f"examples/mnist.py's default UNet (width {pixel_args.width}, mults "
                           f"{','.join(map(str, pixel_args.mults))}: {pixel.num_parameters():,} parameters, 1 x 28 x 28)",
            "latent_model": f"this UNet ({model.num_parameters():,} parameters, {' x '.join(map(str, space.shape))}) "
                            f"+ the VAE decoder"}


def main(argv=None) -> dict:
    args = parse_args(argv)
    reuse_freed_memory()
    checkpoint = os.path.join(args.out, "checkpoint.npz")
    saved = runs.read_run_config(checkpoint, resume=args.resume, restart=args.restart)     # None: a new run
    if saved is not None:
        runs.check_same_run(saved["config"], vars(args), RUN_FLAGS, checkpoint)
    tag = runs.evaluation_tag(saved and saved["config"], vars(args), EVAL_FLAGS)
    runs.prepare_output_dir(args.out, need_bytes=50_000_000)
    try:
        images, labels = load_mnist("train", args.data_dir, download=not args.no_download, limit=args.train_limit)
    except (OSError, ValueError) as err:
        raise runs.RunError(f"MNIST: {err}") from None
    x_train = to_model_space(images)
    vae, vae_train_seconds = frozen_vae(args)
    rng = np.random.default_rng(args.seed + 2)                                  # latent statistics' own stream
    space = LatentSpace.fit(vae, x_train, rng)
    mean, log_variance = space.posterior(x_train)
    print(f"VAE {args.vae}: latent {' x '.join(map(str, space.shape))}, scale factor s = 1 / std(z) = "
          f"{space.scale_factor:.4f}")
    diffusion, model = build(args, space.shape)
    print(f"latent UNet: {model.num_parameters():,} parameters; T = {args.T}, {args.schedule} schedule")
    data = LatentBatches(space, mean, log_variance, labels)
    trainer, train_seconds = train(args, diffusion, model, data, checkpoint, saved, space.scale_factor)
    if tag:
        print(f"evaluating with other settings than the run's own: outputs are named *.{tag}.*")
    try:
        return evaluate(args, diffusion, model, space, trainer, train_seconds, vae_train_seconds, tag)
    except OSError as err:
        raise runs.RunError(f"could not write the outputs in {args.out} ({err}); files already there are intact "
                            f"and the checkpoint holds step {trainer.step}: --resume writes them again") from None


def evaluate(args, diffusion, model, space, trainer, train_seconds, vae_train_seconds, tag="") -> dict:
    """Guided samples, pictures, scores and the timing, written to args.out (names tagged with
    ``tag`` when re-sampled with other settings: see tinydiff/runs.py)."""
    def out(name):
        return os.path.join(args.out, runs.tagged(name, tag))

    rng = np.random.default_rng(args.seed + 1)                                  # sampling's own stream
    y = np.arange(args.n_samples) % 10
    sample_kw = dict(sampler=args.sampler, steps=args.sample_steps)
    metrics = {"vae": args.vae, "latent_shape": list(space.shape), "scale_factor": space.scale_factor,
               "scale_rule": "s = 1 / std of posterior samples z ~ q(z|x), all values of all training digits",
               "steps": trainer.step, "batch": args.batch, "parameters": model.num_parameters(),
               "train_seconds": round(train_seconds, 1), "vae_train_seconds": round(vae_train_seconds, 1),
               "final_loss": float(np.mean(trainer.losses[-100:])), "sampler": args.sampler,
               "sample_steps": args.sample_steps, "guidance": args.guidance}
    if vae_train_seconds:
        metrics["total_train_seconds"] = round(train_seconds + vae_train_seconds, 1)
    with trainer.ema.average_parameters(model), td.no_grad():
        start = time.perf_counter()
        codes = run_sampler(diffusion, model, (args.n_samples, *space.shape), rng, model_kwargs={"y": y},
                            guidance=args.guidance, **sample_kw)
        samples = from_model_space(space.decode(codes))[:, 0]                   # [N, 28, 28] in [0, 1]
        metrics["sample_seconds"] = round(time.perf_counter() - start, 1)
        strip_noise = rng.standard_normal((10, *space.shape), dtype=np.float32)
        strip = [from_model_space(space.decode(run_sampler(diffusion, model, (10, *space.shape),
                                                           np.random.default_rng(0), noise=strip_noise,
                                                           model_kwargs={"y": np.arange(10)}, guidance=w,
                                                           **sample_kw)))[:, 0] for w in GUIDANCE_STRIP]
        z_prior = rng.standard_normal((args.n_samples, *space.shape), dtype=np.float32)
        prior = from_model_space(space.vae.generate(z_prior))[:, 0]              # the VAE's own N(0, I) prior
    if args.timing_rounds:                      # outside no_grad: a training step is timed too
        metrics["timing"] = time_latent_vs_pixel(args, diffusion, model, space, args.timing_rounds,
                                                 args.timing_batch)

    with atomic_write(out("samples.npy")) as f:
        np.save(f, samples.astype(np.float32))
    with atomic_write(out("labels.npy")) as f:
        np.save(f, y.astype(np.int64))
    per_digit = min(10, args.n_samples // 10)
    order = np.argsort(y, kind="stable").reshape(10, -1)[:, :per_digit].ravel()          # row k = digit k
    save_image_grid(samples[order], out("grid.png"), nrow=per_digit)
    plot_image_rows(strip, out("guidance.png"), row_labels=[f"w = {w:g}" for w in GUIDANCE_STRIP],
                    col_labels=[str(k) for k in range(10)], title="the same latent noise at four guidance scales")
    plot_image_rows([prior[:10], prior[10:20], samples[order][::per_digit], samples[order][1::per_digit]],
                    out("prior_vs_diffusion.png"), row_labels=["z ~ N(0, I)", "", "z ~ diffusion", ""],
                    title="one decoder, two priors: the VAE's own N(0, I) and the latent diffusion model")

    if not args.no_score:
        from tinydiff.scorer import DigitScorer
        scorer = DigitScorer.load(data_dir=args.data_dir)
        metrics["scorer"] = scorer.score(samples, y, seed=args.seed)
        metrics["scorer_vae_prior"] = scorer.score(prior, None, seed=args.seed)
        metrics["scorer_vae_prior"]["on"] = "the same decoder fed z ~ N(0, I), the VAE's own prior"
    with atomic_write(out("metrics.json")) as f:
        f.write(json.dumps(metrics, indent=2).encode())
    report(args, metrics, tag)
    return metrics


def report(args, metrics, tag=""):
    """The folder the run wrote to, then one line per number with its target."""
    names = ["grid.png", "guidance.png", "prior_vs_diffusion.png", "metrics.json", "samples.npy", "labels.npy"]
    print(f"\nwrote {os.path.abspath(args.out)}: {', '.join(runs.tagged(n, tag) for n in names)}, checkpoint.npz")
    m, ok = metrics, {True: "ok", False: "MISSED"}
    print(f"latent {' x '.join(map(str, m['latent_shape']))}, scale factor s = 1 / std(z) = {m['scale_factor']:.4f}")
    if "total_train_seconds" in m:
        print(f"training: VAE {m['vae_train_seconds']:.0f} s + diffusion {m['train_seconds']:.0f} s = "
              f"{m['total_train_seconds']:.0f} s (target <= 600 s): {ok[m['total_train_seconds'] <= 600]}")
    else:
        print(f"training: diffusion {m['train_seconds']:.0f} s (the VAE was trained before: see its metrics.json)")
    if "scorer" in m:
        sc, prior = m["scorer"], m["scorer_vae_prior"]
        print(f"guided samples (w = {m['guidance']:g}) read as the digit asked for: {sc['accuracy']:.1%} (target "
              f">= 90%): {ok[sc['accuracy'] >= 0.9]}; Frechet distance {sc['fid']:.1f} (floor {sc['fid_floor']:.1f})")
        print(f"the same decoder fed z ~ N(0, I): {prior['confident_fraction']:.1%} confident, Frechet distance "
              f"{prior['fid']:.1f}")
    if "timing" in m:
        t = m["timing"]
        print(f"sampling, s per 100 digits: latent {t['sample_seconds_per_100']['latent']:.2f}, pixel "
              f"{t['sample_seconds_per_100']['pixel']:.2f}: {t['sampling_speedup']:.1f}x faster (target >= 5x): "
              f"{ok[t['sampling_speedup'] >= 5]}; a training step {t['training_speedup']:.1f}x faster")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

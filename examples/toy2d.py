"""Train a diffusion model on 2-D toy data and check it against the truth.

The first thing to run. It trains ToyMLP on points from a distribution whose
density we know, then

* draws samples and plots them beside the data (samples.png),
* animates the forward process destroying the data and the reverse process
  rebuilding it (forward.gif, reverse.gif; both labelled by the papers' t, with the
  true density of q(x_t) beside the forward cloud where it is known),
* computes the variational bound on -log p(x) in bits per point on 2,000
  held-out points (calc_bpd_loop: L_T + sum_t L_{t-1} + L_0) and sets it beside
  the true negative log-likelihood (the entropy, which no model can beat),
* and, for the 8-mode mixture, counts covered modes and measures precision.

Run (about a minute on 2 cores):

    python examples/toy2d.py                                   # 8-mode mixture, hybrid objective
    python examples/toy2d.py --objective eps                   # fixed variance: a worse bound
    python examples/toy2d.py --dataset swiss_roll --T 40 --objective sohl-dickstein

Everything lands in --out (default out/toy2d): samples.npy, samples.png, loss.png,
forward.gif, reverse.gif, metrics.json and checkpoint.npz (resume with --resume). The run
ends by printing that folder and one line per target, e.g.
"gap 0.136 bits (target <= 0.3): ok".

A resumed run must be the same run: --resume refuses, by name, flags that would change the
model, the diffusion or the data, and writes the outputs of a different --sampler or
--sample-steps under new names (samples.sampler-ddim.png), never over the run's own.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import tinydiff as td
from tinydiff import runs
from tinydiff.checkpoint import atomic_write

SCHEDULES = ("linear", "rescaled", "cosine", "logsnr")
N_EVAL = 2000          # held-out points for the bound, samples for the metrics
N_FRAMES = 40          # frames per GIF
LANGEVIN_STEP_LR = 2e-5


# A resumed run must be the same run (tinydiff/runs.py): these flags define what is trained and
# are refused on --resume if they differ from the checkpoint's; --steps joins them when the
# learning rate decays to 0 at --steps (with --lr-decay none a run may be trained for longer).
RUN_FLAGS = ("dataset", "noise", "objective", "sd_mean", "schedule", "beta_start", "beta_end", "logsnr_max",
             "logsnr_min", "T", "hidden", "batch", "lr", "lr_decay", "ema", "seed")
# These only change what is computed from the trained model: allowed on --resume, with outputs
# under new names (samples.sampler-ddim.png) so the run's own are never overwritten.
EVAL_FLAGS = ("sampler", "sample_steps")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" after each flag, except where there is no single default value
    (None): those flags say in their own words what happens when they are left out."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--dataset", default="8gaussians",
                   choices=["8gaussians", "gaussian", "swiss_roll", "moons", "checkerboard"], help="training data")
    p.add_argument("--objective", default="hybrid", choices=sorted(td.OBJECTIVES),
                   help="what the network predicts and what it is trained on (td.OBJECTIVES): eps = the noise, "
                        "variance fixed to beta_t, loss L_simple (Ho et al. 2020); hybrid = the noise and a "
                        "variance between beta-tilde_t and beta_t, loss L_simple + 0.001 L_vlb (Nichol & Dhariwal "
                        "2021; model_var_type='learned_range', loss_type='hybrid', two output heads); "
                        "sohl-dickstein = the mean and variance of each reverse step, trained on the bound itself "
                        "(Sohl-Dickstein et al. 2015)"),
    p.add_argument("--noise", type=runs.nonnegative_float, default=None,
                   help="swiss_roll / moons: std of the Gaussian noise around the curve, in the data's raw "
                        "units before standardising (default: the dataset's own, 0.5 for swiss_roll, 0.1 for moons)")
    p.add_argument("--schedule", default="linear", choices=SCHEDULES,
                   help="noise schedule beta_t: linear from --beta-start to --beta-end; rescaled: the same with "
                        "both ends times 1000/T (improved-diffusion); cosine (Nichol & Dhariwal eq. 17); "
                        "logsnr: log-SNR falling linearly from --logsnr-max to --logsnr-min (schedules.logsnr_beta_schedule)")
    p.add_argument("--beta-start", type=runs.open_unit, default=1e-4, help="linear/rescaled: the first beta")
    p.add_argument("--beta-end", type=runs.open_unit, default=0.02, help="linear/rescaled: the last beta")
    p.add_argument("--logsnr-max", type=runs.finite_float, default=14.0,
                   help="logsnr: log(alpha_bar / (1 - alpha_bar)) after the first step (14: noise std e^-7 = 0.0009)")
    p.add_argument("--logsnr-min", type=runs.finite_float, default=-5.0,
                   help="logsnr: the same after the last step (-5: alpha_bar_T = 0.0067, L_T ~ 0.01 bits per point)")
    p.add_argument("--sd-mean", default="direct", choices=["direct", "residual"],
                   help="sohl-dickstein: the network outputs the mean and log-variance themselves (direct), or "
                        "perturbations of the forward step, as in the paper's code (residual, models.ForwardResidual)")
    p.add_argument("--T", type=runs.positive_int, default=1000, help="number of diffusion steps")
    p.add_argument("--steps", type=runs.positive_int, default=6000, help="training steps")
    p.add_argument("--batch", type=runs.positive_int, default=512, help="batch size")
    p.add_argument("--lr", type=runs.positive_float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--lr-decay", default="cosine", choices=["cosine", "none"],
                   help="after warm-up, cosine-decay the learning rate to 0 at --steps, or keep it")
    p.add_argument("--ema", type=runs.decay_rate, default=0.995, help="EMA decay of the weights used for evaluation")
    p.add_argument("--hidden", type=runs.positive_int, default=256, help="width of ToyMLP's hidden layers")
    p.add_argument("--seed", type=runs.nonnegative_int, default=0, help="seed of every random draw")
    p.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim", "langevin"],
                   help="ancestral DDPM, deterministic DDIM (eta=0), or annealed Langevin on the score")
    p.add_argument("--sample-steps", type=runs.positive_int, default=None,
                   help="sample on this many evenly spaced timesteps, at most --T (default: all T for ddpm "
                        "and ddim, 100 for langevin)")
    p.add_argument("--out", default=os.path.join("out", "toy2d"), help="output folder")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in OUT/checkpoint.npz, or re-sample a finished one (a different "
                            "--sampler or --sample-steps writes its outputs under new names)")
    again.add_argument("--restart", action="store_true",
                       help="start a new run in OUT even though it holds one (its checkpoint is overwritten)")
    p.add_argument("--checkpoint-every", type=runs.positive_int, default=None,
                   help="write OUT/checkpoint.npz every this many steps (default: a quarter of --steps)")
    p.add_argument("--no-gifs", action="store_true", help="skip the animations (faster)")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p, args) -> None:
    """Refuse, while parsing and in one line, flags that make no sense together."""
    if args.noise is not None and args.dataset not in ("swiss_roll", "moons"):
        p.error(f"--noise: only swiss_roll and moons have a noise level, got --dataset {args.dataset}")
    if args.sd_mean == "residual" and args.objective != "sohl-dickstein":
        p.error(f"--sd-mean residual: only the sohl-dickstein objective outputs a mean, "
                f"got --objective {args.objective}")
    if args.sample_steps is not None and args.sample_steps > args.T:
        p.error(f"--sample-steps {args.sample_steps}: a sampler can visit at most the T = {args.T} trained steps")
    try:
        betas = make_betas(args)
        runs.check_reaches_noise(betas)
    except ValueError as err:
        p.error(f"--schedule {args.schedule} with --T {args.T}: {err}")
    if args.sampler == "langevin":                      # the sampler's default step_lr; t = 0 is always kept
        try:
            td.samplers.check_langevin_step_lr(np.cumprod(1.0 - betas), LANGEVIN_STEP_LR)
        except ValueError as err:
            p.error(f"--sampler langevin with --schedule {args.schedule}: {err}")


def make_betas(args) -> np.ndarray:
    """The schedule chosen on the command line, float64 [T]."""
    if args.schedule == "linear":
        return td.linear_beta_schedule(args.T, args.beta_start, args.beta_end)
    if args.schedule == "rescaled":          # improved-diffusion: T = 1000's betas stretched to T steps
        scale = 1000.0 / args.T
        if args.beta_end * scale >= 1:
            raise ValueError(f"the last beta, --beta-end * 1000 / T = {args.beta_end * scale:g}, "
                             f"must stay below 1; use a larger --T or a smaller --beta-end")
        return td.linear_beta_schedule(args.T, args.beta_start * scale, args.beta_end * scale)
    if args.schedule == "cosine":
        return td.cosine_beta_schedule(args.T)
    return td.logsnr_beta_schedule(args.T, args.logsnr_max, args.logsnr_min)


def make_data(args):
    """The dataset, with --noise passed on where the dataset has a noise level."""
    if args.noise is None:
        return td.data.make_dataset(args.dataset)
    return td.data.make_dataset(args.dataset, noise=args.noise)


def sample_steps(args):
    """The sampler's steps= argument: None (every timestep), or --sample-steps; Langevin
    defaults to 100 noise levels, whose 10 moves each cost as much as 1000 DDPM steps."""
    if args.sampler == "langevin":
        return args.sample_steps or min(100, args.T)
    return args.sample_steps


def sample(args, diffusion, model, rng):
    """Draw N_EVAL samples and a trajectory [frames, N, 2] from noise to data."""
    options = {"step_lr": LANGEVIN_STEP_LR} if args.sampler == "langevin" else {}
    return td.sample(diffusion, model, (N_EVAL, 2), rng, sampler=args.sampler, steps=sample_steps(args), **options,
                     progress=td.Progress(0, f"sampling ({args.sampler})"), return_trajectory=True)


def frame_indices(length: int, n: int = N_FRAMES, dense_at_start: bool = True) -> np.ndarray:
    """n frame indices in 0..length-1, quadratically denser at the start (or the end):
    the data's structure lives in the few steps nearest t = 0, so that is where to look."""
    u = np.linspace(0, 1, n) ** 2
    idx = (u if dense_at_start else 1 - u[::-1]) * (length - 1)
    return np.unique(idx.round().astype(int))


def animate(args, data, diffusion, held_out, trajectory, rng, out):
    """forward.gif and reverse.gif, both labelled by the papers' t (1..T; t = 0 is the data)."""
    lims = td.viz.square_limits(held_out, trajectory[0], trajectory[-1])
    ts = frame_indices(args.T)                                     # code indices: the papers' t = ts + 1
    forward = [held_out] + [diffusion.q_sample(held_out, np.full(N_EVAL, t), rng=rng) for t in ts]
    density, title = "histogram", None
    if isinstance(data, td.data.GaussianMixture):                 # q(x_t) is a mixture too: draw the truth
        grid = td.viz.grid_points(lims, 64)
        oracle = td.oracles.GaussianMixtureOracle(data.means, data.std, data.weights, diffusion)
        density = [np.exp(data.log_prob(grid))] + [np.exp(oracle.log_prob(grid, np.full(len(grid), t))) for t in ts]
        density, title = np.stack(density).reshape(-1, 64, 64), "true density of $x_t$, $q(x_t)$"
    td.viz.animate_clouds(forward, ["t = 0 (data)"] + [f"t = {t + 1}" for t in ts],
                          out("forward.gif"), title=r"forward $q(x_t \mid x_0)$", lims=lims,
                          reference=held_out, points_label="$x_t$", density=density, density_title=title)
    # trajectory[k] follows k reverse steps from the noise: on a chain of K kept steps it sits at
    # chain index K-1-k, i.e. the papers' t = timestep_map[K-1-k] + 1, and trajectory[K] is x_0.
    steps = sample_steps(args)
    kept = (td.respace(diffusion, steps) if steps else diffusion).timestep_map + 1        # papers' t, [K]
    K = len(kept)
    keep = frame_indices(len(trajectory), dense_at_start=False)
    if args.sampler == "langevin":       # its frames are y = x_t / sqrt(alpha_bar_t) after each noise level
        labels = [f"level t = {kept[K - max(k, 1)]}" for k in keep]   # frame k > 0: after level K-k
        title, points = "annealed Langevin on the score", r"$x_t / \sqrt{\bar\alpha_t}$"
    else:
        labels = [f"t = {kept[K - 1 - k]}" if k < K else "t = 0 (sample)" for k in keep]
        title, points = rf"reverse $p_\theta(x_{{t-1}} \mid x_t)$, {args.sampler}", "$x_t$"
    td.viz.animate_clouds(trajectory[keep], labels, out("reverse.gif"), title=title, lims=lims,
                          reference=held_out, points_label=points, density="histogram")


def report(args, metrics, tag=""):
    """The folder the run wrote to, then one line per number with its target."""
    names = ["samples.png", "loss.png"] + ([] if args.no_gifs else ["forward.gif", "reverse.gif"])
    names = [runs.tagged(n, tag) for n in names + ["metrics.json", "samples.npy"]] + ["checkpoint.npz"]
    print(f"\nwrote {os.path.abspath(args.out)}: {', '.join(names)}")
    m = metrics
    print(f"bound on -log p(x): {m['nll_bound_bits']:.3f} +- {m['nll_bound_bits_stderr']:.3f} bits per point "
          f"(prior L_T {m['prior_bits']:.3f}, decoder L_0 {m['decoder_bits']:.2f}: a density, so it can be < 0)")
    ok = {True: "ok", False: "MISSED"}
    if "bound_gap_bits" in m:
        gap, floor = m["bound_gap_bits"], -4 * m["nll_bound_bits_stderr"]
        print(f"gap {gap:.3f} bits to the true NLL {m['true_nll_bits']:.3f} (target <= 0.3, and not below "
              f"{floor:.3f}, or the bound is wrong): {ok[floor < gap <= 0.3]}")
    if "mode_coverage" in m:
        print(f"modes covered {m['mode_coverage']}/8 (target 8/8): {ok[m['mode_coverage'] == 8]}")
        print(f"mode precision {m['mode_precision']:.3f} (target >= 0.95; a perfect sampler scores 0.989): "
              f"{ok[m['mode_precision'] >= 0.95]}")
    print(f"energy distance {m['energy_distance']:.4f} (0: indistinguishable from fresh data)")


def main(argv=None) -> dict:
    args = parse_args(argv)
    td.runtime.reuse_freed_memory()            # keep NumPy's freed temporaries mapped: see tinydiff/runtime.py
    checkpoint = os.path.join(args.out, "checkpoint.npz")
    saved = runs.read_run_config(checkpoint, resume=args.resume, restart=args.restart)    # None: a new run
    growable = ("steps",) if args.lr_decay == "none" else ()
    if saved is not None:
        runs.check_same_run(saved["config"], vars(args), RUN_FLAGS + ("steps",), checkpoint, growable)
    tag = runs.evaluation_tag(saved and saved["config"], vars(args), EVAL_FLAGS)
    config = vars(args) if saved is None else runs.resumed_config(saved["config"], vars(args), growable)

    data = make_data(args)
    diffusion = td.make_diffusion(args.objective, make_betas(args), decoder_nll="continuous")
    model = td.models.ToyMLP(heads=2 if diffusion.learned_variance else 1, hidden=args.hidden,
                             rng=np.random.default_rng(args.seed))
    if args.sd_mean == "residual":
        model = td.models.ForwardResidual(model, diffusion.betas)
    # Two checkpoints (the new one is written beside the old) plus ~10 MB of pictures.
    removed = runs.prepare_output_dir(args.out, need_bytes=2 * runs.checkpoint_bytes(model) + 10_000_000)
    if removed:
        print(f"removed {len(removed)} temporary file(s) left in {args.out} by a killed run: {', '.join(removed)}")
    trainer = td.Trainer(model, td.DiffusionLoss(diffusion), data, batch_size=args.batch, lr=args.lr,
                         warmup_steps=min(200, args.steps // 10), ema_decay=args.ema,
                         lr_decay_steps=args.steps if args.lr_decay == "cosine" else None, seed=args.seed,
                         log_every=max(1, args.steps // 10), checkpoint_path=checkpoint,
                         checkpoint_every=args.checkpoint_every or max(1, args.steps // 4), config=config)
    if saved is not None:
        trainer.resume(checkpoint)
        print(f"resumed from {checkpoint} at step {trainer.step}")
    if tag:
        print(f"evaluating with other settings than the run's own: outputs are named *.{tag}.*")
    print(f"training {args.objective} on {args.dataset}: T={args.T}, {args.steps} steps of batch {args.batch}")
    start = time.perf_counter()
    try:
        trainer.train(args.steps)
    except KeyboardInterrupt:
        kept = f"{checkpoint} holds step {trainer.saved_step}" if trainer.saved_step else "no checkpoint was written"
        raise runs.RunError(f"interrupted at step {trainer.step}; {kept} (--resume continues from it)") from None
    except (td.train.NonFiniteError, td.train.CheckpointWriteError) as err:
        raise runs.RunError(str(err)) from None
    train_seconds = time.perf_counter() - start
    try:
        return evaluate(args, data, diffusion, model, trainer, train_seconds, tag)
    except OSError as err:
        raise runs.RunError(f"could not write the outputs in {args.out} ({err}); files already there are intact "
                            f"and the checkpoint holds step {trainer.step}: --resume writes them again") from None


def evaluate(args, data, diffusion, model, trainer, train_seconds, tag="") -> dict:
    """The bound, samples, metrics and pictures of the trained model, written to args.out
    (names tagged with ``tag`` when re-evaluated with other settings: see tinydiff/runs.py)."""
    def out(name):
        return os.path.join(args.out, runs.tagged(name, tag))

    eval_rng = np.random.default_rng(args.seed + 1)            # separate from training's stream
    held_out = data.sample(N_EVAL, eval_rng)
    with trainer.ema.average_parameters(model), td.no_grad():
        bound = diffusion.calc_bpd_loop(model, held_out, rng=eval_rng, progress=td.Progress(args.T, "bound"))
        samples, trajectory = sample(args, diffusion, model, eval_rng)
    bits = bound["total_bits"].astype(np.float64)

    metrics = {
        "dataset": args.dataset, "objective": args.objective, "sampler": args.sampler, "T": args.T,
        "steps": trainer.step, "train_seconds": round(train_seconds, 2),
        "final_loss": float(np.mean(trainer.losses[-100:])),
        "nll_bound_bits": float(bits.mean()),
        "nll_bound_bits_stderr": float(bits.std(ddof=1) / np.sqrt(len(bits))),
        "prior_bits": float(bound["prior_bpd"].mean() * 2),
        "decoder_bits": float(bound["vb"][:, 0].mean() * 2),
        "energy_distance": td.metrics.energy_distance(samples, data.sample(N_EVAL, eval_rng)),
    }
    if args.sample_steps is not None:
        metrics["sample_steps"] = args.sample_steps
    if hasattr(data, "entropy_bits") and getattr(data, "noise", 1.0) > 0:     # a noiseless roll has no density
        metrics["true_nll_bits"] = float(data.entropy_bits())
        metrics["bound_gap_bits"] = metrics["nll_bound_bits"] - metrics["true_nll_bits"]
    if args.dataset == "8gaussians":
        metrics["mode_coverage"] = int(td.metrics.mode_coverage(samples, data.means, data.std))
        metrics["mode_precision"] = float(td.metrics.mode_precision(samples, data.means, data.std))

    with atomic_write(out("samples.npy")) as f:
        np.save(f, samples.astype(np.float32))
    td.viz.plot_samples(samples, held_out, out("samples.png"),
                        title=f"{args.objective} on {args.dataset}, {args.sampler} sampler")
    td.viz.plot_loss(trainer.losses, path=out("loss.png"), title=f"training loss ({args.objective})")
    if not args.no_gifs:
        animate(args, data, diffusion, held_out, trajectory, eval_rng, out)
    with atomic_write(out("metrics.json")) as f:
        f.write(json.dumps(metrics, indent=2).encode())
    report(args, metrics, tag)
    return metrics


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

"""The score view of a diffusion model on 2-D data: the learned score field beside the true one,
and sampling by Langevin dynamics on it.

A network trained to predict the noise eps is a score estimator in disguise:

    s_theta(x_t, t) = -eps_theta(x_t, t) / sqrt(1 - alpha_bar_t)  ~  grad_x log q(x_t)

(Vincent 2011; Song & Ermon 2019; Ho et al. 2020, sec. 3.2; GaussianDiffusion.score_from_eps).
Sachit Gaudi's "Think Diffusion! Think Probability" draws the same line: modelling the
normalising constant can be avoided by learning the score, and Langevin dynamics samples
from it. For the 8-mode mixture the noised marginal q(x_t) is a mixture too, so its score
is known exactly (tinydiff.oracles) and the learned field can be checked point by point.

* score.png  top row: the learned score at several t as arrows over the true density of
             q(x_t); middle row: the true score; bottom: E||s_theta - s||^2 over x_t ~ q(x_t)
             at every t of a log-spaced grid, beside E||s||^2 for scale.
* samples.png  ancestral (DDPM Algorithm 2) beside annealed Langevin samples (Song & Ermon
             2019, Algorithm 1) from the same network.
* metrics.json  the score error per t, and energy distance, modes covered and precision of
             each sampler, with the learned network and with the exact score (the oracle),
             which separates the sampler's error from the network's.

Run (about a minute on 2 cores):

    python examples/score.py
    python examples/score.py --steps 8000 --langevin-steps 20
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

SHOW_T = (1, 10, 50, 200, 600)       # the papers' t of the quiver panels


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=4000, help="training steps of the eps-network (batch --batch)")
    p.add_argument("--batch", type=int, default=512, help="batch size")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, cosine decay to 0)")
    p.add_argument("--hidden", type=int, default=256, help="width of ToyMLP's hidden layers")
    p.add_argument("--T", type=int, default=1000, help="number of diffusion steps (linear betas 1e-4..0.02)")
    p.add_argument("--langevin-levels", type=int, default=100,
                   help="noise levels of annealed Langevin, spaced evenly over the T steps")
    p.add_argument("--langevin-steps", type=int, default=10, help="Langevin moves per noise level")
    p.add_argument("--n-eval", type=int, default=2000, help="points per t for the score error, and samples per sampler")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--out", default=os.path.join("out", "score"), help="output folder")
    args = p.parse_args(argv)
    for name in ("steps", "batch", "hidden", "langevin_levels", "langevin_steps", "n_eval"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.T < max(SHOW_T):
        p.error(f"--T must be >= {max(SHOW_T)} (the last panel's t), got {args.T}")
    if args.langevin_levels > args.T:
        p.error(f"--langevin-levels must be <= --T = {args.T}, got {args.langevin_levels}")
    return args


def learned_score(diffusion, model, x_t, t):
    """s_theta(x_t, t) = -eps_theta(x_t, t) / sqrt(1 - alpha_bar_t): the network read as a score. [B, 2]."""
    with td.no_grad():
        eps = diffusion.p_mean_variance(model, x_t, t)["pred_eps"]
    return diffusion.score_from_eps(x_t, t, np.asarray(eps, dtype=np.float64))


def score_errors(diffusion, model, oracle, data, rng, ts, n):
    """E||s_theta - s||^2 and E||s||^2 over x_t ~ q(x_t), n points per t (code indices ts)."""
    error, scale = [], []
    for t in ts:
        tt = np.full(n, t)
        x_t = diffusion.q_sample(data.sample(n, rng, dtype=np.float64), tt, rng=rng)
        true = oracle.score(x_t, tt)
        error.append(float(np.mean(np.sum((learned_score(diffusion, model, x_t, tt) - true) ** 2, axis=1))))
        scale.append(float(np.mean(np.sum(true ** 2, axis=1))))
    return np.array(error), np.array(scale)


def plot_scores(diffusion, model, oracle, ts, errors, scale, path, n):
    """score.png: learned and true fields over the true density, then the error per t."""
    lims, side = ((-3.0, 3.0), (-3.0, 3.0)), 21                          # side x side arrows
    fig = td.viz.figure((3.0 * len(SHOW_T), 9.6), dpi=100)
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.0, 1.0])
    axes = top.subplots(2, len(SHOW_T))
    arrows = td.viz.grid_points(lims, side)                              # [side * side, 2]
    shade = td.viz.grid_points(lims, 120)
    for col, paper_t in enumerate(SHOW_T):
        t = paper_t - 1                                                  # code index
        density = np.exp(oracle.log_prob(shade, np.full(len(shade), t))).reshape(120, 120)
        fields = (learned_score(diffusion, model, arrows, np.full(len(arrows), t)),
                  oracle.score(arrows, np.full(len(arrows), t)))
        # one arrow scale per column, from the true field, so the two rows compare directly; arrows
        # are capped at twice that length so that a wild field (the learned one far from the data,
        # where training never looked) stays readable
        length = np.quantile(np.linalg.norm(fields[1], axis=1), 0.9)
        for row, field in enumerate(fields):
            norm = np.linalg.norm(field, axis=1, keepdims=True)
            field = field * np.minimum(1.0, 2.0 * length / np.maximum(norm, 1e-12))
            ax = axes[row, col]
            ax.imshow(np.sqrt(density), origin="lower", extent=(*lims[0], *lims[1]), cmap="Greys", alpha=0.7)
            ax.quiver(arrows[:, 0], arrows[:, 1], field[:, 0], field[:, 1], color="#4c72b0" if row == 0 else "#c44e52",
                      angles="xy", scale_units="xy", scale=length / 0.28, width=0.006)
            ax.set_xlim(*lims[0])
            ax.set_ylim(*lims[1])
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t = {paper_t}: an arrow 0.28 long = score {length:.3g}", fontsize=10)
        axes[0, 0].set_ylabel(r"learned: $-\epsilon_\theta(x_t, t) / \sqrt{1-\bar\alpha_t}$", fontsize=10)
        axes[1, 0].set_ylabel(r"true: $\nabla_x \log q(x_t)$ (oracle)", fontsize=10)
    top.suptitle(r"score fields over the true density of $q(x_t)$ (grey); arrows capped at twice the stated length",
                 fontsize=12)
    ax = bottom.subplots()
    paper = np.asarray(ts) + 1
    ax.plot(paper, errors, "o-", color="#4c72b0", markersize=4, label=r"error $E\,\|s_\theta - \nabla\log q\|^2$")
    ax.plot(paper, scale, "s--", color="0.4", markersize=4, label=r"size of the true score $E\,\|\nabla\log q\|^2$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("diffusion step t (log scale)")
    ax.set_title(rf"mean squared score error over $x_t \sim q(x_t)$, {n:,} points per t", fontsize=11)
    ax.grid(True, alpha=0.25, linewidth=0.5)
    ax.legend(fontsize=9, frameon=False)
    return td.viz.save(fig, path)


def sampler_metrics(samples, data):
    """Energy distance to as many fresh data points, modes covered and mode precision."""
    fresh = data.sample(len(samples), np.random.default_rng(12345))
    return {"energy_distance": td.metrics.energy_distance(samples, fresh),
            "mode_coverage": int(td.metrics.mode_coverage(samples, data.means, data.std)),
            "mode_precision": float(td.metrics.mode_precision(samples, data.means, data.std))}


def main(argv=None) -> dict:
    args = parse_args(argv)
    td.runtime.reuse_freed_memory()
    os.makedirs(args.out, exist_ok=True)
    data = td.data.make_dataset("8gaussians")
    diffusion = td.make_diffusion("eps", td.linear_beta_schedule(args.T))        # L_simple: denoising score matching
    model = td.models.ToyMLP(hidden=args.hidden, rng=np.random.default_rng(args.seed))
    trainer = td.Trainer(model, diffusion, data, batch_size=args.batch, lr=args.lr,
                         warmup_steps=min(200, args.steps // 10), lr_decay_steps=args.steps, ema_decay=0.995,
                         seed=args.seed, log_every=max(1, args.steps // 10))
    print(f"training the eps-network on 8gaussians: T = {args.T}, {args.steps} steps of batch {args.batch}")
    trainer.train(args.steps)
    oracle = td.oracles.GaussianMixtureOracle(data.means, data.std, data.weights, diffusion)
    rng = np.random.default_rng(args.seed + 1)
    ts = np.unique(np.geomspace(1, args.T, 25).round().astype(int)) - 1            # code indices, log-spaced
    results = {}
    with trainer.ema.average_parameters(model):
        errors, scale = score_errors(diffusion, model, oracle, data, rng, ts, args.n_eval)
        plot_scores(diffusion, model, oracle, ts, errors, scale, os.path.join(args.out, "score.png"), args.n_eval)
        shape, langevin = (args.n_eval, 2), dict(steps=args.langevin_levels, n_steps_each=args.langevin_steps)
        samples = {}
        for name, net in (("network", model), ("exact score", oracle.eps_model())):
            start = time.perf_counter()
            samples[name, "ancestral"] = td.ddpm_sample_loop(diffusion, net, shape, rng,
                                                             progress=td.Progress(args.T, f"ancestral ({name})"))
            samples[name, "langevin"] = td.langevin_sample_loop(diffusion, net, shape, rng, **langevin,
                                                                progress=td.Progress(0, f"langevin ({name})"))
            for sampler in ("ancestral", "langevin"):
                results[f"{sampler}, {name}"] = sampler_metrics(samples[name, sampler], data)
            print(f"  sampled with the {name} in {time.perf_counter() - start:.1f} s")
    held_out = data.sample(args.n_eval, rng)
    td.viz.plot_samples(samples["network", "langevin"], samples["network", "ancestral"],
                        os.path.join(args.out, "samples.png"), names=("ancestral (DDPM)", "annealed Langevin"),
                        title=f"one eps-network, two samplers (Langevin: {args.langevin_levels} noise levels x "
                              f"{args.langevin_steps} moves)")
    metrics = {"steps": args.steps, "T": args.T, "langevin_levels": args.langevin_levels,
               "langevin_steps": args.langevin_steps,
               "score_mse_per_t": {str(t + 1): e for t, e in zip(ts, errors)},
               "true_score_size_per_t": {str(t + 1): s for t, s in zip(ts, scale)},
               "samplers": results, "held_out_energy_distance": td.metrics.energy_distance(held_out, data.sample(
                   args.n_eval, np.random.default_rng(12345)))}
    with atomic_write(os.path.join(args.out, "metrics.json")) as f:
        f.write(json.dumps(metrics, indent=2).encode())

    print(f"\nwrote {os.path.abspath(args.out)}: score.png, samples.png, metrics.json")
    relative = errors / scale
    print("score error relative to its size, E||s_theta - s||^2 / E||s||^2: " +
          ", ".join(f"{r:.2g} at t = {t + 1}" for r, t in list(zip(relative, ts))[::6]))
    print(f"{'sampler, score':<28} {'energy dist.':>12} {'modes':>6} {'precision':>10}   "
          f"(two samples of the data itself: energy distance {metrics['held_out_energy_distance']:.4f})")
    for name, m in results.items():
        print(f"{name:<28} {m['energy_distance']:>12.4f} {m['mode_coverage']:>4}/8 {m['mode_precision']:>10.3f}")
    net = results["ancestral, network"]
    ok = net["mode_coverage"] == 8 and net["mode_precision"] >= 0.9
    print(f"ancestral samples from the network: {net['mode_coverage']}/8 modes, precision "
          f"{net['mode_precision']:.3f} (target 8/8 and >= 0.9): {'ok' if ok else 'MISSED'}")
    metrics["ok"] = ok
    return metrics


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)

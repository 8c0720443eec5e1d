"""The live demo: a diffusion model on 2-D points in five steps, every line explained.

1. data: 8 Gaussian blobs on a circle, whose density we know;
2. a noise schedule beta_t and a diffusion built from it;
3. a batch noised in one jump, x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps;
4. a small network trained to predict that noise (DDPM Algorithm 1) with td.Trainer;
5. samples drawn from noise by running the chain backwards (DDPM Algorithm 2).

The README's quickstart is the body of main() line for line, except that it shows each
picture with td.viz.show(...) (a window from a `python` session, inline in a notebook)
where this script saves it in --out (default out/quickstart): schedule.png, noising.gif,
loss.png, samples.png. Run (about 20 s on 2 cores):

    python examples/quickstart.py
    python examples/quickstart.py --steps 200        # 200 steps: a blob, not yet 8 modes
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import tinydiff as td


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=2000,
                   help="training steps (200 give a blob; about 2,000 give the 8 modes)")
    p.add_argument("--samples", type=int, default=2000, help="number of points to sample")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--out", default=os.path.join("out", "quickstart"), help="output folder")
    args = p.parse_args(argv)
    if args.steps < 1 or args.samples < 2:
        p.error(f"--steps must be >= 1 and --samples >= 2, got {args.steps} and {args.samples}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    out = lambda name: os.path.join(args.out, name)                 # noqa: E731  (where each picture goes)

    rng = np.random.default_rng(args.seed)                          # every random draw comes from this generator

    # 1. Data: 8 Gaussian blobs of std 0.1 on a circle of radius 2; data.sample(n, rng) -> [n, 2].
    data = td.data.make_dataset("8gaussians")

    # 2. A schedule and a diffusion. beta_t is the variance of the noise added at step t, for T = 1000
    #    steps (DDPM's linear schedule, 1e-4 to 0.02). "eps" is the DDPM objective: the network predicts
    #    the noise and the reverse steps use the variance beta_t (td.OBJECTIVES lists the others).
    betas = td.linear_beta_schedule(1000)
    diffusion = td.make_diffusion("eps", betas)
    td.viz.plot_schedules({"linear, T = 1000": betas}, out("schedule.png"))

    # 3. Noise a batch in one jump: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4).
    #    t is 0-based in code: index t is the papers' step t + 1.
    x0 = data.sample(2000, rng)
    ts = [0, 50, 100, 200, 400, 999]
    frames = [x0] + [diffusion.q_sample(x0, np.full(len(x0), t), rng=rng) for t in ts]
    td.viz.animate_clouds(frames, ["t = 0 (data)"] + [f"t = {t + 1}" for t in ts], out("noising.gif"), fps=2,
                          points_label="x_t")

    # 4. Train eps_theta(x_t, t), an MLP with a sinusoidal timestep embedding. Each step draws a batch,
    #    a timestep and a noise per point, and regresses the noise (DDPM Algorithm 1) with AdamW; the
    #    learning rate decays to 0 at the last step, which steadies a short run.
    model = td.models.ToyMLP(rng=rng)
    trainer = td.Trainer(model, diffusion, data, batch_size=512, lr=2e-3, lr_decay_steps=args.steps)
    trainer.train(args.steps)
    td.viz.plot_loss(trainer.losses, path=out("loss.png"))

    # 5. Sample (DDPM Algorithm 2): start from pure noise x_T ~ N(0, I) and take the 1000 reverse steps
    #    p(x_{t-1} | x_t), each a Gaussian around the network's denoised guess.
    with td.no_grad():
        samples = td.ddpm_sample_loop(diffusion, model, (args.samples, 2), rng, progress=td.Progress(1000, "sampling"))
    td.viz.plot_samples(samples, data.sample(2000, rng), out("samples.png"), title=f"after {args.steps} steps")

    coverage = td.metrics.mode_coverage(samples, data.means, data.std)
    precision = td.metrics.mode_precision(samples, data.means, data.std)
    print(f"\nwrote {os.path.abspath(args.out)}: schedule.png, noising.gif, loss.png, samples.png")
    print(f"modes covered {coverage}/8 (target 8/8): {'ok' if coverage == 8 else 'MISSED'}")
    print(f"samples within 3 std of a mode: {precision:.3f} (a perfect sampler: 0.989; the 6,000-step "
          f"examples/toy2d.py run: 0.976)")
    return {"steps": args.steps, "mode_coverage": coverage, "mode_precision": precision}


if __name__ == "__main__":
    sys.exit(0 if main()["mode_coverage"] == 8 else 1)

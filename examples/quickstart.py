"""Quickstart: a diffusion model on 2-D points in five steps, with the training loop written out.

1. data: 8 Gaussian blobs on a circle, whose density we know;
2. a noise schedule beta_t and a diffusion built from it;
3. a batch noised in one jump, x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps;
4. a small network trained to predict that noise: DDPM Algorithm 1, line by line;
5. samples drawn from noise by running the chain backwards (DDPM Algorithm 2).

Run it as a script (about 20 s on 2 idle cores), or open it as a notebook (VS Code, or
Jupyter with jupytext: every `# %%` is a cell):

    python examples/quickstart.py
    python examples/quickstart.py --steps 200        # 200 steps: a blob, not yet 8 modes

Writes schedule.png, noising.gif, loss.png, samples.png and metrics.json to --out
(default out/quickstart). The course page: docs/training.md.
"""
# %%
import argparse
import json
import os

import numpy as np

import tinydiff as td

# %% [markdown]
# ## Settings
# Every setting is a flag of the script (`--steps 200`); in a notebook, edit them here.

# %%
p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--steps", type=td.runs.positive_int, default=2000,
               help="training steps (200 give a blob; about 2,000 give the 8 modes) (default: 2000)")
p.add_argument("--samples", type=td.runs.positive_int, default=2000, help="points to sample (default: 2000)")
p.add_argument("--seed", type=td.runs.nonnegative_int, default=0, help="seed of every random draw (default: 0)")
p.add_argument("--out", default=os.path.join("out", "quickstart"), help="output folder (default: out/quickstart)")
args = p.parse_args([] if td.progress.in_notebook() else None)          # a notebook: the defaults
os.makedirs(args.out, exist_ok=True)
out = lambda name: os.path.join(args.out, name)                     # noqa: E731  (where each picture goes)
rng = np.random.default_rng(args.seed)                              # every random draw comes from this generator

# %% [markdown]
# ## 1. Data
# 8 Gaussian blobs of std 0.1 on a circle of radius 2. `data.sample(n, rng)` returns `[n, 2]`.

# %%
data = td.data.make_dataset("8gaussians")

# %% [markdown]
# ## 2. A schedule and a diffusion
# beta_t is the variance of the noise added at step t, for T = 1000 steps (DDPM's linear schedule,
# 1e-4 to 0.02). `"eps"` is the DDPM objective: the network predicts the noise, and the reverse
# steps use the variance beta_t (`td.OBJECTIVES` lists the others).

# %%
betas = td.linear_beta_schedule(1000)
diffusion = td.make_diffusion("eps", betas)
T = diffusion.num_timesteps
td.viz.plot_schedules({"linear, T = 1000": betas}, out("schedule.png"))

# %% [markdown]
# ## 3. Noise a batch in one jump
# x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4). In code t is 0-based:
# index t is the papers' step t + 1.

# %%
x0 = data.sample(2000, rng)
ts = [0, 50, 100, 200, 400, 999]
frames = [x0] + [diffusion.q_sample(x0, np.full(len(x0), t), rng=rng) for t in ts]
td.viz.animate_clouds(frames, ["t = 0 (data)"] + [f"t = {t + 1}" for t in ts], out("noising.gif"), fps=2,
                      points_label="x_t")

# %% [markdown]
# ## 4. Train eps_theta(x_t, t): DDPM Algorithm 1
# The network is an MLP with a sinusoidal timestep embedding. Each step draws a batch, one
# timestep and one noise per point, noises the batch to x_t and regresses the noise. AdamW
# takes the step; its learning rate decays to 0 at the last step, which steadies a short run,
# and the gradient norm is clipped at 1. (`td.Trainer` runs this same loop with checkpoints,
# resume and an averaged copy of the weights: see examples/toy2d.py.)

# %%
model = td.models.ToyMLP(rng=rng)
optimizer = td.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
lr_schedule = td.optim.LinearWarmup(optimizer, warmup_steps=0, decay_steps=args.steps)   # cosine decay to 0
losses, progress = [], td.Progress(args.steps, "training", every=200)
for step in range(1, args.steps + 1):
    x0 = data.sample(512, rng)                                      # line 2: x_0 ~ q(x_0)          [512, 2]
    t = rng.integers(0, T, size=len(x0))                            # line 3: t ~ Uniform({1..T})   [512]
    eps = rng.standard_normal(x0.shape).astype(x0.dtype)            # line 4: eps ~ N(0, I)         [512, 2]
    x_t = diffusion.q_sample(x0, t, noise=eps)                      # sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps
    loss = ((eps - model(x_t, t)) ** 2).mean()                      # line 5: ||eps - eps_theta(x_t, t)||^2
    optimizer.zero_grad()
    loss.backward()                                                 # line 5: the gradient of that loss
    td.optim.clip_grad_norm(model.parameters(), 1.0)
    optimizer.step()
    lr_schedule.step()
    losses.append(loss.item())
    progress.update(step, loss=float(np.mean(losses[-200:])))
td.viz.plot_loss(losses, path=out("loss.png"))

# %% [markdown]
# ## 5. Sample: DDPM Algorithm 2
# Start from pure noise x_T ~ N(0, I) and take the 1000 reverse steps p(x_{t-1} | x_t), each a
# Gaussian around the network's guess of the less noisy point.

# %%
with td.no_grad():
    samples = td.ddpm_sample_loop(diffusion, model, (args.samples, 2), rng, progress=td.Progress(T, "sampling"))
td.viz.plot_samples(samples, data.sample(2000, rng), out("samples.png"), title=f"after {args.steps} steps")

# %% [markdown]
# ## The numbers
# A mode is covered when some sample falls within 3 std of its centre; precision is the
# fraction of samples that do. A perfect sampler has precision 0.989 (3 std of a 2-D Gaussian).

# %%
metrics = {"steps": args.steps, "mode_coverage": td.metrics.mode_coverage(samples, data.means, data.std),
           "mode_precision": td.metrics.mode_precision(samples, data.means, data.std)}
with td.checkpoint.atomic_write(out("metrics.json")) as f:
    f.write(json.dumps(metrics, indent=2).encode())
print(f"\nwrote {os.path.abspath(args.out)}: schedule.png, noising.gif, loss.png, samples.png, metrics.json")
td.runs.target(f"modes covered {metrics['mode_coverage']}/8", "8/8", metrics["mode_coverage"] == 8)
print(f"samples within 3 std of a mode: {metrics['mode_precision']:.3f} (a perfect sampler: 0.989; the 6,000-step "
      f"examples/toy2d.py run: 0.976)")

"""The forward process on a photo: step by step and in one jump, and what the schedules do.

Bipin Koirala's notes on diffusion models noise a photo with a loop of forward steps
(DDPM eq. 2); Nichol & Dhariwal (2021), figure 1, compare noise schedules along the chain.
This lesson does both, and checks that the two routes to x_t give the same distribution:

* forward.png    the photo noised step by step, x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps
                 (q(x_t | x_{t-1}), t times), above the same photo noised in one jump,
                 x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (q(x_t | x_0)); below,
                 at every t, the signal kept and the noise added by each route, beside the
                 closed forms sqrt(alpha_bar_t) and 1 - alpha_bar_t;
* schedules.png  beta_t, alpha_bar_t, the signal-to-noise ratio and beta-tilde_t / beta_t of the
                 linear and cosine schedules at T = 1000 and 4000 (Nichol & Dhariwal fig. 1);
* metrics.json   each route's largest deviation from the closed forms, in standard errors,
                 and per schedule how much of the chain is nearly pure noise.

Run (a few seconds), or open as a notebook (`# %%` cells; VS Code, or Jupyter with jupytext):

    python examples/forward_process.py                      # a generated test picture
    python examples/forward_process.py photo.jpg --size 192 # any photo Pillow can read

The course page: docs/forward-process.md.
"""
# %%
import argparse
import json
import os

import numpy as np

import tinydiff as td

# %% Settings: each one is a flag of the script; in a notebook, edit them here
p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("image", nargs="?", default=None, help="a photo to noise; without it, a generated test picture")
p.add_argument("--size", type=td.runs.positive_int, default=128, help="side of the square photo (default: 128)")
p.add_argument("--T", type=td.runs.positive_int, default=1000, help="number of diffusion steps (default: 1000)")
p.add_argument("--schedule", default="linear", choices=["linear", "cosine"],
               help="beta_t: DDPM's linear 1e-4..0.02 or Nichol & Dhariwal's cosine (default: linear)")
p.add_argument("--seed", type=td.runs.nonnegative_int, default=0, help="seed of the noise (default: 0)")
p.add_argument("--out", default=os.path.join("out", "forward_process"), help="output folder (default: %(default)s)")
args = p.parse_args([] if td.progress.in_notebook() else None)          # a notebook: the defaults
if args.size < 2 or args.T < 2:
    p.error(f"--size and --T must be >= 2, got {args.size} and {args.T}")
os.makedirs(args.out, exist_ok=True)
SHOW_T = [t for t in (0, 10, 25, 50, 100, 200, 400, 1000) if t <= args.T]    # the papers' t of the strips
BOUND = 5.0                                  # the routes "agree" when within 5 standard errors at every t


# %% [markdown]
# ## The photo as x_0
# Cropped to a square, resized, and scaled to [-1, 1] per channel value, the range DDPM trains
# on: x_0 has shape [3, size, size]. Without a photo, a picture drawn with NumPy: sharp edges
# and smooth gradients both, to watch which disappears first under noise.

# %%
def test_picture(size):
    """Sky, sun, hills, a house and a chequered field: uint8 [size, size, 3]."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)                       # [H, W] in [0, 1], y downwards
    img = np.stack([0.45 + 0.35 * y, 0.65 + 0.25 * y, 0.98 - 0.08 * y], axis=-1)   # sky
    img[(x - 0.78) ** 2 + (y - 0.2) ** 2 < 0.1 ** 2] = (1.0, 0.82, 0.2)            # sun
    img[y > 0.6 + 0.07 * np.sin(2 * np.pi * (1.3 * x + 0.2))] = (0.35, 0.62, 0.3)  # far hill
    near = y > 0.74 + 0.05 * np.sin(2 * np.pi * (0.8 * x + 0.6))
    img[near] = (0.2, 0.45, 0.18)                                                   # near hill
    img[near & (y > 0.86) & ((np.floor(x * 16) + np.floor(y * 16)) % 2 == 0)] = (0.85, 0.75, 0.3)   # field
    img[(x > 0.18) & (x < 0.4) & (y > 0.5) & (y < 0.72)] = (0.85, 0.25, 0.2)        # house
    img[(y > 0.5 - (0.14 - np.abs(x - 0.29))) & (y <= 0.5) & (np.abs(x - 0.29) < 0.14)] = (0.4, 0.2, 0.15)  # roof
    img[(x > 0.26) & (x < 0.32) & (y > 0.6) & (y < 0.72)] = (0.3, 0.18, 0.1)        # door
    return (img * 255).round().astype(np.uint8)


def load_photo(path, size):
    """The photo at ``path``, centre-cropped to a square and resized: uint8 [size, size, 3]."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            side = min(im.size)
            left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2                       # the centre square
            square = im.convert("RGB").crop((left, top, left + side, top + side))
            return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS))
    except OSError as err:
        raise td.runs.RunError(f"photo {path}: {err}") from None


pixels = test_picture(args.size) if args.image is None else load_photo(args.image, args.size)
x0 = pixels.astype(np.float64).transpose(2, 0, 1) / 127.5 - 1.0          # [3, H, W], 0..255 -> [-1, 1]
source = os.path.basename(args.image) if args.image else "a generated test picture"

# %% [markdown]
# ## Two routes to x_t
# Step by step: apply the kernel q(x_t | x_{t-1}) (`diffusion.q_step`) t times. In one jump:
# the closed form q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (`q_sample`).
# If both are right, their x_t have the same law. Over the pixels of one image we measure what
# that law predicts: the least-squares slope of x_t on x_0 (its mean is sqrt(alpha_bar_t)) and
# the variance of x_t - sqrt(alpha_bar_t) x_0 (it is 1 - alpha_bar_t), with their standard
# errors sqrt((1 - ab) / S_xx) and (1 - ab) sqrt(2 / n).

# %%
betas = td.linear_beta_schedule(args.T) if args.schedule == "linear" else td.cosine_beta_schedule(args.T)
diffusion = td.GaussianDiffusion(betas)
ab = diffusion.alphas_cumprod                                          # alpha_bar_t, [T]
def run_both_routes(diffusion, x0, rng):
    """Noise x0 [3, H, W] along the chain both ways. Returns, per route, the (slope, noise)
    statistics at every t [T, 2] and the images at SHOW_T."""
    T, ab, centred = diffusion.num_timesteps, diffusion.alphas_cumprod, x0 - x0.mean()
    stats = {"step by step": np.zeros((T, 2)), "one jump": np.zeros((T, 2))}
    shown = {"step by step": [x0], "one jump": [x0]}
    x, progress = x0[None], td.Progress(T, f"noising {source}")           # x: [1, 3, H, W]
    for i in range(T):                                                 # code index i is the papers' t = i + 1
        t = np.array([i])
        x = diffusion.q_step(x, t, rng=rng)                            # q(x_t | x_{t-1}): one more step
        jump = diffusion.q_sample(x0[None], t, rng=rng)                # q(x_t | x_0): from x_0 directly
        for route, x_t in (("step by step", x[0]), ("one jump", jump[0])):
            stats[route][i] = np.sum(centred * x_t) / np.sum(centred ** 2), np.var(x_t - np.sqrt(ab[i]) * x0)
            if i + 1 in SHOW_T:
                shown[route].append(x_t)
        progress.update(i + 1)
    return stats, shown


stats, shown = run_both_routes(diffusion, x0, np.random.default_rng(args.seed))
sxx = np.sum((x0 - x0.mean()) ** 2)
slope_se, noise_se = np.sqrt((1 - ab) / sxx), (1 - ab) * np.sqrt(2.0 / x0.size)      # [T] each

# %% [markdown]
# ## The picture: the two strips, then the statistics at every t

# %%
fig = td.viz.figure((13.0, 7.4), dpi=100)
top, bottom = fig.subfigures(2, 1, height_ratios=[1.2, 1.0])
grid = top.subplots(2, len(SHOW_T))
for row, route in enumerate(shown):
    for col, (t, image) in enumerate(zip(SHOW_T, shown[route])):
        grid[row, col].imshow(np.clip((image.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0), interpolation="nearest")
        grid[row, col].set(xticks=[], yticks=[], title=(f"t = {t}" + " ($x_0$)" * (t == 0)) if row == 0 else "")
grid[0, 0].set_ylabel("step by step:\n$q(x_t \\mid x_{t-1})$, t times", fontsize=11)
grid[1, 0].set_ylabel("one jump:\n$q(x_t \\mid x_0)$", fontsize=11)
top.suptitle(f"the forward process on {source}: two routes to the same distribution of $x_t$", fontsize=13)
t_axis, every = np.arange(1, args.T + 1), max(1, args.T // 60)         # markers at ~60 of the T steps
panels = bottom.subplots(1, 2)
for k, (closed, name) in enumerate(((np.sqrt(ab), r"$\sqrt{\bar\alpha_t}$"), (1 - ab, r"$1-\bar\alpha_t$"))):
    for route, color, marker in (("step by step", "#4c72b0", "o"), ("one jump", "#dd8452", "x")):
        panels[k].plot(t_axis[::every], stats[route][::every, k], marker, color=color, markersize=4, label=route)
    panels[k].plot(t_axis, closed, color="k", linewidth=1.2, label=name + " (closed form)")
    panels[k].set(xlabel="diffusion step t", yscale="linear" if k == 0 else "log")
    panels[k].legend(fontsize=9, frameon=False)
panels[0].set_title(r"signal kept: slope of $x_t$ regressed on $x_0$ over the pixels", fontsize=11)
panels[1].set_title(r"noise added: variance of $x_t - \sqrt{\bar\alpha_t}\,x_0$ over the pixels", fontsize=11)
td.viz.save(fig, os.path.join(args.out, "forward.png"))

# %% [markdown]
# ## Schedules along the chain (Nichol & Dhariwal 2021, fig. 1)
# The linear schedule destroys the signal early: a large part of its chain is nearly pure
# noise (SNR = alpha_bar / (1 - alpha_bar) < 0.01), steps that teach the network little. The
# cosine schedule spreads the destruction evenly. beta-tilde_t / beta_t (the two fixed reverse
# variances) is close to 1 except in the first few steps, so the choice between them matters
# only there.

# %%
schedules = {   # improved-diffusion's linear schedule at T = 4000 is DDPM's scaled by 1000 / T
    "linear, T = 1000": td.linear_beta_schedule(1000),
    "linear, T = 4000": td.linear_beta_schedule(4000, 1e-4 * 1000 / 4000, 0.02 * 1000 / 4000),
    "cosine, T = 1000": td.cosine_beta_schedule(1000),
    "cosine, T = 4000": td.cosine_beta_schedule(4000)}
rows = {}
for label, b in schedules.items():
    d = td.GaussianDiffusion(b)
    a = d.alphas_cumprod
    rows[label] = {"alpha_bar_T": float(a[-1]), "fraction_snr_below_0.01": float(np.mean(a / (1 - a) < 0.01)),
                   "steps_ratio_below_0.9": int(np.sum(d.posterior_variance / d.betas < 0.9))}
styles = {label: {"color": "#4c72b0" if label.startswith("linear") else "#dd8452",
                  "linestyle": "-" if "1000" in label else "--"} for label in schedules}
td.viz.plot_schedules(schedules, os.path.join(args.out, "schedules.png"), styles=styles,
                      title="noise schedules along the chain (Nichol & Dhariwal 2021, fig. 1)")

# %% [markdown]
# ## The numbers

# %%
metrics = {"image": source, "size": args.size, "T": args.T, "schedule": args.schedule, "schedules": rows}
for route, s in stats.items():
    metrics[f"{route.replace(' ', '_')}_slope_max_se"] = float(np.max(np.abs(s[:, 0] - np.sqrt(ab)) / slope_se))
    metrics[f"{route.replace(' ', '_')}_noise_max_se"] = float(np.max(np.abs(s[:, 1] - (1 - ab)) / noise_se))
metrics["ok"] = all(metrics[f"{r}_{k}_max_se"] <= BOUND for r in ("step_by_step", "one_jump")
                    for k in ("slope", "noise"))
with td.checkpoint.atomic_write(os.path.join(args.out, "metrics.json")) as f:
    f.write(json.dumps(metrics, indent=2).encode())
print(f"\nwrote {os.path.abspath(args.out)}: forward.png, schedules.png, metrics.json")
for route in stats:
    key = route.replace(" ", "_")
    slope, noise = metrics[f"{key}_slope_max_se"], metrics[f"{key}_noise_max_se"]
    td.runs.target(f"{route:>12}: signal within {slope:.1f} and noise within {noise:.1f} standard errors of "
                   f"sqrt(alpha_bar_t), 1 - alpha_bar_t at all {args.T} t", f"<= {BOUND:g}", max(slope, noise) <= BOUND)
print(f"{'schedule':<17} {'alpha_bar_T':>11} {'SNR < 0.01':>11} {'beta-tilde/beta < 0.9':>22}")
for label, row in rows.items():
    print(f"{label:<17} {row['alpha_bar_T']:11.2e} {row['fraction_snr_below_0.01']:11.1%} "
          f"{row['steps_ratio_below_0.9']:15d} steps")

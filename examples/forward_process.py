"""The forward process on a photo: step by step and in one jump, and what the schedules do.

Bipin Koirala's notes on diffusion models noise a photo with a loop of forward steps
(DDPM eq. 2); Nichol & Dhariwal (2021), figure 1, compare the two fixed reverse variances
along the chain. This script does both with tinydiff:

* forward.png  the photo x_0 noised step by step, x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps
               applied t times (the kernel q(x_t | x_{t-1}), GaussianDiffusion.q_step), above
               the same x_0 noised in one jump, x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
               (the closed form q(x_t | x_0), GaussianDiffusion.q_sample), at the same t; below
               them, at every t, the statistics of the pixels that show the two routes agree in
               distribution: the slope of x_t regressed on x_0 (the signal kept, against
               sqrt(alpha_bar_t)) and the variance of x_t - sqrt(alpha_bar_t) x_0 (the noise,
               against 1 - alpha_bar_t).
* schedules.png  beta_t, alpha_bar_t, the signal-to-noise ratio and beta-tilde_t / beta_t for
               the linear and cosine schedules at T = 1000 and 4000 (Nichol & Dhariwal fig. 1).
* metrics.json the largest deviation of each route from the closed form, in standard errors,
               and per schedule how much of the chain is nearly pure noise.

Run (a few seconds):

    python examples/forward_process.py                      # a generated test picture
    python examples/forward_process.py photo.jpg --size 192 # any photo Pillow can read

The photo is cropped to a square, resized to --size pixels and scaled to [-1, 1] per
channel value, the range DDPM trains on; strips show x_t clipped back to [-1, 1].
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

import tinydiff as td
from tinydiff.checkpoint import atomic_write

SHOW_T = (0, 10, 25, 50, 100, 200, 400, 1000)     # the papers' t of the strips' columns (t <= T kept)
BOUND = 5.0                                        # "agree" = within this many standard errors at every t


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """"(default: ...)" after each flag, except where the help says in words what None means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("image", nargs="?", default=None,
                   help="a photo to noise (any format Pillow reads); without it, a generated test picture")
    p.add_argument("--size", type=int, default=128, help="side of the square the photo is resized to, in pixels")
    p.add_argument("--T", type=int, default=1000, help="number of diffusion steps of the noised photo")
    p.add_argument("--schedule", default="linear", choices=["linear", "cosine"],
                   help="beta_t of the noised photo: DDPM's linear 1e-4..0.02, or Nichol & Dhariwal's cosine")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--out", default=os.path.join("out", "forward_process"), help="output folder")
    args = p.parse_args(argv)
    for name in ("size", "T"):
        if getattr(args, name) < 2:
            p.error(f"--{name} must be >= 2, got {getattr(args, name)}")
    return args


def test_picture(size: int) -> np.ndarray:
    """A generated picture, uint8 [size, size, 3]: sky, sun, hills, a house, a chequered field.
    Drawn with NumPy (no download, no file): sharp edges and smooth gradients both, so one
    can watch which disappears first under noise."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)                       # [H, W] in [0, 1], y downwards
    img = np.stack([0.45 + 0.35 * y, 0.65 + 0.25 * y, 0.98 - 0.08 * y], axis=-1)   # sky
    img[(x - 0.78) ** 2 + (y - 0.2) ** 2 < 0.1 ** 2] = (1.0, 0.82, 0.2)            # sun
    img[y > 0.6 + 0.07 * np.sin(2 * np.pi * (1.3 * x + 0.2))] = (0.35, 0.62, 0.3)  # far hill
    near = y > 0.74 + 0.05 * np.sin(2 * np.pi * (0.8 * x + 0.6))
    img[near] = (0.2, 0.45, 0.18)                                                   # near hill
    field = near & (y > 0.86)
    img[field & ((np.floor(x * 16) + np.floor(y * 16)) % 2 == 0)] = (0.85, 0.75, 0.3)
    img[(x > 0.18) & (x < 0.4) & (y > 0.5) & (y < 0.72)] = (0.85, 0.25, 0.2)        # house
    img[(y > 0.5 - (0.14 - np.abs(x - 0.29))) & (y <= 0.5) & (np.abs(x - 0.29) < 0.14)] = (0.4, 0.2, 0.15)  # roof
    img[(x > 0.26) & (x < 0.32) & (y > 0.6) & (y < 0.72)] = (0.3, 0.18, 0.1)        # door
    return (img * 255).round().astype(np.uint8)


def load_photo(path, size: int) -> np.ndarray:
    """The photo at ``path`` (or the test picture if None) as x_0: float64 [3, size, size] in [-1, 1]."""
    if path is None:
        pixels = test_picture(size)
    else:
        try:
            from PIL import Image
        except ImportError as e:
            raise SystemExit(f"reading a photo needs Pillow: pip install tinydiff[examples] ({e})")
        with Image.open(path) as im:
            im = im.convert("RGB")
            side = min(im.size)                                        # centre crop to a square
            left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
            pixels = np.asarray(im)
    return pixels.astype(np.float64).transpose(2, 0, 1) / 127.5 - 1.0       # [3, H, W], 0..255 -> [-1, 1]


def pixel_statistics(x_t, x0, alpha_bar):
    """What q(x_t | x_0) = N(sqrt(ab) x_0, (1 - ab) I) predicts, measured over the pixels of one image:
    slope  = least-squares slope of x_t on x_0        (its mean is sqrt(ab) x_0)
    noise  = variance of x_t - sqrt(ab) x_0           (it is 1 - ab)
    and their standard errors under that law, for n values: sqrt((1 - ab) / S_xx) and (1 - ab) sqrt(2 / n)."""
    centred = x0 - x0.mean()
    sxx = float(np.sum(centred ** 2))
    slope = float(np.sum(centred * x_t) / sxx)
    noise = float(np.var(x_t - np.sqrt(alpha_bar) * x0))
    return slope, noise, float(np.sqrt((1 - alpha_bar) / sxx)), float((1 - alpha_bar) * np.sqrt(2.0 / x0.size))


def run_both_routes(diffusion, x0, rng):
    """Noise x0 [3, H, W] along the chain both ways. Returns per-route statistics [T, 4] and the
    images at SHOW_T (t <= T), keyed by route."""
    T = diffusion.num_timesteps
    batch = x0[None]                                                    # [1, 3, H, W]
    stats = {"step by step": np.zeros((T, 4)), "one jump": np.zeros((T, 4))}
    shown = {"step by step": [x0], "one jump": [x0]}
    x = batch
    progress = td.Progress(T, "noising")
    for i in range(T):                                                  # code index i is the papers' t = i + 1
        t = np.array([i])
        x = diffusion.q_step(x, t, rng=rng)                             # q(x_t | x_{t-1}): one more step
        jump = diffusion.q_sample(batch, t, rng=rng)                    # q(x_t | x_0): from x_0 directly
        ab = diffusion.alphas_cumprod[i]
        for route, x_t in (("step by step", x), ("one jump", jump)):
            stats[route][i] = pixel_statistics(x_t[0], x0, ab)
            if i + 1 in SHOW_T:
                shown[route].append(x_t[0])
        progress.update(i + 1)
    return stats, shown


def plot_forward(diffusion, stats, shown, path, source):
    """forward.png: the two strips, then the signal and noise statistics at every t."""
    ts = [t for t in SHOW_T if t <= diffusion.num_timesteps]
    fig = td.viz.figure((13.0, 7.4), dpi=100)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.2, 1.0])
    grid = top.subplots(2, len(ts))
    for row, route in enumerate(("step by step", "one jump")):
        for col, (t, image) in enumerate(zip(ts, shown[route])):
            ax = grid[row, col]
            ax.imshow(np.clip((image.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t = {t}" + (" ($x_0$)" if t == 0 else ""), fontsize=11)
        grid[row, 0].set_ylabel(r"step by step:" "\n" r"$q(x_t \mid x_{t-1})$, t times" if row == 0 else
                                r"one jump:" "\n" r"$q(x_t \mid x_0)$", fontsize=11)
    top.suptitle(f"the forward process on {source}: two routes to the same distribution of $x_t$", fontsize=13)
    t_axis = np.arange(1, diffusion.num_timesteps + 1)
    ab = diffusion.alphas_cumprod
    left, right = bottom.subplots(1, 2)
    every = max(1, len(t_axis) // 60)                                   # markers at ~60 of the T steps
    for route, color, marker in (("step by step", "#4c72b0", "o"), ("one jump", "#dd8452", "x")):
        s = stats[route]
        left.plot(t_axis[::every], s[::every, 0], marker, color=color, markersize=4, label=route, linestyle="none")
        right.plot(t_axis[::every], s[::every, 1], marker, color=color, markersize=4, label=route, linestyle="none")
    left.plot(t_axis, np.sqrt(ab), color="k", linewidth=1.2, label=r"$\sqrt{\bar\alpha_t}$ (closed form)")
    right.plot(t_axis, 1.0 - ab, color="k", linewidth=1.2, label=r"$1-\bar\alpha_t$ (closed form)")
    left.set_title(r"signal kept: slope of $x_t$ regressed on $x_0$ over the pixels", fontsize=11)
    right.set_title(r"noise added: variance of $x_t - \sqrt{\bar\alpha_t}\,x_0$ over the pixels (log scale)",
                    fontsize=11)
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xlabel("diffusion step t", fontsize=10)
        ax.grid(True, alpha=0.25, linewidth=0.5)
        ax.legend(fontsize=9, frameon=False)
    return td.viz.save(fig, path)


def schedule_table():
    """The schedules of Nichol & Dhariwal's figure 1 and, for each, how much of the chain is nearly
    pure noise (SNR < 0.01) and how many steps have beta-tilde_t / beta_t < 0.9."""
    schedules = {
        # improved-diffusion's linear schedule is DDPM's scaled by 1000 / T, so alpha_bar_T stays ~4e-5
        "linear, T = 1000": td.linear_beta_schedule(1000),
        "linear, T = 4000": td.linear_beta_schedule(4000, 1e-4 * 1000 / 4000, 0.02 * 1000 / 4000),
        "cosine, T = 1000": td.cosine_beta_schedule(1000),
        "cosine, T = 4000": td.cosine_beta_schedule(4000),
    }
    rows = {}
    for label, betas in schedules.items():
        d = td.GaussianDiffusion(betas)
        ab, ratio = d.alphas_cumprod, d.posterior_variance / d.betas
        rows[label] = {"alpha_bar_T": float(ab[-1]), "fraction_snr_below_0.01": float(np.mean(ab / (1 - ab) < 0.01)),
                       "steps_ratio_below_0.9": int(np.sum(ratio < 0.9))}
    return schedules, rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    x0 = load_photo(args.image, args.size)
    betas = td.linear_beta_schedule(args.T) if args.schedule == "linear" else td.cosine_beta_schedule(args.T)
    diffusion = td.GaussianDiffusion(betas)
    source = os.path.basename(args.image) if args.image else "a generated test picture"
    print(f"noising {source} ({args.size} x {args.size} x 3 values) through T = {args.T} steps, {args.schedule} betas")
    stats, shown = run_both_routes(diffusion, x0, np.random.default_rng(args.seed))
    plot_forward(diffusion, stats, shown, os.path.join(args.out, "forward.png"), source)
    schedules, rows = schedule_table()
    styles = {label: {"color": "#4c72b0" if label.startswith("linear") else "#dd8452",
                      "linestyle": "-" if "1000" in label else "--"} for label in schedules}
    td.viz.plot_schedules(schedules, os.path.join(args.out, "schedules.png"), styles=styles,
                          title="noise schedules along the chain (Nichol & Dhariwal 2021, fig. 1)")

    ab = diffusion.alphas_cumprod
    metrics = {"image": source, "size": args.size, "T": args.T, "schedule": args.schedule, "schedules": rows}
    for route, s in stats.items():
        key = route.replace(" ", "_")
        metrics[f"{key}_slope_max_se"] = float(np.max(np.abs(s[:, 0] - np.sqrt(ab)) / s[:, 2]))
        metrics[f"{key}_noise_max_se"] = float(np.max(np.abs(s[:, 1] - (1 - ab)) / s[:, 3]))
    with atomic_write(os.path.join(args.out, "metrics.json")) as f:
        f.write(json.dumps(metrics, indent=2).encode())

    print(f"\nwrote {os.path.abspath(args.out)}: forward.png, schedules.png, metrics.json")
    ok = True
    for route in stats:
        key = route.replace(" ", "_")
        slope, noise = metrics[f"{key}_slope_max_se"], metrics[f"{key}_noise_max_se"]
        good = slope <= BOUND and noise <= BOUND
        ok &= good
        print(f"{route:>12}: signal within {slope:.1f} and noise within {noise:.1f} standard errors of "
              f"sqrt(alpha_bar_t), 1 - alpha_bar_t at all {args.T} t (target <= {BOUND:g}): {'ok' if good else 'MISSED'}")
    for label, row in rows.items():
        print(f"{label}: nearly pure noise (SNR < 0.01) for {100 * row['fraction_snr_below_0.01']:.1f}% of the "
              f"chain; beta-tilde_t / beta_t < 0.9 at {row['steps_ratio_below_0.9']} steps")
    metrics["ok"] = ok
    return metrics


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)

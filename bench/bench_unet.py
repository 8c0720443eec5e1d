"""Benchmark: MNIST-UNET (``tinydiff.models.UNet()``) against its PyTorch twin on a CPU.

Times, at batch 64 by default, one training step (q_sample, forward, eps-MSE, backward,
Adam) and one sampling forward (no graph) of tinydiff and of the identical PyTorch model
(``TorchUNet`` below: same parameter names, so tinydiff's state dict loads into it), in
interleaved rounds in one run, and prints JSON with median milliseconds, the ratios and
the peak memory of each:

    python bench/bench_unet.py                     # needs a Python that also has torch
    python bench/bench_unet.py --check             # outputs and gradients agree (float32)?
    python bench/bench_unet.py --breakdown         # where the time goes, layer by layer
    python bench/bench_unet.py --plain             # tinydiff's plain layers (td.plain()) instead
    python bench/bench_unet.py --cpu-time           # one thread each, CPU time: robust on a busy machine
    python bench/bench_unet.py --untuned            # without tinydiff.runtime.tune_process (see below)

Peak memory is measured two ways. ``tinydiff_peak_mb`` is tracemalloc's peak of live
NumPy buffers during one step. ``*_rss_peak_mb`` is the same for both frameworks: the
rise of the resident set (VmHWM, reset through /proc/self/clear_refs) during one step, in
a fresh subprocess whose glibc returns every block >= 64 KiB to the kernel when it is
freed (MALLOC_MMAP_THRESHOLD_=65536), so the resident set follows live memory. (PyTorch
does not report CPU allocations to tracemalloc.)

The process is tuned as the Trainer tunes it (``tinydiff.runtime.tune_process``: NumPy's
OpenBLAS on one thread while tinydiff's thread pool owns the cores, freed memory kept mapped);
``--untuned`` leaves OpenBLAS's thread count and glibc's malloc at their defaults.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tinydiff as td  # noqa: E402
from tinydiff import Tensor, no_grad  # noqa: E402
from tinydiff.models import UNet  # noqa: E402
from tinydiff.optim import Adam  # noqa: E402

T = 1000


# ---------------------------------------------------------------------- the PyTorch twin
def torch_unet_class():
    """``TorchUNet``, defined lazily so this file imports without torch."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class ResBlock(nn.Module):
        def __init__(self, cin, cout, emb_dim, groups):
            super().__init__()
            self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
            self.emb_proj = nn.Linear(emb_dim, cout)
            self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
            self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

        def forward(self, x, emb_act):
            h = self.conv1(F.silu(self.norm1(x)))
            h = h + self.emb_proj(emb_act)[:, :, None, None]
            h = self.conv2(F.silu(self.norm2(h)))
            return h + (x if self.skip is None else self.skip(x))

    class Attention(nn.Module):
        def __init__(self, c, groups):
            super().__init__()
            self.norm, self.qkv, self.proj = nn.GroupNorm(groups, c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

        def forward(self, x):
            B, C, H, W = x.shape
            q, k, v = self.qkv(self.norm(x)).reshape(B, 3 * C, H * W).split(C, dim=1)
            a = torch.softmax((q * C ** -0.5).transpose(1, 2) @ k, dim=-1)       # [B, N, N]
            return x + self.proj((v @ a.transpose(1, 2)).reshape(B, C, H, W))

    class TorchUNet(nn.Module):
        """tinydiff.models.UNet in PyTorch, for the same arguments (unconditional or labelled)."""

        def __init__(self, in_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_classes=None,
                     learned_variance=False, attention_levels=(), time_dim=None, emb_dim=None, num_groups=8):
            super().__init__()
            chans = [base_channels * m for m in channel_mults]
            self.levels, self.attention_levels = len(chans), tuple(sorted(set(attention_levels)))
            self.time_dim = time_dim or base_channels
            emb_dim = emb_dim or 4 * base_channels
            classes = () if num_classes is None else (
                tuple(num_classes) if isinstance(num_classes, (tuple, list)) else (num_classes,))
            self.time_embed = nn.Sequential(nn.Linear(self.time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            self.label_emb = nn.ModuleList([nn.Embedding(k + 1, emb_dim) for k in classes])
            self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
            self.down_blocks, self.downsamples, self.down_attn = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            prev = base_channels
            for i in range(self.levels - 1):
                self.down_blocks.append(ResBlock(prev, chans[i], emb_dim, num_groups))
                if i in self.attention_levels:
                    self.down_attn.append(Attention(chans[i], num_groups))
                self.downsamples.append(nn.Conv2d(chans[i], chans[i], 3, stride=2, padding=1))
                prev = chans[i]
            self.mid_block1 = ResBlock(prev, chans[-1], emb_dim, num_groups)
            self.mid_attn = Attention(chans[-1], num_groups)
            self.mid_block2 = ResBlock(chans[-1], chans[-1], emb_dim, num_groups)
            self.upsamples, self.up_blocks, self.up_attn = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            for i in reversed(range(self.levels - 1)):
                self.upsamples.append(nn.Conv2d(chans[i + 1], chans[i + 1], 3, padding=1))
                self.up_blocks.append(ResBlock(chans[i + 1] + chans[i], chans[i], emb_dim, num_groups))
                if i in self.attention_levels:
                    self.up_attn.append(Attention(chans[i], num_groups))
            self.out_norm = nn.GroupNorm(num_groups, chans[0] if self.levels > 1 else chans[-1])
            self.out_conv = nn.Conv2d(self.out_norm.num_channels, in_channels * (2 if learned_variance else 1),
                                      3, padding=1)

        def forward(self, x, t, y=None):
            half = self.time_dim // 2                      # sinusoidal embedding, angles in float64
            freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
            angles = t.double()[:, None] * freqs[None]
            emb = self.time_embed(torch.cat([torch.sin(angles), torch.cos(angles)], 1).float())
            for a, table in enumerate(self.label_emb):
                emb = emb + table(y[:, a])
            emb_act = F.silu(emb)
            h, skips, attn = self.conv_in(x), [], iter(self.down_attn)
            for i in range(self.levels - 1):
                h = self.down_blocks[i](h, emb_act)
                if i in self.attention_levels:
                    h = next(attn)(h)
                skips.append(h)
                h = self.downsamples[i](h)
            h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb_act)), emb_act)
            attn = iter(self.up_attn)
            for k, i in enumerate(reversed(range(self.levels - 1))):
                h = self.upsamples[k](F.interpolate(h, scale_factor=2, mode="nearest"))
                h = self.up_blocks[k](torch.cat([h, skips.pop()], 1), emb_act)
                if i in self.attention_levels:
                    h = next(attn)(h)
            return self.out_conv(F.silu(self.out_norm(h)))

    return TorchUNet


def torch_twin(model: UNet, **kwargs):
    """A TorchUNet holding ``model``'s weights (kwargs: the UNet's constructor arguments)."""
    import torch
    twin = torch_unet_class()(**kwargs)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return twin


# ---------------------------------------------------------------------- one step of each
def make_data(batch, size=28, seed=0):
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((batch, 1, size, size), dtype=np.float32)
    t = rng.integers(0, T, size=batch)
    eps = rng.standard_normal((batch, 1, size, size), dtype=np.float32)
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, T)).astype(np.float32)
    a = ab[t][:, None, None, None]
    return x0, t, eps, a


def tinydiff_step(model, opt, x0, t, eps, a):
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps                    # q_sample, DDPM eq. 4
    opt.zero_grad()
    diff = model(x_t, t) - eps
    loss = (diff * diff).mean()                                     # L_simple, DDPM eq. 14
    loss.backward()
    opt.step()
    return loss.item()


def tinydiff_sample(model, x, t):
    with no_grad():
        return model(x, t).data


def torch_step(torch, model, opt, x0, t, eps, a):
    x_t = torch.sqrt(a) * x0 + torch.sqrt(1 - a) * eps
    opt.zero_grad()
    loss = ((model(x_t, t) - eps) ** 2).mean()
    loss.backward()
    opt.step()
    return loss.item()


def torch_sample(torch, model, x, t):
    with torch.no_grad():
        return model(x, t)


def build(batch, plain=False, seed=1):
    """Both models with the same weights, their optimizers and the step functions.
    plain: tinydiff's steps run inside ``td.plain()`` (every layer on its plain path)."""
    model = UNet(rng=np.random.default_rng(seed))
    x0, t, eps, a = make_data(batch)
    opt = Adam(model.parameters(), lr=1e-4)
    path = td.plain if plain else contextlib.nullcontext

    def train():
        with path():
            return tinydiff_step(model, opt, x0, t, eps, a)

    def sample():
        with path():
            return tinydiff_sample(model, x0, t)

    return model, (x0, t, eps, a), {"tinydiff_train": train, "tinydiff_sample": sample}


def add_torch(fns, model, data):
    import torch
    twin = torch_twin(model)
    topt = torch.optim.Adam(twin.parameters(), lr=1e-4)
    targs = [torch.from_numpy(v) for v in data]
    fns["torch_train"] = lambda: torch_step(torch, twin, topt, *targs)
    fns["torch_sample"] = lambda: torch_sample(torch, twin, targs[0], targs[1])
    return torch


# ---------------------------------------------------------------------- measurements
CLOCK = time.perf_counter        # --cpu-time: time.process_time, with every framework on one thread


def median_ms(fn, reps):
    times = []
    for _ in range(reps):
        start = CLOCK()
        fn()
        times.append((CLOCK() - start) * 1e3)
    return times


def tracemalloc_peak_mb(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def rss_peak_child(which, batch, plain):
    """Runs in the subprocess: the rise of the resident set during one step of ``which``."""
    model, data, fns = build(batch, plain)
    if which.startswith("torch"):
        torch = add_torch(fns, model, data)
        torch.set_num_threads(os.cpu_count())
    fn = fns[which]
    for _ in range(3):
        fn()

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key))   # kB

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                                 # reset VmHWM to the current RSS
    before = status("VmRSS:")
    fn()
    return (status("VmHWM:") - before) / 1024


def rss_peak_mb(which, batch, plain):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, __file__, "--rss-child", which, "--batch", str(batch)] + (["--plain"] if plain else [])
    try:
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=600)
        return round(float(out.stdout.strip().splitlines()[-1]), 1)
    except (subprocess.SubprocessError, ValueError, OSError) as err:       # e.g. no /proc
        return f"unavailable: {type(err).__name__}"


# ---------------------------------------------------------------------- cross-check
def check(batch=4, seed=3):
    """Same outputs and gradients in both frameworks (float32 tolerance). Returns the worst errors."""
    import torch
    model = UNet(zero_init_out=False, rng=np.random.default_rng(seed))
    twin = torch_twin(model)
    x0, t, eps, a = make_data(batch, seed=seed)
    out = model(Tensor(x0), t)
    out_t = twin(torch.from_numpy(x0), torch.from_numpy(t))
    g = np.random.default_rng(seed).standard_normal(out.shape).astype(np.float32)
    out.backward(g)
    out_t.backward(torch.from_numpy(g))
    scale = np.abs(out_t.detach().numpy()).max()
    errors = {"output": float(np.abs(out.data - out_t.detach().numpy()).max() / scale)}
    theirs = dict(twin.named_parameters())
    worst = 0.0
    for name, p in model.named_parameters():
        ref = theirs[name].grad.numpy()
        worst = max(worst, float(np.abs(p.grad - ref).max() / (np.abs(ref).max() + 1e-12)))
    errors["worst_parameter_gradient"] = worst
    return errors


# ---------------------------------------------------------------------- per-layer breakdown
def breakdown(batch, plain, steps=3):
    """Milliseconds per layer (forward and backward) of tinydiff's training step, and
    PyTorch's time by operator type (torch.profiler), averaged over ``steps`` steps."""
    from tinydiff.nn import Module
    model, data, fns = build(batch, plain)
    fns["tinydiff_train"]()
    fwd, bwd, stack = {}, {}, []
    original_call, original_from_op = Module.__call__, Tensor.from_op.__func__

    def timed_call(self, *args, **kwargs):                          # exclusive forward time per module
        label = f"{self._bench_name} ({type(self).__name__})"
        start = CLOCK()
        stack.append([label, 0.0])
        try:
            return original_call(self, *args, **kwargs)
        finally:
            elapsed = CLOCK() - start
            _, children = stack.pop()
            fwd[label] = fwd.get(label, 0.0) + elapsed - children
            if stack:
                stack[-1][1] += elapsed

    def timed_from_op(cls, data, parents, backward):                # backward time of the op's module
        label = stack[-1][0] if stack else "(outside modules: loss, q_sample)"

        def timed_backward(g):
            start = CLOCK()
            out = backward(g)
            bwd[label] = bwd.get(label, 0.0) + CLOCK() - start
            return out
        return original_from_op(cls, data, parents, timed_backward)

    for name, m in model.named_modules():
        object.__setattr__(m, "_bench_name", name or "UNet")
    Module.__call__, Tensor.from_op = timed_call, classmethod(timed_from_op)
    try:
        total = 0.0
        for _ in range(steps):
            start = CLOCK()
            fns["tinydiff_train"]()
            total += CLOCK() - start
    finally:
        Module.__call__, Tensor.from_op = original_call, classmethod(original_from_op)
    rows = sorted(set(fwd) | set(bwd), key=lambda k: -(fwd.get(k, 0) + bwd.get(k, 0)))
    layers = [{"layer": k, "forward_ms": round(fwd.get(k, 0) * 1e3 / steps, 2),
               "backward_ms": round(bwd.get(k, 0) * 1e3 / steps, 2)} for k in rows]
    result = {"tinydiff_step_ms": round(total * 1e3 / steps, 1), "tinydiff_layers": layers}
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return result
    torch.set_num_threads(1 if CLOCK is time.process_time else os.cpu_count())
    add_torch(fns, model, data)
    fns["torch_train"]()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fns["torch_train"]()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
    result["torch_ops_self_ms"] = {e.key: round(e.self_cpu_time_total / 1e3 / steps, 2) for e in ops}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default: 7)")
    parser.add_argument("--reps", type=int, default=3, help="timed calls of each function per round (default: 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default: 3)")
    parser.add_argument("--plain", action="store_true",
                        help="run tinydiff's layers on their plain path (td.plain()) instead of the fast kernels")
    parser.add_argument("--no-torch", action="store_true", help="time tinydiff only")
    parser.add_argument("--no-rss", action="store_true", help="skip the subprocess memory measurements")
    parser.add_argument("--check", action="store_true", help="only compare outputs and gradients with PyTorch")
    parser.add_argument("--breakdown", action="store_true", help="only the per-layer time breakdown")
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread each and CPU time instead of wall time: a ratio that another "
                             "process on the machine barely disturbs")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both frameworks, wall time (default: the machine's cores); "
                             "more than the machine has runs the many-core code path oversubscribed")
    parser.add_argument("--untuned", action="store_true",
                        help="do not call tinydiff.runtime.tune_process (as the Trainer does): OpenBLAS's "
                             "default thread count, glibc's default malloc")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:                      # glibc's default malloc here (see the module docstring)
        print(rss_peak_child(args.rss_child, args.batch, args.plain))
        return
    tuning = "untuned" if args.untuned else td.runtime.tune_process()      # as the Trainer does
    global CLOCK
    threads = os.cpu_count()
    if args.threads is not None:
        threads = args.threads
        td.parallel.set_num_threads(threads)
    if args.cpu_time:
        CLOCK, threads = time.process_time, 1
        td.parallel.set_num_threads(1)
        td.runtime.set_blas_threads(1)                           # NumPy's OpenBLAS on one thread
    if args.check:
        print(json.dumps(check(), indent=2))
        return
    if args.breakdown:
        print(json.dumps(breakdown(args.batch, args.plain), indent=2))
        return
    model, data, fns = build(args.batch, args.plain)
    results = {"batch": args.batch, "clock": "process CPU time, 1 thread" if args.cpu_time else "wall",
               "layers": "plain" if args.plain else "fast", "numpy": np.__version__, "rounds": args.rounds,
               "reps_per_round": args.reps, "cpu_count": os.cpu_count(), "process": tuning,
               "blas_threads": td.runtime.get_blas_threads()}
    if not args.no_torch:
        try:
            torch = add_torch(fns, model, data)
            torch.set_num_threads(threads)
            results["torch"], results["torch_threads"] = torch.__version__, torch.get_num_threads()
        except ImportError:
            results["torch"] = "not installed: only tinydiff was timed"
    results["tinydiff_threads"] = td.parallel.get_num_threads()
    for fn in fns.values():
        for _ in range(args.warmup):
            fn()
    # Rounds alternate the frameworks so both see the same drift of this shared machine.
    times = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            times[name] += median_ms(fn, args.reps)
            time.sleep(0.05)
    for name in fns:
        results[f"{name}_ms"] = round(statistics.median(times[name]), 1)
    for kind in ("train", "sample"):
        if f"torch_{kind}" in fns:
            results[f"{kind}_ratio"] = round(results[f"tinydiff_{kind}_ms"] / results[f"torch_{kind}_ms"], 2)
    results["tinydiff_peak_mb"] = round(tracemalloc_peak_mb(fns["tinydiff_train"]), 1)
    if not args.no_rss:
        for which in ("tinydiff_train", "torch_train"):
            if which in fns:
                results[f"{which.split('_')[0]}_rss_peak_mb"] = rss_peak_mb(which, args.batch, args.plain)
        if "torch_rss_peak_mb" in results and isinstance(results["torch_rss_peak_mb"], float):
            results["memory_ratio"] = round(results["tinydiff_peak_mb"] / results["torch_rss_peak_mb"], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

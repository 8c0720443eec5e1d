"""Benchmark: one training step of TOY-MLP (forward, eps-MSE loss, backward, Adam).

Times tinydiff at batch 256, 1024 and 4096 and prints JSON with the median
milliseconds per step and the peak memory the step allocates. If PyTorch is
importable it times the identical model in the same run (same initial weights,
same data, same thread count) and reports the ratio tinydiff / PyTorch.

    python bench/bench_step.py                       # tinydiff only
    /path/to/venv-with-torch/bin/python bench/bench_step.py    # with the PyTorch comparison
    ... bench/bench_step.py --cpu-time               # one thread each, CPU time: robust on a busy machine
    ... bench/bench_step.py --untuned                # without tinydiff.runtime.tune_process (see below)

A step here is what the training loop does each iteration:
    x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps      (q_sample, DDPM eq. 4)
    loss = mean ||eps - eps_theta(x_t, t)||^2      (L_simple, DDPM eq. 14)
    loss.backward(); Adam step

The process is tuned as the Trainer tunes a model without convolutions
(``tinydiff.runtime.tune_process(convolutions=False)``: freed memory kept mapped, OpenBLAS's
own threads left to split the GEMMs); ``--untuned`` also leaves glibc's malloc at its default.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tinydiff as td  # noqa: E402
from tinydiff.models import ToyMLP  # noqa: E402
from tinydiff.optim import Adam  # noqa: E402

T = 1000


def make_batch(rng, batch, alphas_cumprod):
    x0 = rng.standard_normal((batch, 2), dtype=np.float32)
    t = rng.integers(0, T, size=batch)
    eps = rng.standard_normal((batch, 2), dtype=np.float32)
    return x0, t, eps


def tinydiff_step(model, opt, x0, t, eps, ab):
    a = ab[t][:, None]
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps          # float32 throughout
    opt.zero_grad()
    diff = model(x_t, t) - eps
    loss = (diff * diff).mean()
    loss.backward()
    opt.step()
    return loss.item()


CLOCK = time.perf_counter        # --cpu-time: time.process_time, with every framework on one thread


def time_block(step, reps):
    """Milliseconds of each of ``reps`` consecutive steps."""
    times = []
    for _ in range(reps):
        start = CLOCK()
        step()
        times.append((CLOCK() - start) * 1e3)
    return times


def peak_memory_mb(step):
    """Peak bytes allocated during one step (NumPy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def torch_setup(model, batch):
    import torch

    class TorchToyMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(66, 256), torch.nn.SiLU(), torch.nn.Linear(256, 256), torch.nn.SiLU(),
                torch.nn.Linear(256, 256), torch.nn.SiLU(), torch.nn.Linear(256, 2))

        def forward(self, x, t):
            half = 32
            freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
            args = t[:, None].float() * freqs[None]
            emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
            return self.net(torch.cat([x, emb], dim=1))

    tmodel = TorchToyMLP()
    state = {k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()}
    tmodel.load_state_dict(state)          # the same names and layouts map one to one
    opt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    return torch, tmodel, opt


def torch_step(torch, model, opt, x0, t, eps, ab):
    a = ab[t][:, None]
    x_t = torch.sqrt(a) * x0 + torch.sqrt(1 - a) * eps
    opt.zero_grad()
    loss = ((model(x_t, t) - eps) ** 2).mean()
    loss.backward()
    opt.step()
    return loss.item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096], help="batch sizes (default: 256 1024 4096)")
    parser.add_argument("--reps", type=int, default=20, help="timed steps per round (default: 20)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of alternating blocks (default: 10)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: 5)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--untuned", action="store_true",
                        help="do not call tinydiff.runtime.tune_process (as the Trainer does): OpenBLAS's "
                             "default thread count, glibc's default malloc")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both frameworks, wall time (default: the machine's cores)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread each and CPU time instead of wall time: a ratio that another "
                             "process on the machine barely disturbs")
    args = parser.parse_args(argv)
    tuning = "untuned" if args.untuned else td.runtime.tune_process(convolutions=False)   # as the Trainer tunes ToyMLP
    global CLOCK
    if args.threads is not None:
        td.parallel.set_num_threads(args.threads)
        td.runtime.set_blas_threads(args.threads)                   # OpenBLAS splits ToyMLP's GEMMs
    if args.cpu_time:
        CLOCK = time.process_time
        td.parallel.set_num_threads(1)
        td.runtime.set_blas_threads(1)                              # NumPy's OpenBLAS on one thread

    betas = np.linspace(1e-4, 0.02, T)
    ab = np.cumprod(1 - betas).astype(np.float32)
    results = {"numpy": np.__version__, "process": tuning, "blas_threads": td.runtime.get_blas_threads(),
               "tinydiff_threads": td.parallel.get_num_threads(),
               "rounds": args.rounds, "reps_per_round": args.reps,
               "clock": "process CPU time, 1 thread" if args.cpu_time else "wall", "runs": []}
    torch = None
    if not args.no_torch:
        try:
            import torch
            if args.cpu_time:
                torch.set_num_threads(1)
            elif args.threads is not None:
                torch.set_num_threads(args.threads)
        except ImportError:
            results["torch"] = "not installed: only tinydiff was timed"
    for batch in args.batches:
        rng = np.random.default_rng(0)
        x0, t, eps = make_batch(rng, batch, ab)
        model = ToyMLP(rng=np.random.default_rng(1))
        opt = Adam(model.parameters(), lr=1e-3)
        steps = {"tinydiff": lambda: tinydiff_step(model, opt, x0, t, eps, ab)}
        if torch is not None:
            torch, tmodel, topt = torch_setup(ToyMLP(rng=np.random.default_rng(1)), batch)
            targs = [torch.from_numpy(a) for a in (x0, t, eps, ab)]
            steps["torch"] = lambda: torch_step(torch, tmodel, topt, *targs)
        # The machine is a shared VM whose speed drifts by tens of percent over seconds, so the
        # frameworks take turns: round r times a block of tinydiff steps, then a block of PyTorch
        # steps. Both see the same drift; the medians over all rounds are compared.
        times = {name: [] for name in steps}
        for name, step in steps.items():
            for _ in range(args.warmup):
                step()
        for _ in range(args.rounds):
            for name, step in steps.items():
                times[name] += time_block(step, args.reps)
                time.sleep(0.05)          # let PyTorch's worker threads stop polling before tinydiff runs
        row = {"batch": batch, "tinydiff_ms": round(statistics.median(times["tinydiff"]), 3),
               "tinydiff_peak_mb": round(peak_memory_mb(steps["tinydiff"]), 2)}
        if "torch" in times:
            row["torch_ms"] = round(statistics.median(times["torch"]), 3)
            row["torch_threads"], row["torch_version"] = torch.get_num_threads(), torch.__version__
            row["ratio_tinydiff_over_torch"] = round(row["tinydiff_ms"] / row["torch_ms"], 3)
        results["runs"].append(row)
        print(json.dumps(row), file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Continue a tinydiff MNIST model in PyTorch on several processes, then bring it home and sample.

The lesson after mnist.py (docs/export.md). tinydiff's layers name their weights as torch.nn
does, so `td.export.to_torch(model)` is the same network in PyTorch (tests/test_export_torch.py:
outputs and gradients equal to 1e-5 in float32). This script

* loads a finished examples/mnist.py run and exports its UNet, its averaged (EMA) weights and
  its diffusion's settings (schedule, T, objective) to PyTorch,
* continues training with DistributedDataParallel: each process draws its own share of the
  batch, the gradients are averaged across processes in backward (gloo on CPUs, NCCL on GPUs),
* compares the loss where tinydiff stopped with the loss after, on the same fixed test batch,
* writes the averaged weights as model.safetensors (no safetensors package needed), loads them
  into a tinydiff UNet built from the file alone, samples 500 digits with tinydiff and scores them.

    python examples/mnist.py                                         # the tinydiff run (out/mnist)
    torchrun --nproc_per_node 2 examples/continue_in_torch.py        # 2 processes, one per core
    python examples/continue_in_torch.py --steps 200                 # or one process

Many machines: the same script under torchrun's rendezvous flags (docs/export.md).
"""
# %%
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import tinydiff as td
from tinydiff.export import torch_diffusion

# %% [markdown]
# ## Settings
# %%
run, R = td.Run("continue_in_torch", __doc__), td.runs
td.recipes.mnist_flags(run)
run.flag("checkpoint", os.path.join("out", "mnist", "checkpoint.npz"), "the examples/mnist.py run to continue", type=str)
run.run_flag("steps", 1000, "PyTorch training steps", type=R.positive_int)
run.run_flag("batch", 64, "global batch size, split evenly over the processes", type=R.positive_int)
run.run_flag("lr", 5e-4, "peak learning rate (AdamW): 50 steps of warm-up, then cosine decay to 0", type=R.positive_float)
run.run_flag("seed", 0, "seed of every random draw (process k draws from seed + k)", type=R.nonnegative_int)
run.eval_flag("eval_digits", 1000, "test digits of the fixed loss measured before and after", type=R.positive_int)
run.eval_flag("n_samples", 500, "digits to draw with tinydiff (an equal number per class)", type=R.positive_int)
run.flag("no_score", False, "skip the classifier scores")
run.eval_flag("sample_steps", 30, "DDIM sampling steps (a respaced chain of the T)", type=R.positive_int)


def check(args):
    for name in ("--resume", "--minutes", "--checkpoint-every"):
        if name in run.typed:
            raise ValueError(f"{name}: this lesson trains a fixed number of steps in one go")
    if args.n_samples % 10:
        raise ValueError(f"--n-samples must be a multiple of 10 (an equal number of each digit), got {args.n_samples}")
    world = int(os.environ.get("WORLD_SIZE", "1"))                 # set by torchrun
    if args.batch % world:
        raise ValueError(f"--batch {args.batch} must divide evenly over the {world} processes")
    if os.path.exists(os.path.join(args.out, "model.safetensors")) and not args.restart:
        raise ValueError(f"{args.out} holds a finished run; pass --restart to replace it, or another --out")


args = run.parse(check=check)

# %% [markdown]
# ## The processes
# torchrun starts one copy of this script per process and tells each its RANK among WORLD_SIZE
# (and where to meet: MASTER_ADDR, MASTER_PORT). Run with plain python, it is a world of one.
# %%
if "RANK" not in os.environ:
    os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000))
cuda = torch.cuda.is_available()
dist.init_process_group("nccl" if cuda else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()
device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if cuda else "cpu")
torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))      # the processes share the cores
lead = rank == 0                                                    # process 0 alone writes and samples
if lead:
    run.start()

# %% [markdown]
# ## From tinydiff to PyTorch: the model, its averaged weights and its diffusion
# %%
diffusion, model, meta = td.recipes.load_mnist_run(args.checkpoint, weights="model")   # the last step's weights
_, ema_model, _ = td.recipes.load_mnist_run(args.checkpoint, weights="ema")
tinydiff_losses = td.load_checkpoint(args.checkpoint)[0]["losses"]
trained = meta["config"]
config = td.export.export_config(model, diffusion)                  # the JSON written beside the weights
net = td.export.to_torch(model).to(device)
ema = td.export.to_torch(ema_model).to(device).eval()
tables = torch_diffusion.diffusion_tables(config["diffusion"])
conditional = not trained["unconditional"]
x_train, labels = td.recipes.mnist_digits(args)                     # [N, 1, 28, 28] in [-1, 1], [N]
x_train, labels = torch.from_numpy(x_train).to(device), torch.from_numpy(labels).to(device)
if lead:
    print(f"continuing {args.checkpoint} (step {meta['step']}, {config['diffusion']['schedule']} schedule, "
          f"{config['diffusion']['objective']} objective) on {world} process(es), {'NCCL' if cuda else 'gloo'}")


def weighted_mse(network, x0, t, eps, y):
    """The loss tinydiff trained with: ||eps - eps_theta(x_t, t, y)||^2 per digit, Min-SNR weighted
    (DDPM Algorithm 1 line 5; Hang et al. 2023). Returns [B]."""
    x_t = torch_diffusion.q_sample(tables, x0, t, eps)                # DDPM eq. 4
    mse = (eps - network(x_t, t, y=y if conditional else None)).square().mean(dim=(1, 2, 3))
    return mse * torch_diffusion.mse_weight(tables, config["diffusion"], t).to(mse.dtype)


x_eval, y_eval = (torch.from_numpy(a).to(device) for a in td.recipes.mnist_digits(args, "test", limit=args.eval_digits))
fixed = torch.Generator(device="cpu").manual_seed(12345)              # the same t and eps before and after
t_eval = torch.randint(0, len(tables["betas"]), (len(x_eval),), generator=fixed).to(device)
eps_eval = torch.randn(x_eval.shape, generator=fixed).to(device)


def eval_loss(network) -> float:
    with torch.no_grad():
        return float(torch.cat([weighted_mse(network, x_eval[i:i + 250], t_eval[i:i + 250], eps_eval[i:i + 250],
                                             y_eval[i:i + 250]) for i in range(0, len(x_eval), 250)]).mean())


before = {"model": eval_loss(net), "ema": eval_loss(ema)} if lead else None

# %% [markdown]
# ## Training with DistributedDataParallel
# DDP broadcasts process 0's weights at the start and averages the gradients across processes
# during backward, so every process takes the same AdamW step. Each draws its own batch of
# batch / world digits, t, eps and dropped labels: together, one batch of --batch.
# %%
ddp = DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50)
                                             * 0.5 * (1 + np.cos(np.pi * min(s, args.steps) / args.steps)))
gen = torch.Generator(device="cpu").manual_seed(args.seed + rank)
per_process, losses, start = args.batch // world, [], time.perf_counter()
for step in range(1, args.steps + 1):
    index = torch.randint(0, len(x_train), (per_process,), generator=gen).to(device)
    x0, y = x_train[index], labels[index]
    t = torch.randint(0, len(tables["betas"]), (per_process,), generator=gen).to(device)   # Algorithm 1 line 3
    eps = torch.randn(x0.shape, generator=gen).to(device)                                  # line 4
    drop = torch.rand(per_process, generator=gen).to(device) < trained["label_dropout"]   # for guidance
    y = torch.where(drop, model.null_labels[0], y) if conditional else None                # the null label
    loss = weighted_mse(ddp, x0, t, eps, y).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()                                                 # DDP: gradients averaged across processes
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)           # as tinydiff's Trainer
    optimizer.step()
    schedule.step()
    with torch.no_grad():                                           # EMA of the weights, decay as trained
        for e, p in zip(ema.parameters(), net.parameters()):
            e.lerp_(p, 1.0 - trained["ema"])
    mean = torch.tensor([loss.item()], dtype=torch.float64)
    dist.all_reduce(mean)                                           # the loss of the whole batch
    losses.append(mean.item() / world)
    if lead and (step % 50 == 0 or step == args.steps):
        print(f"step {step:5d}/{args.steps}  loss {np.mean(losses[-50:]):.4f}  "
              f"{step / (time.perf_counter() - start):.1f} steps/s")
train_seconds = time.perf_counter() - start

# %% [markdown]
# ## Back to tinydiff: model.safetensors, a UNet built from it, 500 digits
# %%
if lead:
    after = {"model": eval_loss(net), "ema": eval_loss(ema)}
    weights = {name: value.detach().cpu().numpy() for name, value in ema.state_dict().items()}
    td.export.save_export(run.path("model.safetensors"), model, diffusion, weights=weights)
    run.save("config.json", config)
    home, home_diffusion, _ = td.export.load_export(run.path("model.safetensors"))   # tinydiff, from the file alone
    y = np.arange(args.n_samples) % 10
    with td.no_grad():
        start = time.perf_counter()
        x = td.sample(home_diffusion, home, (args.n_samples, 1, 28, 28), np.random.default_rng(args.seed + 1),
                      model_kwargs={"y": y} if conditional else None, sampler="ddim", steps=args.sample_steps,
                      clip_denoised=True, guidance=1.5 if conditional else None,
                      progress=td.Progress(0, "sampling with tinydiff"))
    samples = td.data.from_model_space(x)[:, 0]
    order = np.argsort(y, kind="stable").reshape(10, -1)[:, :10].ravel()
    td.images.save_image_grid(samples[order], run.path("grid.png"), nrow=10)
    metrics = {"world_size": world, "backend": "nccl" if cuda else "gloo", "steps": args.steps, "batch": args.batch,
               "train_seconds": round(train_seconds, 1), "sample_seconds": round(time.perf_counter() - start, 1),
               "tinydiff_steps": meta["step"], "tinydiff_final_loss": float(np.mean(tinydiff_losses[-100:])),
               "torch_first_loss": float(np.mean(losses[:100])), "torch_final_loss": float(np.mean(losses[-100:])),
               "test_loss_before": before, "test_loss_after": after}

# %% The table: the loss where tinydiff stopped and after, and the digits (docs/export.md)
if lead:
    print(f"{'':28s}{'tinydiff stopped':>18s}{'PyTorch after':>16s}")
    print(f"{'training loss (last 100)':28s}{metrics['tinydiff_final_loss']:18.4f}{metrics['torch_final_loss']:16.4f}")
    for k in ("model", "ema"):
        print(f"{'test loss, ' + k + ' weights':28s}{before[k]:18.4f}{after[k]:16.4f}")
    R.target(f"test loss {before['ema']:.4f} -> {after['ema']:.4f} (EMA weights)", "falls", after["ema"] < before["ema"])
    if not args.no_score:
        scorer = td.scorer.DigitScorer.load(data_dir=args.data_dir)
        metrics["scorer"] = score = scorer.score(samples, y if conditional else None, seed=args.seed)
        if score.get("accuracy") is not None:
            R.target(f"{100 * score['accuracy']:.1f}% read as the digit asked for", ">= 95%", score["accuracy"] >= 0.95)
    run.finish(metrics)
dist.barrier()                      # every process leaves together: a rank that tore down gloo early could abort
dist.destroy_process_group()

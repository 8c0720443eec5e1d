"""Train a variational autoencoder on MNIST: the ELBO, and a VAE as a one-step diffusion.

A VAE (Kingma & Welling 2014) encodes a digit into q(z | x) = N(mu(x), diag sigma^2(x)),
decodes a draw z = mu + sigma * eps with p(x | z), and is trained on the evidence lower bound
-log p(x) <= E_q[-log p(x | z)] + KL(q(z | x) || N(0, I)) (tinydiff/elbo.py). This example

* trains ``tinydiff.models.VAE`` with the Trainer and ``ELBOLoss`` (the Trainer is the one the
  diffusion examples use; only the loss differs),
* estimates the bound on the first --eval-digits official test digits, term by term, in nats
  per digit and in bits/dim: with the default discretized decoder it is a bound on
  -log2 P(x) / 784 of the 8-bit digit, the same convention as the diffusion bound of
  examples/mnist.py (metrics.json["bpd"]), so the two numbers sit side by side,
* writes reconstructions beside their inputs, 100 digits decoded from the prior z ~ N(0, I),
  interpolations between test digits in latent space and, for a 2-D latent, the latent map
  coloured by digit beside the decoded grid,
* and scores 500 prior samples with tinydiff's MNIST classifier (tinydiff.scorer): the fraction
  read with confidence >= 0.9 and a Frechet distance to real test digits; and, for contrast,
  the same decoder fed posterior draws z ~ q(z | x) of 500 test digits.

Run (3 to 4 minutes on 2 shared cores; README: "The VAE and latent diffusion"):

    python examples/vae.py                                          # 8-d latent, discretized decoder
    python examples/vae.py --latent 16 --out out/vae_16d             # a tighter bound, worse prior samples
    python examples/vae.py --latent 2 --out out/vae_2d               # the 2-D latent map
    python examples/vae.py --decoder bernoulli --out out/vae_bernoulli
    python examples/vae.py --latent 4x7x7 --out out/latent_diffusion/vae   # what latent diffusion uses

Pictures show the decoder's mean image, not a draw from p(x | z) (which adds independent noise
to every pixel). MNIST is read from --data-dir, $TINYDIFF_DATA/mnist or ~/.cache/tinydiff/mnist
(downloaded there unless --no-download). Everything lands in --out (default out/vae).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# One OpenBLAS thread: tinydiff's convolutions thread themselves (see examples/mnist.py and
# README "Speed": OpenBLAS's own threads compete with them). An explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

import tinydiff as td
from tinydiff import runs, viz
from tinydiff.checkpoint import atomic_write, flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from tinydiff.data import from_model_space, load_mnist, to_model_space
from tinydiff.elbo import ELBOLoss, bits_per_dim, elbo_terms, kl_to_standard_normal, reparameterize
from tinydiff.images import plot_image_rows, save_image_grid
from tinydiff.models import VAE
from tinydiff.runtime import reuse_freed_memory
from tinydiff.train import CheckpointWriteError, NonFiniteError, Trainer

DIGITS = 784                     # dimensions of one MNIST digit: bits/dim = nats / (784 log 2)
# A resumed run must be the same run (tinydiff/runs.py): these flags define what is trained.
RUN_FLAGS = ("steps", "batch", "lr", "ema", "kl_weight", "seed", "latent", "channels", "decoder", "train_limit")
# These only change what is computed from the trained model: allowed on --resume, outputs renamed.
EVAL_FLAGS = ("eval_digits", "elbo_samples", "n_samples", "no_score")


def parse_latent(text: str) -> tuple:
    """"16" -> (16,), "4x7x7" -> (4, 7, 7)."""
    try:
        shape = tuple(int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 16 or 4x7x7, got {text!r}") from None
    if len(shape) not in (1, 3) or min(shape) < 1 or len(shape) == 3 and shape[1:] != (7, 7):
        raise argparse.ArgumentTypeError(f"expected d (a flat latent) or kx7x7 (a spatial one), got {text!r}")
    return shape


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=runs.positive_int, default=1500, help="training steps")
    g.add_argument("--batch", type=runs.positive_int, default=64, help="batch size")
    g.add_argument("--lr", type=runs.positive_float, default=2e-3,
                   help="peak learning rate (AdamW), cosine-decayed to 0")
    g.add_argument("--ema", type=runs.decay_rate, default=0.999,
                   help="EMA decay of the weights used for evaluation (with warm-up)")
    g.add_argument("--kl-weight", type=runs.nonnegative_float, default=1.0,
                   help="weight of the KL term in training (1: the ELBO; the bound is always reported with 1)")
    g.add_argument("--seed", type=runs.nonnegative_int, default=0, help="seed of every random draw")
    m = p.add_argument_group("model")
    m.add_argument("--latent", type=parse_latent, default=(8,),
                   help="latent shape: d for a flat latent (2 draws the latent map; of 2, 4, 8 and 16, 8 gives the prior "
                        "samples nearest the real digits, 16 the tightest bound), kx7x7 for a spatial one")
    m.add_argument("--channels", default="16,64", help="widths c0,c1 at 28x28 and at 14x14/7x7 (multiples of 8)")
    m.add_argument("--decoder", default="discretized", choices=["discretized", "bernoulli"],
                   help="p(x|z): a Gaussian over 8-bit bins (a likelihood, DDPM eq. 13) or Bernoulli logits")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-digits", type=runs.positive_int, default=1000,
                   help="first N official test digits for the bound")
    e.add_argument("--elbo-samples", type=runs.positive_int, default=4,
                   help="draws of z per test digit in the bound's estimate (each one is unbiased)")
    e.add_argument("--n-samples", type=runs.positive_int, default=500, help="prior samples to draw and score")
    e.add_argument("--no-score", action="store_true", help="skip the classifier scores")
    runs.add_mnist_run_flags(p, "vae", checkpoint_every=500, redo="re-evaluate")
    args = p.parse_args(argv)
    try:
        args.channels = tuple(int(v) for v in str(args.channels).split(","))
    except ValueError:
        p.error(f"--channels: expected two comma-separated widths such as 16,64, got {args.channels!r}")
    if len(args.channels) != 2 or min(args.channels) < 8 or any(c % 8 for c in args.channels):
        p.error(f"--channels: expected two widths, multiples of 8 (GroupNorm's 8 groups), got "
                f"{','.join(map(str, args.channels))}")
    return args


# ---------------------------------------------------------------- the frozen VAE, for latent diffusion
def save_vae(path, vae: VAE) -> None:
    """Write the VAE's (EMA) weights and architecture to one .npz checkpoint."""
    save_checkpoint(path, flatten_state({"model": vae.state_dict()}), {"vae": vae.config})


def load_vae(path) -> VAE:
    """The VAE saved by ``save_vae``, in eval mode."""
    arrays, meta = load_checkpoint(path)
    config = dict(meta["vae"])
    vae = VAE(tuple(config.pop("latent_shape")), tuple(config.pop("channels")), **config,
              rng=np.random.default_rng(0))
    vae.load_state_dict(unflatten_state(arrays)["model"])
    return vae.eval()


# ---------------------------------------------------------------- training and evaluation
def train(args, vae, x_train, checkpoint, saved):
    """Train on the ELBO (ELBOLoss) with the Trainer; saved: the checkpoint's metadata when
    resuming (runs.read_run_config), else None."""
    trainer = Trainer(vae, ELBOLoss(kl_weight=args.kl_weight), x_train, batch_size=args.batch, lr=args.lr,
                      warmup_steps=min(100, args.steps // 10), lr_decay_steps=args.steps, ema_decay=args.ema,
                      ema_warmup=True, seed=args.seed, log_every=100, checkpoint_path=checkpoint,
                      checkpoint_every=args.checkpoint_every, config=vars(args) if saved is None else saved["config"])
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


def evaluate_bound(vae, x0, samples_per_digit: int, rng) -> dict:
    """The negative ELBO of each digit in nats, averaged over ``samples_per_digit`` draws of z
    (each draw is an unbiased estimate of the bound; the mean has less variance), with its terms.
    Returns (summary dict, per-digit -ELBO in nats [N])."""
    parts = {k: [] for k in ("nelbo", "reconstruction", "kl")}
    with td.no_grad():
        for i in range(0, len(x0), 250):
            batch = x0[i:i + 250]
            draws = [elbo_terms(vae, batch, rng=rng) for _ in range(samples_per_digit)]
            for k in parts:
                parts[k].append(np.mean([d[k].data for d in draws], axis=0))
    per_digit = {k: np.concatenate(v).astype(np.float64) for k, v in parts.items()}
    nelbo = per_digit["nelbo"]
    stderr = float(nelbo.std(ddof=1) / np.sqrt(len(nelbo)))
    return {"nelbo_nats": float(nelbo.mean()), "stderr_nats": stderr,
            "reconstruction_nats": float(per_digit["reconstruction"].mean()),
            "kl_nats": float(per_digit["kl"].mean()),
            "bpd": float(bits_per_dim(nelbo.mean(), DIGITS)), "bpd_stderr": float(bits_per_dim(stderr, DIGITS)),
            "digits": len(nelbo), "samples_per_digit": samples_per_digit}, nelbo


def kl_per_latent(vae, x0) -> np.ndarray:
    """Mean KL(q(z|x) || N(0, 1)) of each latent value over the digits x0, in nats [*latent]."""
    with td.no_grad():
        kls = [kl_to_standard_normal(*(t.data for t in vae.encode(x0[i:i + 250])))
               for i in range(0, len(x0), 250)]
    return np.concatenate(kls).mean(axis=0)


def first_of_each_digit(labels, n_sets: int = 1) -> np.ndarray:
    """Indices of the first n_sets examples of each digit 0..9, ordered 0..9, 0..9, ..."""
    return np.array([np.flatnonzero(labels == k)[s] for s in range(n_sets) for k in range(10)])


def plot_latent_map(vae, x0, labels, path, span: float = 3.0, n: int = 15):
    """Two panels: the encoder means mu(x) of test digits coloured by digit, and the decoded grid
    of z over [-span, span]^2 (Kingma & Welling 2014, fig. 4)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    with td.no_grad():
        mu = np.concatenate([vae.encode(x0[i:i + 250])[0].data for i in range(0, len(x0), 250)])
    axis = np.linspace(-span, span, n)
    grid = np.stack(np.meshgrid(axis, -axis), axis=-1).reshape(-1, 2).astype(np.float32)   # rows: z2 high to low
    tiles = from_model_space(vae.generate(grid))[:, 0].reshape(n, n, 28, 28)
    mosaic = tiles.transpose(0, 2, 1, 3).reshape(n * 28, n * 28)
    fig = Figure(figsize=(11, 5.2), dpi=110)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    scatter = left.scatter(mu[:, 0], mu[:, 1], c=labels, cmap="tab10", s=4, vmin=-0.5, vmax=9.5)
    fig.colorbar(scatter, ax=left, ticks=range(10), label="digit")
    left.set_xlim(-span, span)
    left.set_ylim(-span, span)
    left.set_aspect("equal")
    left.set_xlabel("z1")
    left.set_ylabel("z2")
    left.set_title(f"encoder means mu(x) of {len(x0):,} test digits", fontsize=10)
    right.imshow(mosaic, cmap="gray", extent=(-span, span, -span, span), vmin=0, vmax=1)
    right.set_xlabel("z1")
    right.set_ylabel("z2")
    right.set_title(f"decoder mean at z on a {n} x {n} grid", fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png")


def load_split(args, split, limit=None):
    try:
        return load_mnist(split, args.data_dir, download=not args.no_download, limit=limit)
    except (OSError, ValueError) as err:              # missing files, no network, a corrupt file: one line
        raise runs.RunError(f"MNIST: {err}") from None


def main(argv=None) -> dict:
    args = parse_args(argv)
    reuse_freed_memory()
    checkpoint = os.path.join(args.out, "checkpoint.npz")
    saved = runs.read_run_config(checkpoint, resume=args.resume, restart=args.restart)     # None: a new run
    if saved is not None:
        runs.check_same_run(saved["config"], vars(args), RUN_FLAGS, checkpoint)
    tag = runs.evaluation_tag(saved and saved["config"], vars(args), EVAL_FLAGS)
    vae = VAE(args.latent, args.channels, decoder=args.decoder, rng=np.random.default_rng(args.seed))
    runs.prepare_output_dir(args.out, need_bytes=3 * runs.checkpoint_bytes(vae) + 10_000_000)
    images, _ = load_split(args, "train", args.train_limit)
    x_train = to_model_space(images)                                            # [N, 1, 28, 28] in [-1, 1]
    latent = "x".join(map(str, args.latent))
    print(f"MNIST: {len(x_train)} training digits. VAE: latent {latent}, {args.decoder} decoder, "
          f"{vae.num_parameters():,} parameters")
    trainer, train_seconds = train(args, vae, x_train, checkpoint, saved)
    if tag:
        print(f"evaluating with other settings than the run's own: outputs are named *.{tag}.*")
    try:
        return evaluate(args, vae, trainer, train_seconds, tag)
    except OSError as err:
        raise runs.RunError(f"could not write the outputs in {args.out} ({err}); files already there are intact "
                            f"and the checkpoint holds step {trainer.step}: --resume writes them again") from None


def evaluate(args, vae, trainer, train_seconds, tag="") -> dict:
    """The bound, reconstructions, prior samples, pictures and scores of the trained VAE (EMA
    weights), written to args.out (names tagged with ``tag`` when re-evaluated: tinydiff/runs.py)."""
    def out(name):
        return os.path.join(args.out, runs.tagged(name, tag))

    viz.plot_loss(np.arange(1, len(trainer.losses) + 1), np.asarray(trainer.losses) * DIGITS, out("loss.png"),
                  title="training loss: -ELBO per digit (nats)" if args.kl_weight == 1 else
                  f"training loss: reconstruction + {args.kl_weight:g} KL per digit (nats)")
    test_images, test_labels = load_split(args, "test")
    x_test = to_model_space(test_images)
    rng = np.random.default_rng(args.seed + 1)                                  # evaluation's own stream
    metrics = {"latent_shape": list(args.latent), "decoder": args.decoder, "kl_weight": args.kl_weight,
               "parameters": vae.num_parameters(), "steps": trainer.step, "batch": args.batch,
               "train_seconds": round(train_seconds, 1),
               "final_loss_nats": float(np.mean(trainer.losses[-100:]) * DIGITS)}
    with trainer.ema.average_parameters(vae), td.no_grad():
        if not tag:                                   # the weights themselves: the same on any re-evaluation
            save_vae(os.path.join(args.out, "vae.npz"), vae)
        vae.eval()
        x_eval = x_test[:args.eval_digits]
        bound, per_digit = evaluate_bound(vae, x_eval, args.elbo_samples, rng)
        bound["convention"] = (
            "upper bound on -log2 P(x) / 784 of the 8-bit test digit (discretized Gaussian decoder), "
            "unconditional: E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)), the first N official test digits"
            if args.decoder == "discretized" else
            "Bernoulli cross-entropy of the grey values in [0, 1] plus the KL: NOT a likelihood of 8-bit "
            "digits (not comparable with the diffusion bound)")
        metrics["elbo"] = bound
        kl = kl_per_latent(vae, x_eval)
        metrics["active_latents"] = {"count": int(np.sum(kl > 0.01)), "of": int(kl.size),
                                     "rule": "mean KL(q(z|x) || N(0, 1)) of the value > 0.01 nats"}

        codes = [[t.data for t in vae.encode(x_eval[i:i + 250])] for i in range(0, len(x_eval), 250)]
        mu, log_variance = (np.concatenate(part) for part in zip(*codes))           # [N, *latent] each
        recon = np.concatenate([vae.generate(mu[i:i + 250]) for i in range(0, len(mu), 250)])
        err = from_model_space(recon) - from_model_space(x_eval)
        metrics["reconstruction"] = {"mse": float(np.mean(err ** 2)), "mae": float(np.mean(np.abs(err))),
                                     "on": "decoder mean at z = mu(x) vs the test digit, pixels in [0, 1]"}

        z = rng.standard_normal((args.n_samples, *args.latent)).astype(np.float32)
        start = time.perf_counter()
        samples = np.concatenate([from_model_space(vae.generate(z[i:i + 250]))[:, 0]
                                  for i in range(0, len(z), 250)])                   # [N, 28, 28] in [0, 1]
        metrics["sample_seconds_per_100"] = round(100 * (time.perf_counter() - start) / len(z), 3)
        # The same decoder fed codes where the encoder puts them, z ~ q(z | x) of test digits (drawn after
        # the prior's z, so the prior samples do not depend on it): the gap to the prior samples is the
        # part of N(0, I) that no digit's posterior covers.
        n_post = min(args.n_samples, len(mu))
        z_post = reparameterize(mu[:n_post], log_variance[:n_post], rng=rng)
        posterior_samples = np.concatenate([from_model_space(vae.generate(z_post[i:i + 250]))[:, 0]
                                            for i in range(0, n_post, 250)])

        # pictures: reconstructions, prior samples, interpolations, the latent map
        shown = first_of_each_digit(test_labels, 2)                                # 0..9 twice
        mu_shown = vae.encode(x_test[shown])[0].data
        decoded = vae.generate(mu_shown)
        rows = [from_model_space(x_test[shown[:10], 0]), from_model_space(decoded[:10, 0]),
                from_model_space(x_test[shown[10:], 0]), from_model_space(decoded[10:, 0])]
        plot_image_rows(rows, out("reconstructions.png"), row_labels=["input", "decoded", "input", "decoded"],
                        title="test digits and their reconstructions (decoder mean at z = mu(x))")
        save_image_grid(samples[:100], out("samples.png"), nrow=10)
        pairs = [(0, 6), (1, 7), (3, 8), (4, 9), (5, 2)]                            # digits to morph between
        weights = np.linspace(0.0, 1.0, 10, dtype=np.float32).reshape(-1, *([1] * len(args.latent)))
        strips = [from_model_space(vae.generate((1 - weights) * mu_shown[a] + weights * mu_shown[b]))[:, 0]
                  for a, b in pairs]
        plot_image_rows(strips, out("interpolation.png"), row_labels=[f"{a} to {b}" for a, b in pairs],
                        title="decoding (1 - w) mu(x_a) + w mu(x_b), w = 0 ... 1")
        if args.latent == (2,):
            plot_latent_map(vae, x_test[:5000], test_labels[:5000], out("latent_map.png"))
    with atomic_write(out("samples.npy")) as f:
        np.save(f, samples.astype(np.float32))
    with atomic_write(out("elbo_per_digit.npy")) as f:     # -ELBO in nats of test digit i: compare any subset
        np.save(f, per_digit)

    if not args.no_score:
        from tinydiff.scorer import DigitScorer
        scorer = DigitScorer.load(data_dir=args.data_dir)
        score = scorer.score(samples, None, seed=args.seed)
        score["class_counts"] = np.bincount(scorer.predict(samples), minlength=10).tolist()
        score["on"] = "decoder means of z ~ N(0, I): the VAE's own prior samples"
        metrics["scorer"] = score
        posterior = scorer.score(posterior_samples, None, seed=args.seed)
        posterior["on"] = (f"decoder means of z ~ q(z|x) of the first {len(posterior_samples)} test digits: "
                           "where the encoder puts codes, for contrast with the prior")
        metrics["scorer_posterior"] = posterior
    with atomic_write(out("metrics.json")) as f:
        f.write(json.dumps(metrics, indent=2).encode())
    report(args, metrics, tag)
    return metrics


def report(args, metrics, tag=""):
    """The folder the run wrote to, then one line per number, with its target where it has one."""
    names = ["reconstructions.png", "samples.png", "interpolation.png", "loss.png"]
    names += (["latent_map.png"] if args.latent == (2,) else []) + ["metrics.json", "samples.npy", "elbo_per_digit.npy"]
    names = [runs.tagged(n, tag) for n in names] + ([] if tag else ["vae.npz"]) + ["checkpoint.npz"]
    print(f"\nwrote {os.path.abspath(args.out)}: {', '.join(names)}")
    e, ok = metrics["elbo"], {True: "ok", False: "MISSED"}
    unit = "bits/dim" if args.decoder == "discretized" else "bits/dim of a Bernoulli cross-entropy (no likelihood)"
    print(f"-ELBO on {e['digits']} test digits: {e['nelbo_nats']:.1f} +- {e['stderr_nats']:.1f} nats = "
          f"{e['bpd']:.4f} +- {e['bpd_stderr']:.4f} {unit} (reconstruction {e['reconstruction_nats']:.1f} + "
          f"KL {e['kl_nats']:.1f} nats; {metrics['active_latents']['count']} of {metrics['active_latents']['of']} "
          "latent values in use)")
    print(f"reconstruction error (decoder mean at mu(x)): MSE {metrics['reconstruction']['mse']:.4f}, pixels in [0, 1]")
    if "scorer" in metrics:
        sc = metrics["scorer"]
        print(f"prior samples read with confidence >= 0.9: {sc['confident_fraction']:.1%} (target >= 80%): "
              f"{ok[sc['confident_fraction'] >= 0.8]}; Frechet distance {sc['fid']:.1f} (real-vs-real floor "
              f"{sc['fid_floor']:.1f} at N = {sc['n_fid']})")
        post = metrics["scorer_posterior"]
        print(f"the same decoder fed z ~ q(z|x) of test digits: {post['confident_fraction']:.1%} confident, Frechet "
              f"distance {post['fid']:.1f} (the gap to the prior's samples: N(0, I) also draws codes no digit's posterior covers)")
    if metrics["train_seconds"] == 0:                 # a finished run, re-evaluated
        print(f"training: none in this run (the checkpoint holds all {metrics['steps']} steps)")
    else:
        print(f"training: {metrics['train_seconds']:.0f} s for {metrics['steps']} steps (target <= 300 s for the "
              f"default run): {ok[metrics['train_seconds'] <= 300]}")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

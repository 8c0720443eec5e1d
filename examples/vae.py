"""Train a variational autoencoder on MNIST: the ELBO, and a VAE as a one-step diffusion.

A VAE (Kingma & Welling 2014) encodes a digit into q(z | x) = N(mu(x), diag sigma^2(x)), decodes
a draw z = mu + sigma eps with p(x | z), and is trained on the evidence lower bound

    -log p(x) <= E_q[-log p(x | z)] + KL(q(z | x) || N(0, I))          (tinydiff/elbo.py)

This lesson (docs/vae-and-latent.md) trains td.models.VAE with the diffusion examples' Trainer
(only the loss differs), estimates the bound on --eval-digits official test digits term by term,
in nats and in bits/dim (with the default discretized decoder a bound on -log2 P(x) / 784 of the
8-bit digit, the convention of examples/mnist.py's diffusion bound, so the two sit side by
side), draws reconstructions, 100 digits decoded from the prior z ~ N(0, I), interpolations
and, for a 2-D latent, the latent map; then scores 500 prior samples with tinydiff's MNIST
classifier, beside the same decoder fed posterior draws z ~ q(z | x) of test digits.

Run it (3 to 4 minutes on 2 cores), or open it as a notebook (`# %%` cells):

    python examples/vae.py                                          # 8-d latent, discretized decoder
    python examples/vae.py --latent 2 --out out/vae_2d               # the 2-D latent map
    python examples/vae.py --latent 16 --out out/vae_16d             # a tighter bound, worse prior samples
    python examples/vae.py --decoder bernoulli --out out/vae_bernoulli

Pictures show the decoder's mean image, not a draw from p(x | z) (which adds independent noise to
every pixel). MNIST is read as in examples/mnist.py. Everything lands in --out (default out/vae).
"""
# %%
import time

import numpy as np

import tinydiff as td

# %% Settings: each one is a flag of the script; in a notebook, edit them here
run, R = td.Run("vae", __doc__, checkpoint_every=500), td.runs
td.recipes.mnist_flags(run)                                           # --data-dir, --no-download, --train-limit
run.run_flag("steps", 1500, "training steps", type=R.positive_int)
run.run_flag("batch", 64, "batch size", type=R.positive_int)
run.run_flag("lr", 2e-3, "peak learning rate (AdamW), cosine-decayed to 0", type=R.positive_float)
run.run_flag("ema", 0.999, "EMA decay of the weights used for evaluation (with warm-up)", type=R.decay_rate)
run.run_flag("kl_weight", 1.0, "weight of the KL term in training (1: the ELBO; the bound always uses 1)",
             type=R.nonnegative_float)
run.run_flag("seed", 0, "seed of every random draw", type=R.nonnegative_int)
run.run_flag("latent", "8", "latent shape: d (2 draws the latent map; 8 gives the prior samples nearest the real "
                            "digits, 16 the tightest bound) or kx7x7 (spatial: latent diffusion)",
             type=td.recipes.parse_latent)
run.run_flag("channels", "16,64", "widths at 28x28 and at 14x14/7x7 (multiples of 8)", type=td.recipes.parse_channels)
run.run_flag("decoder", "discretized", "p(x|z): a Gaussian over 8-bit bins (a likelihood, DDPM eq. 13) or "
                                       "Bernoulli logits", choices=["discretized", "bernoulli"])
run.eval_flag("eval_digits", 1000, "first N official test digits for the bound", type=R.positive_int)
run.eval_flag("elbo_samples", 4, "draws of z per test digit in the bound's estimate", type=R.positive_int)
run.eval_flag("n_samples", 500, "prior samples to draw and score", type=R.positive_int)
run.eval_flag("no_score", False, "skip the classifier scores")
args = run.parse()
DIGITS = 784                                 # dimensions of one digit: bits/dim = nats / (784 log 2)

# %% [markdown]
# ## The VAE and the data
# An encoder of two strided convolutions down to mu(x) and log sigma^2(x), a decoder mirroring it
# (td.models.VAE); the digits scaled to [-1, 1].

# %%
vae = td.recipes.vae_model(args)
x_train, _ = td.recipes.mnist_digits(args)                             # [N, 1, 28, 28] in [-1, 1]
print(f"MNIST: {len(x_train)} training digits. VAE: latent {'x'.join(map(str, args.latent))}, {args.decoder} "
      f"decoder, {vae.num_parameters():,} parameters")
run.start(vae)

# %% [markdown]
# ## Training on the negative ELBO
# One step (`td.Trainer.train_step`, loss `td.elbo.ELBOLoss`): a batch, z = mu + sigma eps (the
# reparameterisation trick of examples/basics.py), -log p(x | z) + KL, backward, AdamW, EMA.
# A VAE is a one-step diffusion: the reconstruction is its L_0, the KL its prior term L_T.

# %%
trainer = td.recipes.vae_trainer(vae, x_train, args, checkpoint_path=run.checkpoint,
                                 checkpoint_every=args.checkpoint_every, config=run.config)
train_seconds = run.train(trainer)
trainer.ema.copy_to(vae)                                               # evaluate the averaged weights
vae.eval()
if not run.tag:                        # the weights latent diffusion freezes (the same on any re-evaluation)
    td.recipes.save_vae(run.path("vae.npz"), vae)

# %% [markdown]
# ## The bound on test digits, term by term
# Each draw of z gives an unbiased estimate of each digit's -ELBO; the mean of --elbo-samples
# draws has less variance. A latent value is "in use" when its mean KL exceeds 0.01 nats.

# %%
x_test, test_labels = td.recipes.mnist_digits(args, "test")
x_eval, rng = x_test[:args.eval_digits], np.random.default_rng(args.seed + 1)     # evaluation's own stream
batches = [x_eval[i:i + 250] for i in range(0, len(x_eval), 250)]
with td.no_grad():
    draws = [[td.elbo.elbo_terms(vae, b, rng=rng) for _ in range(args.elbo_samples)] for b in batches]
    terms = {k: np.concatenate([np.mean([d[k].data for d in ds], axis=0) for ds in draws]).astype(np.float64)
             for k in ("nelbo", "reconstruction", "kl")}                     # per digit, nats [N]
    mu, log_variance = (np.concatenate(p) for p in zip(*[[t.data for t in vae.encode(b)] for b in batches]))
nelbo = terms["nelbo"]
stderr = float(nelbo.std(ddof=1) / np.sqrt(len(nelbo)))
kl = td.elbo.kl_to_standard_normal(mu, log_variance).mean(axis=0)      # [*latent]
metrics = {"latent_shape": list(args.latent), "decoder": args.decoder, "kl_weight": args.kl_weight,
           "parameters": vae.num_parameters(), "steps": trainer.step, "batch": args.batch,
           "train_seconds": round(train_seconds, 1), "final_loss_nats": float(np.mean(trainer.losses[-100:]) * DIGITS),
           "elbo": {"nelbo_nats": float(nelbo.mean()), "stderr_nats": stderr,
                    "reconstruction_nats": float(terms["reconstruction"].mean()), "kl_nats": float(terms["kl"].mean()),
                    "bpd": float(td.elbo.bits_per_dim(nelbo.mean(), DIGITS)),
                    "bpd_stderr": float(td.elbo.bits_per_dim(stderr, DIGITS)), "digits": len(nelbo),
                    "samples_per_digit": args.elbo_samples, "convention": (
                        "upper bound on -log2 P(x) / 784 of the 8-bit test digit (discretized Gaussian decoder), "
                        "unconditional: E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)), the first N official test digits"
                        if args.decoder == "discretized" else "Bernoulli cross-entropy of the grey values in [0, 1] "
                        "plus the KL: NOT a likelihood of 8-bit digits (not comparable with the diffusion bound)")},
           "active_latents": {"count": int(np.sum(kl > 0.01)), "of": int(kl.size),
                              "rule": "mean KL(q(z|x) || N(0, 1)) of the value > 0.01 nats"}}

# %% [markdown]
# ## Reconstructions, prior samples, and posterior samples
# The prior samples decode z ~ N(0, I). For contrast, the same decoder fed z ~ q(z | x) of test
# digits, where the encoder puts codes: the gap is the part of N(0, I) no digit's posterior covers.

# %%
decode = lambda z: np.concatenate([td.data.from_model_space(vae.generate(z[i:i + 250])) for i in  # noqa: E731
                                   range(0, len(z), 250)])                      # [N, 1, 28, 28] in [0, 1]
with td.no_grad():
    err = decode(mu) - td.data.from_model_space(x_eval)
    metrics["reconstruction"] = {"mse": float(np.mean(err ** 2)), "mae": float(np.mean(np.abs(err))),
                                 "on": "decoder mean at z = mu(x) vs the test digit, pixels in [0, 1]"}
    start = time.perf_counter()
    samples = decode(rng.standard_normal((args.n_samples, *args.latent)).astype(np.float32))[:, 0]   # [N, 28, 28]
    metrics["sample_seconds_per_100"] = round(100 * (time.perf_counter() - start) / args.n_samples, 3)
    n_post = min(args.n_samples, len(mu))
    posterior_samples = decode(td.elbo.reparameterize(mu[:n_post], log_variance[:n_post], rng=rng))[:, 0]
    shown = np.array([np.flatnonzero(test_labels == k)[s] for s in range(2) for k in range(10)])   # 0..9 twice
    mu_shown = vae.encode(x_test[shown])[0].data
    decoded, inputs = decode(mu_shown)[:, 0], td.data.from_model_space(x_test[shown, 0])
    w = np.linspace(0.0, 1.0, 10, dtype=np.float32).reshape(-1, *([1] * len(args.latent)))
    pairs = [(0, 6), (1, 7), (3, 8), (4, 9), (5, 2)]                         # digits to morph between
    strips = [decode((1 - w) * mu_shown[a] + w * mu_shown[b])[:, 0] for a, b in pairs]

# %% [markdown]
# ## Pictures (for a 2-D latent also the latent map of Kingma & Welling fig. 4)

# %%
td.viz.plot_loss(np.asarray(trainer.losses) * DIGITS, path=run.path("loss.png"),
                 title="training loss: -ELBO per digit (nats)" if args.kl_weight == 1 else
                 f"training loss: reconstruction + {args.kl_weight:g} KL per digit (nats)")
td.images.plot_image_rows([inputs[:10], decoded[:10], inputs[10:], decoded[10:]], run.path("reconstructions.png"),
                          row_labels=["input", "decoded", "input", "decoded"],
                          title="test digits and their reconstructions (decoder mean at z = mu(x))")
td.images.save_image_grid(samples[:100], run.path("samples.png"), nrow=10)
td.images.plot_image_rows(strips, run.path("interpolation.png"), row_labels=[f"{a} to {b}" for a, b in pairs],
                          title="decoding (1 - w) mu(x_a) + w mu(x_b), w = 0 ... 1")
if args.latent == (2,):
    axis = np.linspace(-3.0, 3.0, 15)
    grid = np.stack(np.meshgrid(axis, -axis), axis=-1).reshape(-1, 2).astype(np.float32)   # rows: z2 high to low
    with td.no_grad():
        mosaic = decode(grid)[:, 0].reshape(15, 15, 28, 28).transpose(0, 2, 1, 3).reshape(15 * 28, 15 * 28)
        mu_map = np.concatenate([vae.encode(x_test[i:i + 250])[0].data for i in range(0, 5000, 250)])  # 5,000
    fig = td.viz.figure((11, 5.2), dpi=110)
    left, right = fig.subplots(1, 2)
    dots = left.scatter(*mu_map.T, c=test_labels[:len(mu_map)], cmap="tab10", s=4, vmin=-0.5, vmax=9.5)
    fig.colorbar(dots, ax=left, ticks=range(10), label="digit")
    left.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="z1", ylabel="z2",
             title=f"encoder means mu(x) of {len(mu_map):,} test digits")
    right.imshow(mosaic, cmap="gray", extent=(-3, 3, -3, 3), vmin=0, vmax=1)
    right.set(xlabel="z1", ylabel="z2", title="decoder mean at z on a 15 x 15 grid")
    td.viz.save(fig, run.path("latent_map.png"))
run.save("samples.npy", samples.astype(np.float32))
run.save("elbo_per_digit.npy", nelbo)                  # -ELBO in nats of test digit i: compare any subset

# %% [markdown]
# ## The scores and the numbers

# %%
if not args.no_score:
    scorer = td.scorer.DigitScorer.load(data_dir=args.data_dir)
    metrics["scorer"] = dict(scorer.score(samples, None, seed=args.seed), on="decoder means of z ~ N(0, I): the "
                             "VAE's own prior samples", class_counts=np.bincount(scorer.predict(samples),
                                                                                 minlength=10).tolist())
    metrics["scorer_posterior"] = dict(scorer.score(posterior_samples, None, seed=args.seed), on=(
        f"decoder means of z ~ q(z|x) of the first {n_post} test digits: where the encoder puts codes, for "
        "contrast with the prior"))
e = metrics["elbo"]
print(f"-ELBO on {e['digits']} test digits: {e['nelbo_nats']:.1f} +- {e['stderr_nats']:.1f} nats = {e['bpd']:.4f} +- "
      f"{e['bpd_stderr']:.4f} bits/dim{'' if args.decoder == 'discretized' else ' (a cross-entropy, no likelihood)'}"
      f" (reconstruction {e['reconstruction_nats']:.1f} + KL {e['kl_nats']:.1f} nats; "
      f"{metrics['active_latents']['count']} of {metrics['active_latents']['of']} latent values in use)")
print(f"reconstruction error (decoder mean at mu(x)): MSE {metrics['reconstruction']['mse']:.4f}, pixels in [0, 1]")
if not args.no_score:
    sc, post = metrics["scorer"], metrics["scorer_posterior"]
    R.target(f"prior samples read with confidence >= 0.9: {sc['confident_fraction']:.1%}; Frechet distance "
             f"{sc['fid']:.1f} (floor {sc['fid_floor']:.1f})", ">= 80%", sc["confident_fraction"] >= 0.8)
    print(f"the same decoder fed z ~ q(z|x) of test digits: {post['confident_fraction']:.1%} confident, Frechet "
          f"distance {post['fid']:.1f}")
if metrics["train_seconds"] == 0:                     # a finished run, re-evaluated
    print(f"training: none in this run (the checkpoint holds all {trainer.step} steps)")
else:
    R.target(f"training: {train_seconds:.0f} s for {trainer.step} steps", "<= 300 s for the default run",
             train_seconds <= 300)
run.finish(metrics)

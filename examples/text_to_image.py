"""Stable Diffusion in miniature: text prompts to coloured digits (docs/text-to-image.md).

The pipeline of Rombach et al. (2022) at laptop size, on td.data.ColoredMNIST: captions drawn
afresh at every visit from a small grammar ("a red seven", "7 in red", "a seven", "something red",
"a bold red seven", ...; held-out digit-colour pairs never captioned); a word-level tokenizer and a
small transformer text encoder trained with the UNet, read by cross-attention (td.models.TextUNet);
diffusion in a frozen 3-channel VAE's 4 x 7 x 7 latent space; classifier-free guidance with
negative prompts, eps(neg) + (1 + w) (eps(prompt) - eps(neg)).

Run it (about 15 minutes of training on 2 cores, VAE included), or open it as a notebook:

    python examples/text_to_image.py
    python examples/text_to_image.py --checkpoint out/text_to_image/checkpoint.npz --prompt "a blue four" \\
        --negative "bold" --n 16 --out out/blue_four        # only samples: samples.npy [N, 3, 28, 28], grid.png

Outputs in --out (default out/text_to_image): grid.png (the prompts under their rows),
attention.png (which word each latent pixel looked at), samples.npy, metrics.json, checkpoint.npz.
"""
# %%
import os

import numpy as np

import tinydiff as td
from tinydiff.data import COLOUR_NAMES, captions

# %% Settings: each one is a flag of the script; in a notebook, edit them here
run, R = td.Run("text_to_image", __doc__, checkpoint_every=500), td.runs
td.recipes.mnist_flags(run)
run.run_flag("vae", None, "the frozen 3-channel VAE (default OUT/vae/vae.npz, trained first if missing)", type=str)
run.flag("vae_steps", 2000, "training steps of a missing VAE (latent 4x7x7)", type=R.positive_int)
run.run_flag("steps", 6000, "training steps of the text-conditioned UNet", type=R.positive_int)
run.run_flag("batch", 64, "batch size", type=R.positive_int)
run.run_flag("lr", 2e-3, "peak learning rate (AdamW), cosine-decayed to 0", type=R.positive_float)
run.run_flag("ema", 0.999, "EMA decay of the sampling weights (with warm-up)", type=R.decay_rate)
run.run_flag("p_empty", 0.1, "probability of the empty caption (the null prompt guidance needs)", type=R.probability)
run.run_flag("seed", 0, "seed of every random draw", type=R.nonnegative_int)
run.run_flag("width", 64, "UNet channels (one level at 7 x 7)", type=R.positive_int)
run.run_flag("text_dim", 64, "width D of the text encoder's token states", type=R.positive_int)
run.run_flag("text_layers", 2, "transformer layers of the text encoder", type=R.positive_int)
run.run_flag("conditioning", "both", "cross: the prompt enters through cross-attention only (Stable Diffusion "
             "v1); both: also its pooled state in the time embedding", choices=["cross", "both"])
run.run_flag("T", 1000, "number of diffusion steps", type=R.positive_int)
run.eval_flag("sample_steps", 50, "DDIM steps (eta 0)", type=R.positive_int)
run.eval_flag("guidance", 3.0, "classifier-free guidance w (0 = none; Stable Diffusion's scale is 1 + w)",
              type=R.nonnegative_float)
run.eval_flag("per_pair", 5, "samples per digit-colour pair for the full prompts (60 pairs)", type=R.positive_int)
run.eval_flag("per_prompt", 50, "samples per partial or negative prompt", type=R.positive_int)
run.eval_flag("no_score", False, "skip the digit scorer (colours only)")
run.flag("checkpoint", None, "a trained run's checkpoint.npz: train nothing, only sample --prompt", type=str)
run.flag("prompt", None, "with --checkpoint: the prompt to sample", type=str)
run.flag("negative", "", "with --prompt: a negative prompt (default: the empty one, plain guidance)", type=str)
run.flag("n", 16, "with --prompt: how many samples", type=R.positive_int)
tokenizer = td.text.Tokenizer()


def check(args):
    if (args.checkpoint is None) != (args.prompt is None):
        raise ValueError("--checkpoint and --prompt go together: a trained run's checkpoint, and what to sample")
    for text in (args.prompt, args.negative):
        tokenizer(text or "")                           # an unknown word: a one-line error naming it
    R.check_chain(td.recipes.mnist_betas(args.T, "cosine"), args)         # --sample-steps <= T
    args.vae = args.vae or os.path.join(args.out, "vae", "vae.npz")


args = run.parse(check=check)


# %% [markdown]
# ## The frozen VAE (E and D of the figure), the captioned latents, the model
# Codes are scaled by s = 1 / std(z) (td.latent.LatentSpace) to the unit scale the schedule assumes.
# Each training digit is encoded once in every colour it may take; a caption is drawn per visit.

# %%
if args.checkpoint:                                     # sample only: the model, the VAE and s from the run
    diffusion, model, meta = td.resume.load_trained(args.checkpoint, td.recipes.text_model)
    space = td.latent.LatentSpace(td.recipes.load_vae(meta["config"]["vae"]), meta["config"]["scale_factor"])
    run.start()
else:
    images, labels = td.recipes.mnist_digits(args, model_space=False)     # uint8 [N, 28, 28], [N]
    coloured = td.data.ColoredMNIST(images, labels)                      # digit d never in colour d % 6
    vae_seconds = 0.0
    if not os.path.exists(args.vae):
        print(f"no VAE at {args.vae}: training one for 3-channel digits, latent 4x7x7, {args.vae_steps} steps")
        x_vae = coloured.sample(len(images), np.random.default_rng(args.seed))[0]     # one allowed colour each
        vae_seconds = td.recipes.train_vae(args.vae, x_vae, dict(latent=(4, 7, 7), in_channels=3,
                                                                 steps=args.vae_steps, seed=args.seed))
    vae = td.recipes.load_vae(args.vae)
    space = td.latent.LatentSpace.fit(vae, coloured.sample(2000, np.random.default_rng(args.seed + 2))[0],
                                      np.random.default_rng(args.seed + 2))
    data = td.text.CaptionedLatents.from_digits(space, images, labels, tokenizer, p_empty=args.p_empty)
    print(f"VAE {args.vae}: s = 1 / std(z) = {space.scale_factor:.4f}; {len(data)} captioned coloured digits")
    diffusion, model = td.recipes.text_model(args)       # v-prediction, cosine schedule; the TextUNet
    run.start(model)
    trainer = td.Trainer(model, td.DiffusionLoss(diffusion), data, batch_size=args.batch, lr=args.lr,
                         warmup_steps=min(100, args.steps // 10), lr_decay_steps=args.steps, ema_decay=args.ema,
                         ema_warmup=True, seed=args.seed, log_every=100, checkpoint_path=run.checkpoint,
                         checkpoint_every=args.checkpoint_every,
                         config={**run.config, "scale_factor": space.scale_factor})
    train_seconds = run.train(trainer)                  # Trainer.train_step: DDPM Algorithm 1 on (s z, prompt ids)
    trainer.ema.copy_to(model)                          # sample with the averaged weights
print(f"TextUNet: {model.num_parameters():,} parameters (text encoder {model.text_encoder.num_parameters():,})")

# %% Sampling: guided DDIM in the latent space, decoded once (a negative prompt replaces the empty one)
def generate(prompts, negative="", seed=1):
    """Images [N, 3, 28, 28] in [0, 1] for a list of prompts, the noise fixed by seed."""
    noise = np.random.default_rng(seed).standard_normal((len(prompts), *space.shape), dtype=np.float32)
    guide = (lambda m: td.ClassifierFreeGuidance(m, args.guidance, negative=tokenizer(negative)[0])) if negative \
        else args.guidance
    with td.no_grad():
        codes = td.sample(diffusion, model, noise.shape, np.random.default_rng(seed), sampler="ddim",
                          steps=args.sample_steps, noise=noise, model_kwargs={"y": tokenizer(prompts)}, guidance=guide,
                          progress=td.Progress(0, f"sampling {len(prompts)} x {prompts[0]!r}..."))
    return td.data.from_model_space(space.decode(codes))


if args.prompt:
    samples = generate([args.prompt] * args.n, args.negative, seed=args.seed)
    run.save("samples.npy", samples.astype(np.float32))
    td.images.save_image_grid(samples, run.path("grid.png"), nrow=min(8, args.n))
    metrics = run.finish({"prompt": args.prompt, "negative": args.negative, "n": args.n, "guidance": args.guidance,
                          "checkpoint": args.checkpoint, "step": meta["step"]})

# %% [markdown]
# ## The fixed prompts, each sample read back by the library's readers: its digit (the MNIST scorer
# on the brightest channel; -1 with --no-score) and its colour (the nearest palette colour)

# %%
if not args.prompt:
    scorer = None if args.no_score else td.scorer.DigitScorer.load(data_dir=args.data_dir)

    def read(prompts, negative="", seed=1):
        """Sample the prompts; return (digits, colours) read from the images, int [N] each."""
        rgb = generate(prompts, negative, seed)
        return (np.full(len(rgb), -1) if scorer is None else scorer.predict(td.data.to_grey(rgb)),
                td.data.nearest_colour(rgb))

    held, share = td.data.held_out_mask(), lambda ok: round(float(np.mean(ok)), 4)
    pairs = np.array([(d, c) for d in range(10) for c in range(len(COLOUR_NAMES))])
    y = np.repeat(pairs, args.per_pair, axis=0)                               # [N, 2] digit, colour
    (digit, colour), is_held = read([captions.describe(d, c) for d, c in y]), held[y[:, 0], y[:, 1]]  # "a red seven"
    metrics = {"full": {part: {"digit": share(digit[sel] == y[sel, 0]), "colour": share(colour[sel] == y[sel, 1]),
                               "n": int(sel.sum())} for part, sel in (("seen", ~is_held), ("held_out", is_held))}}
    k = args.per_prompt                                                       # partial and negative prompts
    (d7, c7), (dr, cr) = read(["a seven"] * k, seed=2), read(["something red"] * k, seed=3)
    dn, cn = read(["a seven"] * k, negative="red", seed=2)                    # the same noise as "a seven"
    metrics["partial"] = {"a seven": dict(sevens=share(d7 == 7), colours=len(set(c7[c7 >= 0])), red=share(c7 == 0)),
                          "something red": {"red": share(cr == 0), "digits": len(set(dr[dr >= 0]))}}
    metrics["negative"] = {"prompt": "a seven", "negative": "red", "red": share(cn == 0), "sevens": share(dn == 7)}
    seen = np.repeat(pairs[~held[pairs[:, 0], pairs[:, 1]]], 2, axis=0)      # paraphrases: same pairs, same noise
    metrics["paraphrases"] = {}
    for phrasing, form in captions.PARAPHRASES:
        d_, c_ = read([captions.describe(d, c, phrasing=phrasing, numeral=form == "numeral") for d, c in seen], seed=4)
        name = captions.describe(7, 0, phrasing=phrasing, numeral=form == "numeral")
        metrics["paraphrases"][name] = share((c_ == seen[:, 1]) & ((d_ == seen[:, 0]) | (scorer is None)))

# %% Pictures: each prompt under its row; which word each latent pixel looked at (its latent noised to t = 0.4 T)
if not args.prompt:
    shown = [("a red seven", ""), ("a yellow seven", ""), ("a blue four", ""), ("the number 4 in blue", ""),
             ("a seven", ""), ("a seven", "red"), ("something red", ""), ("a thin cyan two", ""),
             ("a bold cyan two", ""), ("3 in magenta", "")]
    rows = [generate([p] * 10, negative=neg, seed=5) for p, neg in shown]
    names = [f"{p!r}" + (f", negative {neg!r}" if neg else "") + (" (a held-out pair)" if i in (1, 2, 3) else "")
             for i, (p, neg) in enumerate(shown)]
    td.images.plot_image_rows(rows, run.path("grid.png"), row_captions=names,
                              title=f"DDIM {args.sample_steps} steps, guidance w = {args.guidance:g}")
    metrics["ink"] = {shown[i][0]: float(rows[i].max(axis=1).sum(axis=(1, 2)).mean()) for i in (7, 8)}  # thin, bold
    picked = (0, 6, 8, 9)                                                     # one sample of four rows
    prompts, images = [shown[i][0] for i in picked], np.stack([rows[i][0] for i in picked])
    codes, t = space.posterior(images * 2 - 1)[0] * space.scale_factor, np.full(len(picked), 2 * args.T // 5)
    maps = model.attention_maps(diffusion.q_sample(codes, t, rng=np.random.default_rng(0)), t, tokenizer(prompts))[0]
    td.images.plot_attention_maps(images, maps.reshape(len(picked), 7, 7, -1), [tokenizer.tokens(p) for p in prompts],
                                  run.path("attention.png"))
    run.save("samples.npy", np.concatenate(rows).astype(np.float32))

# %% The numbers, each beside its target
if not args.prompt:
    full, part, neg, para = (metrics[k] for k in ("full", "partial", "negative", "paraphrases"))
    metrics.update(steps=trainer.step, train_seconds=round(train_seconds, 1), vae_train_seconds=round(vae_seconds, 1),
                   train_cpu_seconds=round(run.train_cpu_seconds, 1), scale_factor=space.scale_factor,
                   guidance=args.guidance, loss=float(np.mean(trainer.losses[-100:])), digit_reader=scorer is not None)
    gap = max(abs(v - para["a red seven"]) for v in para.values())
    print("\n".join(f"  paraphrase {name!r:24} digit and colour right: {v:.1%}" for name, v in para.items()))
    if run.saved is None:                               # (a resumed run's time is its first session's)
        R.target(f"training: VAE {vae_seconds:.0f} s + UNet {train_seconds:.0f} s", "<= 900 s on 2 idle cores",
                 vae_seconds + train_seconds <= 900)
    R.target(f"colour as asked: seen {full['seen']['colour']:.1%}, held out {full['held_out']['colour']:.1%}",
             ">= 95%", min(full["seen"]["colour"], full["held_out"]["colour"]) >= 0.95)
    R.target(f"digit as asked: seen pairs {full['seen']['digit']:.1%}, held out {full['held_out']['digit']:.1%}",
             ">= 90%, >= 80%", full["seen"]["digit"] >= 0.9 and full["held_out"]["digit"] >= 0.8)
    R.target(f"'a seven': {part['a seven']['sevens']:.0%} sevens in {part['a seven']['colours']} colours",
             ">= 90% in >= 4", part["a seven"]["sevens"] >= 0.9 and part["a seven"]["colours"] >= 4)
    R.target(f"'something red': {part['something red']['red']:.0%} red, {part['something red']['digits']} digits",
             ">= 95%, >= 6 digits", part["something red"]["red"] >= 0.95 and part["something red"]["digits"] >= 6)
    R.target(f"'a seven', negative 'red': {neg['red']:.0%} red ('a seven' alone {part['a seven']['red']:.0%}), "
             f"{neg['sevens']:.0%} sevens", "<= 2% red, >= 90% sevens", neg["red"] <= 0.02 and neg["sevens"] >= 0.9)
    R.target(f"paraphrases: largest gap to 'a red seven' ({para['a red seven']:.1%}) {gap:.1%}", "<= 5 points",
             gap <= 0.05)
    run.finish(metrics)

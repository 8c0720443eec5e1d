"""Recipes the examples share, so that no example imports another.

    mnist_model(config)          the diffusion and UNet of examples/mnist.py (its default run
                                 with no config): the model editing and latent diffusion compare with
    mnist_trainer(...)           the Trainer of that run: AdamW 2e-3 warmed up and cosine-decayed,
                                 EMA 0.999 with warm-up, labels dropped 10% of the time
    load_mnist_run(checkpoint)   a trained mnist.py run's diffusion and model (EMA weights), rebuilt
                                 from the flags saved in its checkpoint
    mnist_flags(run)             --data-dir, --no-download, --train-limit on a td.Run
    mnist_digits(args, split)    MNIST as the model sees it ([N, 1, 28, 28] in [-1, 1]) with its
                                 labels; a missing or broken file is one line (RunError)
    vae_model, vae_trainer       the VAE of examples/vae.py and its Trainer (the ELBO as the loss)
    save_vae, load_vae           a trained VAE's weights in one .npz: what latent diffusion freezes
    train_vae(path, images)      train that VAE and save it, resuming a killed training
    text_model(config)           examples/text_to_image.py's latent diffusion and TextUNet

The trained scorer that reads generated digits is ``td.scorer.DigitScorer.load()``. The
lessons that use these (docs/mnist.md, docs/editing.md, docs/vae-and-latent.md) show what
each builds; a config is anything with the flags as attributes (argparse's Namespace, the
SimpleNamespace ``resume.load_trained`` makes from a checkpoint) or a dict.
"""
from __future__ import annotations

import argparse
import os
from types import SimpleNamespace

import numpy as np

from .checkpoint import flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from .data import load_mnist, to_model_space
from .elbo import ELBOLoss
from .flags import RunError, positive_int
from .models import VAE, TextUNet, UNet
from .objectives import DiffusionLoss, make_diffusion
from .resume import load_trained, train_within_budget
from .schedules import cosine_beta_schedule, linear_beta_schedule
from .train import Trainer

# examples/mnist.py's default run (docs/mnist.md): 2,000 steps, ~98.8% read as the digit asked for.
MNIST_DEFAULTS = dict(width=16, mults=(1, 2, 2), T=1000, schedule="cosine", cosine_s=0.008, objective="eps",
                      weighting="min_snr",
                      unconditional=False, seed=0, steps=2000, batch=64, lr=2e-3, ema=0.999, label_dropout=0.1)


def _settings(config, **overrides) -> SimpleNamespace:
    """MNIST_DEFAULTS, then the config's values (a namespace or a dict), then the overrides."""
    given = config if isinstance(config, dict) else vars(config) if config is not None else {}
    return SimpleNamespace(**{**MNIST_DEFAULTS, **{k: v for k, v in given.items() if k in MNIST_DEFAULTS},
                              **overrides})


def mnist_betas(T: int = 1000, schedule: str = "cosine", cosine_s: float = 0.008) -> np.ndarray:
    """The schedule of an MNIST run, float64 [T]: cosine (Nichol & Dhariwal 2021 eq. 17, offset
    ``cosine_s``; their 0.008 by default) or DDPM's linear (which has no offset).

    >>> td.recipes.mnist_betas(1000).shape
    (1000,)
    >>> float(np.sqrt(td.recipes.mnist_betas(1000, cosine_s=5e-4)[0])).__round__(4)   # sigma_1: a smaller first step
    0.0022
    """
    if schedule not in ("cosine", "linear"):
        raise ValueError(f"schedule: expected 'cosine' or 'linear', got {schedule!r}")
    if schedule == "linear":
        return linear_beta_schedule(T)
    if not 0 < cosine_s < 1:
        raise ValueError(f"cosine_s: expected the cosine schedule's offset s in (0, 1), got {cosine_s!r}")
    return cosine_beta_schedule(T, s=cosine_s)


def mnist_model(config=None, **overrides):
    """(diffusion, model): examples/mnist.py's GaussianDiffusion and class-conditional UNet.

    The diffusion: ``make_diffusion(objective, betas, decoder_nll="discretized",
    mse_weighting=weighting)``; the UNet: ``UNet(base_channels=width, channel_mults=mults,
    num_classes=10 (None if unconditional), learned_variance=...)`` with weights drawn from
    ``default_rng(seed)``. Missing settings are the default run's (MNIST_DEFAULTS).

    >>> diffusion, model = td.recipes.mnist_model()            # the default run's model, untrained
    >>> model.num_parameters(), diffusion.num_timesteps
    (147665, 1000)
    """
    s = _settings(config, **overrides)
    diffusion = make_diffusion(s.objective, mnist_betas(s.T, s.schedule, s.cosine_s), decoder_nll="discretized",
                               mse_weighting=s.weighting)
    model = UNet(base_channels=s.width, channel_mults=tuple(s.mults), num_classes=None if s.unconditional else 10,
                 learned_variance=diffusion.learned_variance, rng=np.random.default_rng(s.seed))
    return diffusion, model


def mnist_trainer(diffusion, model, images, labels, settings=None, **trainer_options) -> Trainer:
    """The Trainer of an mnist.py run: batches of images [N, 1, 28, 28] in [-1, 1] with their
    labels (none if unconditional), labels dropped to null with probability label_dropout
    (classifier-free guidance), AdamW at lr warmed up over min(100, steps / 10) steps and
    cosine-decayed to 0 at ``steps``, EMA with warm-up. ``settings``: the run's flags (a namespace
    or a dict; missing ones are MNIST_DEFAULTS). ``trainer_options`` (checkpoint_path,
    checkpoint_every, config, log_every, ...) go to the Trainer.

    >>> diffusion, model = td.recipes.mnist_model(width=8, T=50)
    >>> x = np.zeros((20, 1, 28, 28), np.float32)
    >>> trainer = td.recipes.mnist_trainer(diffusion, model, x, np.arange(20) % 10, {"steps": 2}, log_every=0)
    >>> len(trainer.train(2))
    2
    """
    s = _settings(settings)
    data = images if s.unconditional else (images, labels)
    options = dict(batch_size=s.batch, lr=s.lr, warmup_steps=min(100, s.steps // 10), lr_decay_steps=s.steps,
                   ema_decay=s.ema, ema_warmup=True, seed=s.seed, log_every=50)
    loss = DiffusionLoss(diffusion, label_dropout=0.0 if s.unconditional else s.label_dropout)
    return Trainer(model, loss, data, **{**options, **trainer_options})


def load_mnist_run(checkpoint, *, weights: str = "ema", name: str = "--checkpoint"):
    """(diffusion, model, meta) of a trained examples/mnist.py run, from its checkpoint.npz:
    ``resume.load_trained`` with ``mnist_model`` as the builder (meta["config"]: the run's flags).

    >>> td.recipes.load_mnist_run("no/such/checkpoint.npz")
    Traceback (most recent call last):
    ...
    tinydiff.flags.RunError: --checkpoint no/such/checkpoint.npz: there is no checkpoint there
    """
    return load_trained(checkpoint, mnist_model, weights=weights, name=name)


def mnist_flags(run) -> None:
    """Add the MNIST data flags to a td.Run: --data-dir, --no-download, --train-limit (a run flag).

    >>> run = td.Run("demo")
    >>> td.recipes.mnist_flags(run)
    >>> args = run.parse(["--train-limit", "300", "--no-download"])
    >>> args.train_limit, args.no_download, args.data_dir
    (300, True, None)
    """
    run.flag("data_dir", None, "folder with the MNIST files (default: $TINYDIFF_DATA/mnist or "
                               "~/.cache/tinydiff/mnist)", type=str)
    run.flag("no_download", False, "never download MNIST; fail if it is missing")
    run.run_flag("train_limit", None, "use only the first N training digits", type=positive_int)


def mnist_digits(args, split: str = "train", limit: int | None = None, model_space: bool = True):
    """(x [N, 1, 28, 28] float32 in [-1, 1], labels int64 [N]) of MNIST's ``split``, read as the
    flags of ``mnist_flags`` say (the train split: the first --train-limit digits); with
    ``model_space=False`` the images as stored (uint8 [N, 28, 28]). A missing, undownloadable or
    corrupt file is a RunError naming it.

    >>> from types import SimpleNamespace
    >>> td.recipes.mnist_digits(SimpleNamespace(data_dir="/no/such/folder", no_download=True, train_limit=None))
    Traceback (most recent call last):
    ...
    tinydiff.flags.RunError: MNIST: ...
    """
    if split == "train" and limit is None:
        limit = getattr(args, "train_limit", None)
    try:
        images, labels = load_mnist(split, args.data_dir, download=not args.no_download, limit=limit)
    except (OSError, ValueError) as err:          # missing files, no network, a corrupt file: one line
        raise RunError(f"MNIST: {err}") from None
    return (to_model_space(images) if model_space else images), labels


__all__ = ["MNIST_DEFAULTS", "mnist_betas", "mnist_model", "mnist_trainer", "load_mnist_run", "mnist_flags",
           "mnist_digits"]


# ---------------------------------------------------------------- the VAE of examples/vae.py
# examples/vae.py's default run (docs/vae-and-latent.md): an 8-d latent, 1,500 steps. Latent
# diffusion freezes one with latent (4, 7, 7).
VAE_DEFAULTS = dict(latent=(8,), channels=(16, 64), decoder="discretized", kl_weight=1.0, seed=0, steps=1500,
                    batch=64, lr=2e-3, ema=0.999, in_channels=1)


def parse_latent(text) -> tuple:
    """argparse type of a VAE's latent shape: "16" -> (16,) (a flat latent), "4x7x7" -> (4, 7, 7).

    >>> td.recipes.parse_latent("4x7x7"), td.recipes.parse_latent("16")
    ((4, 7, 7), (16,))
    """
    try:
        shape = tuple(int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 16 or 4x7x7, got {text!r}") from None
    if len(shape) not in (1, 3) or min(shape) < 1 or len(shape) == 3 and shape[1:] != (7, 7):
        raise argparse.ArgumentTypeError(f"expected d (a flat latent) or kx7x7 (a spatial one), got {text!r}")
    return shape


def parse_channels(text) -> tuple:
    """argparse type of a VAE's two widths (at 28 x 28 and at 14 x 14 / 7 x 7): "16,64" -> (16, 64).

    >>> td.recipes.parse_channels("8,16")
    (8, 16)
    """
    try:
        channels = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        channels = ()
    if len(channels) != 2 or min(channels) < 8 or any(c % 8 for c in channels):
        raise argparse.ArgumentTypeError(f"expected two widths, multiples of 8 (GroupNorm's 8 groups), such as "
                                         f"16,64, got {text!r}")
    return channels


def _vae_settings(config=None, **overrides) -> SimpleNamespace:
    """VAE_DEFAULTS, then the config's values (a namespace or a dict), then the overrides."""
    given = config if isinstance(config, dict) else vars(config) if config is not None else {}
    return SimpleNamespace(**{**VAE_DEFAULTS, **{k: v for k, v in given.items() if k in VAE_DEFAULTS}, **overrides})


def vae_model(config=None, **overrides):
    """examples/vae.py's VAE (``models.VAE(latent, channels, decoder, in_channels=...)``, weights
    from ``default_rng(seed)``); missing settings are VAE_DEFAULTS' (in_channels 1: grey digits).

    >>> td.recipes.vae_model(latent=(4, 7, 7)).latent_shape
    (4, 7, 7)
    """
    s = _vae_settings(config, **overrides)
    return VAE(tuple(s.latent), tuple(s.channels), decoder=s.decoder, in_channels=s.in_channels,
               rng=np.random.default_rng(s.seed))


def vae_trainer(vae, images, settings=None, **trainer_options) -> Trainer:
    """The Trainer of an examples/vae.py run: the negative ELBO (``elbo.ELBOLoss`` with
    kl_weight) on batches of images [N, 1, 28, 28] in [-1, 1], AdamW at lr warmed up over
    min(100, steps / 10) steps and cosine-decayed to 0 at ``steps``, EMA with warm-up. The
    Trainer is the diffusion examples' own; only the loss differs.

    >>> vae = td.recipes.vae_model(latent=(2,), channels=(8, 8))
    >>> trainer = td.recipes.vae_trainer(vae, np.zeros((8, 1, 28, 28), np.float32), {"steps": 2, "batch": 4},
    ...                                  log_every=0)
    >>> len(trainer.train(2))
    2
    """
    s = _vae_settings(settings)
    options = dict(batch_size=s.batch, lr=s.lr, warmup_steps=min(100, s.steps // 10), lr_decay_steps=s.steps,
                   ema_decay=s.ema, ema_warmup=True, seed=s.seed, log_every=100)
    return Trainer(vae, ELBOLoss(kl_weight=s.kl_weight), images, **{**options, **trainer_options})


def save_vae(path, vae) -> None:
    """Write a VAE's weights and architecture (``vae.config``) to one .npz, atomically: the frozen
    VAE that latent diffusion loads (``load_vae``).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "vae.npz")
    >>> td.recipes.save_vae(path, td.recipes.vae_model(latent=(3,), channels=(8, 8)))
    >>> sorted(td.load_checkpoint(path)[1]["vae"])
    ['channels', 'decoder', 'in_channels', 'latent_shape', 'num_groups']
    """
    save_checkpoint(path, flatten_state({"model": vae.state_dict()}), {"vae": vae.config})


def load_vae(path, name: str = "--vae"):
    """The VAE saved by ``save_vae``, in eval mode; a missing or foreign file is one line (RunError).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "vae.npz")
    >>> td.recipes.save_vae(path, td.recipes.vae_model(latent=(3,), channels=(8, 8)))
    >>> td.recipes.load_vae(path).latent_shape
    (3,)
    """
    try:
        arrays, meta = load_checkpoint(path)
        config = dict(meta["vae"])
        vae = VAE(tuple(config.pop("latent_shape")), tuple(config.pop("channels")), **config,
                  rng=np.random.default_rng(0))
        vae.load_state_dict(unflatten_state(arrays)["model"])
    except FileNotFoundError:
        raise RunError(f"{name} {path}: there is no VAE there") from None
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise RunError(f"{name} {path} is not a VAE written by td.recipes.save_vae ({err})") from None
    return vae.eval()


def train_vae(path, images, settings=None, log=print) -> float:
    """Train examples/vae.py's VAE (``vae_model`` + ``vae_trainer``: ``settings`` over
    VAE_DEFAULTS) on images [N, 1, 28, 28] and save its averaged weights to ``path`` (vae.npz),
    with checkpoints beside it in checkpoint.npz: a killed training resumes from there. Returns
    the seconds of training. How latent diffusion gets the VAE it freezes when it has none.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "vae.npz")
    >>> x = np.zeros((8, 1, 28, 28), np.float32)
    >>> seconds = td.recipes.train_vae(path, x, {"latent": (2,), "channels": (8, 8), "steps": 2, "batch": 4},
    ...                                log=lambda line: None)
    >>> td.recipes.load_vae(path).latent_shape
    (2,)
    """
    s = _vae_settings(settings)
    checkpoint = os.path.join(os.path.dirname(os.path.abspath(path)), "checkpoint.npz")
    vae = vae_model(s)
    trainer = vae_trainer(vae, images, s, checkpoint_path=checkpoint, checkpoint_every=500, config=vars(s),
                          log=log, log_every=100)
    saved = load_checkpoint(checkpoint)[1] if os.path.isfile(checkpoint) else None     # a killed training
    seconds = train_within_budget(trainer, checkpoint, steps=s.steps, saved=saved, log=log)
    with trainer.ema.average_parameters(vae):
        save_vae(path, vae)
    return seconds


__all__ += ["VAE_DEFAULTS", "parse_latent", "parse_channels", "vae_model", "vae_trainer", "save_vae", "load_vae",
            "train_vae"]


# ---------------------------------------------------------------- text to image (examples/text_to_image.py)
TEXT_DEFAULTS = dict(T=1000, width=64, text_dim=64, text_layers=2, conditioning="both", seed=0)


def text_model(config=None, **overrides):
    """(diffusion, model) of examples/text_to_image.py: a v-predicting diffusion (cosine schedule,
    min-SNR weighting) on 4 x 7 x 7 latents and a ``TextUNet`` (one level, AdaGN, the tokenizer's
    vocabulary; ``conditioning`` "both" adds the pooled prompt to the time embedding, "cross" does
    not). Missing settings are TEXT_DEFAULTS'.

    >>> diffusion, model = td.recipes.text_model(width=16, text_dim=16)
    >>> model(np.zeros((1, 4, 7, 7), np.float32), np.array([3]), y=td.text.Tokenizer()(["a red seven"])).shape
    (1, 4, 7, 7)
    """
    from .text import Tokenizer
    given = config if isinstance(config, dict) else vars(config) if config is not None else {}
    s = SimpleNamespace(**{**TEXT_DEFAULTS, **{k: v for k, v in given.items() if k in TEXT_DEFAULTS}, **overrides})
    tokenizer = Tokenizer()
    diffusion = make_diffusion("eps", mnist_betas(s.T, "cosine"), model_mean_type="v", mse_weighting="min_snr")
    model = TextUNet(tokenizer.vocab_size, tokenizer.length, in_channels=4, base_channels=s.width, text_dim=s.text_dim,
                     text_layers=s.text_layers, pooled=s.conditioning == "both", scale_shift=True,
                     rng=np.random.default_rng(s.seed))
    return diffusion, model


__all__ += ["TEXT_DEFAULTS", "text_model"]

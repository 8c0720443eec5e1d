"""The MNIST sample scorer: a small digit classifier, trained with tinydiff itself, that says
how good generated digits are.

It computes, for samples a user brings (N x 28 x 28, float in [0, 1] or uint8):

    accuracy             fraction classified as the label they were generated for
                         (class-conditional samples)
    confident_fraction   fraction whose top class probability is >= threshold (0.9):
                         "looks clearly like some digit", for unconditional samples
    fid                  Frechet distance between the classifier's penultimate features of
                         the samples and of N real test digits
    fid_floor            the same distance between two disjoint sets of N real test digits
    test_accuracy        the classifier's own accuracy on the official 10,000 test digits

The few ideas:

* **A Frechet distance compares two Gaussians fitted to features.** With means mu_a, mu_b
  and covariances S_a, S_b of the features of two sets (Heusel et al. 2017),

      FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}),

  the squared 2-Wasserstein distance between N(mu_a, S_a) and N(mu_b, S_b). It lives in
  ``tinydiff.metrics`` (pure NumPy, float64, matrix square roots by ``eigh``, robust to the
  singular covariances that dead ReLU units give) and works on any features.
* **The distance is biased upward at small N**: even two sets of real digits are apart
  because their sample means and covariances are noisy. So the distance is always printed
  beside that floor, computed at the same N; a model is as good as its FD is near the floor.
* **Confidence must mean "looks like a digit".** A ReLU classifier trained on digits alone
  is confident far from them (it called uniform noise an 8 and a blank image a 1 with
  probability > 0.99), so the confident fraction would count garbage as digits. Training
  also pushes images that are no digit (noise, flat grey, shuffled pixels, blobs) towards
  the uniform distribution (outlier exposure, Hendrycks et al. 2019); then such images get
  top probabilities near 0.1, also for kinds it never saw (Gaussian noise, inverted digits).
* **The classifier is trained once and cached**: ``<cache>/scorer/mnist_cnn_v1.npz``
  (cache base: ``$TINYDIFF_DATA``, else ``$XDG_CACHE_HOME/tinydiff``, else
  ``~/.cache/tinydiff``, the convention of ``tinydiff.data.mnist``). Training takes about a
  minute on 2 cores (1,000 steps; 68 s measured) and is announced; the file's JSON metadata
  also holds the test accuracy measured right after training, the training set size, the
  training settings, seed, date and code version. A file that is not a valid scorer cache
  (corrupt, foreign, other version) is never silently replaced: the error names the path and
  says to delete it to retrain, so the numbers never change between two runs unnoticed.

This is a Frechet distance in a small MNIST classifier's feature space (128 features),
**not** the FID of the papers, which uses Inception-v3's 2048 features of natural images:
numbers from here are comparable with each other (same cache file, same N), never with
published FIDs.

References: M. Heusel, H. Ramsauer, T. Unterthiner, B. Nessler and S. Hochreiter (2017),
"GANs trained by a two time-scale update rule converge to a local Nash equilibrium",
NeurIPS (the Frechet Inception Distance). D. C. Dowson and B. V. Landau (1982), "The Frechet
distance between multivariate normal distributions", J. Multivariate Anal. 12(3) (the closed
form). D. Hendrycks, M. Mazeika and T. Dietterich (2019), "Deep anomaly detection with outlier
exposure", ICLR (the uniform target for non-digits).

Command line: ``python -m tinydiff.scorer samples.npy --labels labels.npy`` (``--help``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import __version__, nn
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data.mnist import load_mnist
from .engine import Tensor, no_grad
from .functional import log_softmax
from .metrics import frechet_distance
from .runtime import tune_process
from .train import Trainer

FORMAT, VERSION = "tinydiff-digit-scorer", 1
CACHE_NAME = "mnist_cnn_v1.npz"
NUM_CLASSES, SIDE = 10, 28
DEFAULT_STEPS, DEFAULT_BATCH_SIZE = 1000, 128    # 12.8 epochs of the 10,000 digits here
EVAL_BATCH = 500                     # images per forward pass when scoring: memory stays ~50 MB


# ---------------------------------------------------------------------- images as users have them
def as_model_input(images, name: str = "images") -> np.ndarray:
    """Digits as users have them -> float32 [N, 1, 28, 28] in [-1, 1] (``to_model_space``'s scale).

    Accepted: [N, 28, 28] or [N, 1, 28, 28], either uint8 0..255 (x = k / 127.5 - 1) or
    floating point in [0, 1] (x = 2 v - 1), the format of ``samples.npy``. Anything else is a
    ValueError naming the shape, dtype or range received.

    >>> x = td.scorer.as_model_input(np.full((2, 28, 28), 255, np.uint8))
    >>> x.shape, float(x.max())                                     # [N, 1, 28, 28] in [-1, 1]
    ((2, 1, 28, 28), 1.0)
    """
    a = np.asarray(images)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[1:] != (SIDE, SIDE) or len(a) == 0:
        raise ValueError(f"{name}: expected digits of shape [N, 28, 28] or [N, 1, 28, 28] with N >= 1, "
                         f"got shape {np.shape(images)}")
    if a.dtype == np.uint8:
        return (a.astype(np.float32) / np.float32(127.5) - np.float32(1.0))[:, None]
    if a.dtype.kind != "f":
        raise ValueError(f"{name}: expected uint8 pixels 0..255 or floats in [0, 1], got dtype {a.dtype}")
    lo, hi = float(np.min(a)), float(np.max(a))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        hint = (" (model-space images in [-1, 1]? convert them with tinydiff.data.from_model_space)"
                if lo < 0.0 and np.isfinite(lo) else " (pixels 0..255 as floats? divide them by 255)"
                if 1.0 < hi <= 255.0 and lo >= 0.0 else "")
        raise ValueError(f"{name}: float pixels must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]{hint}")
    return (a.astype(np.float32) * np.float32(2.0) - np.float32(1.0))[:, None]


def _as_labels(labels, n: int, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or y.dtype.kind not in "iu" or (n and (y.min() < 0 or y.max() >= NUM_CLASSES)):
        raise ValueError(f"{name}: expected {n} integer labels in 0..9 (one per image), got dtype {y.dtype}, "
                         f"shape {y.shape}" + (f", values {y.min():.4g}..{y.max():.4g}"
                                               if y.size and y.dtype.kind in "iuf" else ""))
    return y.astype(np.int64)


# ---------------------------------------------------------------------- the classifier
class DigitClassifier(nn.Module):
    """A small CNN for 28 x 28 digits (x: [B, 1, 28, 28] in [-1, 1]):

        Conv(1 -> c1, 3, pad 1) - ReLU                     [B, c1, 28, 28]
        Conv(c1 -> c2, 3, stride 2, pad 1) - ReLU          [B, c2, 14, 14]
        Conv(c2 -> c3, 3, stride 2, pad 1) - ReLU          [B, c3, 7, 7]
        flatten - Linear(c3 * 49 -> hidden) - ReLU         [B, hidden]   <- ``features(x)``
        Linear(hidden -> 10)                               [B, 10] logits

    Strided convolutions downsample (no pooling layer needed). channels = (c1, c2, c3).

    >>> from tinydiff.scorer import DigitClassifier
    >>> model = DigitClassifier(rng=np.random.default_rng(0))
    >>> model(np.zeros((2, 1, 28, 28), np.float32)).shape           # logits for the 10 digits
    (2, 10)
    """

    def __init__(self, channels=(16, 32, 64), hidden: int = 128, *, rng=None, dtype=np.float32):
        super().__init__()
        c1, c2, c3 = (int(c) for c in channels)
        self.channels, self.hidden = (c1, c2, c3), int(hidden)
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1, rng=rng, dtype=dtype)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1, rng=rng, dtype=dtype)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1, rng=rng, dtype=dtype)
        self.fc = nn.Linear(c3 * 7 * 7, hidden, rng=rng, dtype=dtype)
        self.head = nn.Linear(hidden, NUM_CLASSES, rng=rng, dtype=dtype)

    def features(self, x) -> Tensor:
        """The penultimate activations [B, hidden] (what the Frechet distance compares)."""
        h = self.conv1(x).relu()
        h = self.conv2(h).relu()
        h = self.conv3(h).relu()                                # [B, c3, 7, 7]
        return self.fc(h.reshape(h.shape[0], -1)).relu()        # [B, hidden]

    def forward(self, x) -> Tensor:
        return self.head(self.features(x))                      # [B, 10] logits

    def config(self) -> dict:
        return {"channels": list(self.channels), "hidden": self.hidden}


def cross_entropy(logits: Tensor, labels: np.ndarray) -> Tensor:
    """-(1/B) sum_b log softmax(logits_b)[y_b]  for logits [B, K] and integer labels y [B].

    >>> logits = td.Tensor(np.zeros((2, 10)))                       # uniform: the loss is log 10
    >>> round(float(td.scorer.cross_entropy(logits, np.array([3, 7])).item()), 4)
    2.3026
    """
    logp = log_softmax(logits, axis=1)                          # [B, K]
    return -logp[np.arange(len(labels)), labels].mean()


def random_shift(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Each image of x [B, C, H, W] (model space) moved by its own (dy, dx) in {-s..s}^2, with
    background (-1) shifted in.

    The padded batch is viewed as all its H x W windows ([B, C, 2s+1, 2s+1, H, W], no copy);
    each image picks one window.

    >>> x = -np.ones((1, 1, 5, 5), np.float32); x[0, 0, 2, 2] = 1.0      # one bright pixel in the middle
    >>> shifted = td.scorer.random_shift(x, 1, np.random.default_rng(0))
    >>> float(shifted.max()), int((shifted == 1).sum())                    # moved by at most 1, not lost
    (1.0, 1)
    """
    if max_shift == 0:
        return x
    s, b = max_shift, len(x)
    padded = np.pad(x, ((0, 0), (0, 0), (s, s), (s, s)), constant_values=-1.0)      # -1: background
    windows = sliding_window_view(padded, x.shape[2:], axis=(2, 3))                 # [B, C, 2s+1, 2s+1, H, W]
    dy, dx = rng.integers(0, 2 * s + 1, size=(2, b))
    return np.ascontiguousarray(windows[np.arange(b), :, dy, dx])                  # [B, C, H, W]


def non_digits(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n images [n, 1, 28, 28] in model space that are no digit, each one of four kinds at random:
    uniform noise, a constant grey, a digit of x [B, 1, 28, 28] with its pixels shuffled (the ink
    of a digit without its shape), or coarse blobs (7 x 7 noise enlarged to 28 x 28).

    >>> td.scorer.non_digits(np.zeros((4, 1, 28, 28), np.float32), 3, np.random.default_rng(0)).shape
    (3, 1, 28, 28)
    """
    kinds = np.stack([
        rng.uniform(-1, 1, size=(n, 1, SIDE, SIDE)),
        np.broadcast_to(rng.uniform(-1, 1, size=(n, 1, 1, 1)), (n, 1, SIDE, SIDE)),
        rng.permuted(x[rng.integers(0, len(x), size=n)].reshape(n, -1), axis=1).reshape(n, 1, SIDE, SIDE),
        rng.uniform(-1, 1, size=(n, 1, 7, 7)).repeat(4, axis=2).repeat(4, axis=3),
    ])                                                                        # [4, n, 1, 28, 28]
    return kinds[rng.integers(0, 4, size=n), np.arange(n)].astype(x.dtype)


class ClassifierLoss:
    """The Trainer's loss for a classifier: loss_fn(model, (x, {"y": y}), rng) -> loss Tensor, logs.

        loss = CE(digits shifted by up to max_shift pixels, y)  +  weight * KL(uniform || p(non-digits))

    The shift (drawn from the Trainer's rng) is what keeps the CNN from memorising 10,000
    training digits (98.8% on the test split with it, 98.1% without). The second term is
    outlier exposure (Hendrycks et al. 2019): a ReLU classifier trained on digits alone is
    confident far from them (it called uniform noise an 8 and a blank image a 1 with
    probability > 0.99), which would make ``confident_fraction`` count garbage as digits. So
    ``outliers`` * B images that are no digit (``non_digits``) join each batch, pushed towards
    the uniform distribution u with KL(u || p) = -(1/10) sum_k log p_k - log 10 (zero at u, so
    the logged loss still falls towards the digits' cross-entropy). Logs the loss and the
    digits' accuracy.

    >>> from tinydiff.scorer import ClassifierLoss, DigitClassifier
    >>> model = DigitClassifier(channels=(4, 4, 4), hidden=8, rng=np.random.default_rng(0))
    >>> x, y = np.zeros((4, 1, 28, 28), np.float32), np.array([0, 1, 2, 3])
    >>> loss, logs = ClassifierLoss()(model, (x, {"y": y}), np.random.default_rng(1))
    >>> loss.shape, bool(loss.item() > 0)
    ((), True)
    """

    def __init__(self, max_shift: int = 2, outliers: float = 0.25, weight: float = 0.5):
        self.max_shift, self.outliers, self.weight = int(max_shift), float(outliers), float(weight)

    def __call__(self, model, batch, rng):
        x, kwargs = batch
        y = kwargs["y"]
        b, m = len(x), int(round(self.outliers * len(x)))
        x = random_shift(x, self.max_shift, rng)
        if m:
            x = np.concatenate([x, non_digits(x, m, rng)])
        logits = model(x)                                               # [B + m, 10]
        loss = cross_entropy(logits[:b], y)
        if m:
            loss = loss - self.weight * (log_softmax(logits[b:], axis=1).mean() + math.log(NUM_CLASSES))
        accuracy = float(np.mean(logits.data[:b].argmax(axis=1) == y))
        return loss, {"loss": loss.item(), "accuracy": accuracy}


def train_classifier(images, labels, *, steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE,
                     lr: float = 2e-3, max_shift: int = 2, outliers: float = 0.25, channels=(16, 32, 64),
                     hidden: int = 128, seed: int = 0, log=print) -> DigitClassifier:
    """A ``DigitClassifier`` trained on digits ``images`` (any format ``as_model_input`` takes) with
    integer ``labels`` [N]: ``steps`` AdamW steps of ``batch_size`` digits in shuffled epochs,
    cross-entropy on randomly shifted digits, learning rate warmed up over 100 steps and then
    cosine-decayed to 0. Progress lines (with ETA) go to ``log``. Returns the model in eval mode.

    >>> model = td.scorer.train_classifier(np.zeros((8, 28, 28), np.uint8), np.arange(8) % 10,   # doctest: +SKIP
    ...                                    steps=1000)
    """
    x = as_model_input(images)
    y = _as_labels(labels, len(x))
    model = DigitClassifier(channels, hidden, rng=np.random.default_rng(seed))
    trainer = Trainer(model, ClassifierLoss(max_shift, outliers), (x, y), batch_size=batch_size, lr=lr,
                      weight_decay=1e-4, warmup_steps=min(100, steps // 10), lr_decay_steps=steps,
                      seed=seed + 1, log_every=max(1, steps // 10) if log else 0, log=log or print)
    trainer.train(steps)
    # The raw weights, not trainer.ema's: with the learning rate decayed to 0 they are better at
    # this length (measured at 1,000 steps, seeds 0-2: 98.7-98.8% on the test split, EMA 98.1-98.3%).
    model.eval()
    return model


# ---------------------------------------------------------------------- the cached scorer
def default_cache_dir() -> Path:
    """The cache base: $TINYDIFF_DATA, else $XDG_CACHE_HOME/tinydiff (if absolute), else
    ~/.cache/tinydiff -- where ``tinydiff.data.mnist`` keeps MNIST in its mnist/ subfolder.

    >>> td.scorer.default_cache_dir()                               # doctest: +SKIP
    PosixPath('/home/you/.cache/tinydiff')
    """
    if os.environ.get("TINYDIFF_DATA"):
        return Path(os.environ["TINYDIFF_DATA"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "tinydiff"


def scorer_path(cache_dir=None) -> Path:
    """<cache>/scorer/mnist_cnn_v1.npz, where the trained classifier is kept.

    >>> td.scorer.scorer_path("/tmp/cache").as_posix()
    '/tmp/cache/scorer/mnist_cnn_v1.npz'
    """
    return Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser() / "scorer" / CACHE_NAME


class ScorerCacheError(ValueError):
    """The scorer's cache file exists but is not a valid digit-classifier file.

    >>> issubclass(td.scorer.ScorerCacheError, Exception)
    True
    """


class DigitScorer:
    """Scores generated digits with a cached ``DigitClassifier`` (see the module docstring).

    Build it with ``DigitScorer.load()`` (reads the cache; trains once if it is missing) or
    ``DigitScorer.train()`` (trains and writes the cache). ``meta`` holds what the cache file
    records: test_accuracy, train_size, steps, seed, date, version, ...

        scorer = DigitScorer.load()                       # ~1 minute the first time, then instant
        scorer.score(samples, labels)                     # {"accuracy": ..., "fid": ..., "fid_floor": ...}
        scorer.confident_fraction(samples, threshold=0.9) # share of samples that read as some digit

    >>> scorer = td.scorer.DigitScorer.load()                       # doctest: +SKIP
    >>> scorer.score(samples, labels)["accuracy"]                   # doctest: +SKIP
    0.97
    """

    def __init__(self, model: DigitClassifier, meta: dict, data_dir=None, path=None, download: bool = False):
        self.model, self.meta, self.data_dir, self.path = model, dict(meta), data_dir, path
        self.download = download                 # may test_features() fetch the MNIST test split?
        self.model.eval()
        self._test_features = None

    # -------------------------------------------------------------- building
    @classmethod
    def load(cls, cache_dir=None, data_dir=None, *, train_if_missing: bool = True, download: bool = False,
             log=print) -> "DigitScorer":
        """The scorer cached at ``scorer_path(cache_dir)``; if there is none, ``train`` one (saying so)
        when ``train_if_missing``, else FileNotFoundError. ``data_dir``: where MNIST is (see
        ``tinydiff.data.mnist``); the test digits are the reference of ``score``.
        Raises ScorerCacheError (naming the file and how to retrain) for an invalid cache file.
        """
        path, log = scorer_path(cache_dir), log or (lambda *args: None)
        if not path.exists():
            if not train_if_missing:
                raise FileNotFoundError(f"no trained digit classifier at {path}; call DigitScorer.load() with "
                                        "train_if_missing=True (or run python -m tinydiff.scorer once) to train "
                                        "it (about a minute)")
            log(f"scorer: no digit classifier at {path}; training one on the MNIST training digits "
                "(once; about a minute on 2 cores)")
            return cls.train(cache_dir, data_dir, download=download, log=log)
        retrain = f"delete it and run again to retrain (about a minute): rm {path}"
        try:
            arrays, meta = load_checkpoint(path)
        except CheckpointError as err:
            raise ScorerCacheError(f"scorer cache {path} is not a valid digit-classifier file "
                                   f"({_one_line(err)}); " + retrain) from err
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ScorerCacheError(f"scorer cache {path} holds format {meta.get('format')!r} version "
                                   f"{meta.get('version')!r}, expected {FORMAT!r} version {VERSION}; " + retrain)
        try:
            model = DigitClassifier(**meta["architecture"])
            model.load_state_dict(arrays)
        except (KeyError, TypeError, ValueError) as err:
            raise ScorerCacheError(f"scorer cache {path} does not fit a DigitClassifier ({_one_line(err)}); "
                                   + retrain) from err
        return cls(model, meta, data_dir, path, download)

    @classmethod
    def train(cls, cache_dir=None, data_dir=None, *, steps: int = DEFAULT_STEPS,
              batch_size: int = DEFAULT_BATCH_SIZE, max_shift: int = 2, outliers: float = 0.25,
              channels=(16, 32, 64), hidden: int = 128, seed: int = 0, train_limit: int | None = None,
              download: bool = False, log=print) -> "DigitScorer":
        """Train a classifier on the MNIST training digits (the first ``train_limit`` of them, or all;
        the other settings are ``train_classifier``'s), measure its accuracy on the official test
        split, write the cache file ``scorer_path(cache_dir)`` and return the scorer."""
        log = log or (lambda *args: None)
        images, labels = load_mnist("train", data_dir, download=download, limit=train_limit, log=log)
        settings = dict(steps=steps, batch_size=batch_size, max_shift=max_shift, outliers=outliers, seed=seed)
        log(f"scorer: training a DigitClassifier on {len(images):,} digits, {steps} steps of {batch_size}")
        start = time.perf_counter()
        model = train_classifier(images, labels, channels=channels, hidden=hidden, log=log, **settings)
        seconds = time.perf_counter() - start
        test_images, test_labels = load_mnist("test", data_dir, download=download, log=log)
        scorer = cls(model, {}, data_dir, scorer_path(cache_dir), download)
        scorer.meta = {
            "format": FORMAT, "version": VERSION, "architecture": model.config(),
            "test_accuracy": scorer.accuracy(test_images, test_labels), "test_size": len(test_labels),
            "train_size": len(labels), **settings, "train_seconds": round(seconds, 1),
            "code_version": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        scorer.save(scorer.path)
        log(f"scorer: trained in {seconds:.0f} s; test accuracy {scorer.meta['test_accuracy']:.2%}; "
            f"saved {scorer.path}")
        return scorer

    def save(self, path) -> None:
        """Write the weights and ``meta`` to ``path`` (atomically; read back with allow_pickle=False)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, self.model.state_dict(), self.meta)

    # -------------------------------------------------------------- per-image outputs
    def _outputs(self, x: np.ndarray):
        """x [N, 1, 28, 28] from ``as_model_input`` -> (features [N, hidden] float32, probabilities
        [N, 10] float64), EVAL_BATCH images at a time."""
        feats, probs = [], []
        with no_grad():
            for start in range(0, len(x), EVAL_BATCH):
                h = self.model.features(x[start:start + EVAL_BATCH])
                logits = self.model.head(h).data.astype(np.float64)         # [b, 10]
                e = np.exp(logits - logits.max(axis=1, keepdims=True))
                feats.append(h.data)
                probs.append(e / e.sum(axis=1, keepdims=True))
        return np.concatenate(feats), np.concatenate(probs)

    def probabilities(self, images) -> np.ndarray:
        """Class probabilities [N, 10] (softmax of the logits, float64)."""
        return self._outputs(as_model_input(images))[1]

    def predict(self, images) -> np.ndarray:
        """The most probable class of each digit, int64 [N]."""
        return self.probabilities(images).argmax(axis=1)

    def features(self, images) -> np.ndarray:
        """The classifier's penultimate activations [N, hidden] (what ``frechet_distance`` compares)."""
        return self._outputs(as_model_input(images))[0]

    def accuracy(self, images, labels) -> float:
        """Fraction of digits classified as ``labels`` (int [N], 0..9)."""
        predicted = self.predict(images)
        return float(np.mean(predicted == _as_labels(labels, len(predicted))))

    def confident_fraction(self, images, threshold: float = 0.9) -> float:
        """Fraction of digits whose most probable class has probability >= ``threshold``."""
        return _confident(self.probabilities(images), threshold)

    # -------------------------------------------------------------- the report
    def test_features(self) -> np.ndarray:
        """Features of the official 10,000 test digits [10000, hidden] (computed once per scorer)."""
        if self._test_features is None:
            images, _ = load_mnist("test", self.data_dir, download=self.download, log=None)
            self._test_features = self.features(images)
        return self._test_features

    def score(self, samples, labels=None, *, reference=None, threshold: float = 0.9, seed: int = 0) -> dict:
        """Everything the scorer says about ``samples`` (digits in any format ``as_model_input`` takes):

            n                   number of samples
            accuracy            fraction predicted as ``labels`` (only if labels are given)
            confident_fraction  fraction with top class probability >= threshold
            fid, fid_floor      Frechet distance samples vs n_fid real digits, and real vs real
                                (two disjoint sets of n_fid real digits): compare the two
            n_fid               min(n, half the real digits): the N of both distances
            test_accuracy       the classifier's accuracy on the official test split (cached)

        reference: real digits to compare with (default: the MNIST test split). With more
        samples than half the reference (5,000 for MNIST) a random n_fid of them are used for
        the distances, so that both are measured at the same N. Draws from
        ``np.random.default_rng(seed)``: the reference order, then (if needed) the sample subset.
        """
        x = as_model_input(samples, "samples")                 # check everything before any work
        n = len(x)
        labels = None if labels is None else _as_labels(labels, n)
        real_x = None if reference is None else as_model_input(reference, "reference")
        _check_threshold(threshold)
        feats, probs = self._outputs(x)
        result = {"n": n}
        if labels is not None:
            result["accuracy"] = float(np.mean(probs.argmax(axis=1) == labels))
        result["confident_fraction"] = _confident(probs, threshold)
        result["threshold"] = float(threshold)
        real = self.test_features() if reference is None else self._outputs(real_x)[0]
        n_fid = min(n, len(real) // 2)
        if n_fid < 2:
            raise ValueError(f"the Frechet distance needs at least 2 samples and 4 reference digits, got "
                             f"{n} samples and {len(real)} reference digits")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(real))
        real_a, real_b = real[order[:n_fid]], real[order[n_fid:2 * n_fid]]   # disjoint
        picked = feats if n_fid == n else feats[rng.permutation(n)[:n_fid]]
        result.update(fid=frechet_distance(picked, real_a), fid_floor=frechet_distance(real_a, real_b),
                      n_fid=n_fid, reference="MNIST test split" if reference is None else "given",
                      test_accuracy=self.meta.get("test_accuracy"))
        return result


def _one_line(err) -> str:
    """An error message on one line (load_state_dict lists its problems on several)."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _check_threshold(threshold) -> float:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
    return float(threshold)


def _confident(probs: np.ndarray, threshold: float) -> float:
    """Fraction of rows of probs [N, 10] whose largest entry is >= threshold."""
    return float(np.mean(probs.max(axis=1) >= _check_threshold(threshold)))


# ---------------------------------------------------------------------- command line
def format_report(result: dict) -> str:
    """The lines ``python -m tinydiff.scorer`` prints for a ``score`` result.

    >>> print(td.scorer.format_report(result))                      # doctest: +SKIP
    """
    lines = [f"samples              {result['n']:,}"]
    if "accuracy" in result:
        lines.append(f"accuracy             {result['accuracy']:.2%}   classified as the requested label")
    lines.append(f"confident fraction   {result['confident_fraction']:.2%}   top class probability >= "
                 f"{result['threshold']:g}")
    lines.append(f"Frechet distance     {result['fid']:.3f}   vs the real-vs-real floor {result['fid_floor']:.3f} "
                 f"(both at N = {result['n_fid']:,}; classifier features, not Inception FID)")
    if result.get("test_accuracy") is not None:
        lines.append(f"classifier           {result['test_accuracy']:.2%}   accuracy on the MNIST test split")
    return "\n".join(lines)


def _load_npy(parser, path, what):
    """The array in the .npy file ``path``, or one argparse error line saying what is wrong."""
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                parser.error(f"{what} file {path} is not a .npy file (no NumPy header); save the array "
                             "with numpy.save")
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        parser.error(f"{what} file {path} does not exist")
    except (OSError, ValueError) as err:          # truncated, or an object array (would need pickle)
        parser.error(f"{what} file {path} is not a readable .npy array ({str(err).splitlines()[0]})")


def main(argv=None) -> dict:
    """``python -m tinydiff.scorer SAMPLES.npy [--labels LABELS.npy]``: score the samples and print
    the report (``format_report``); returns the result dict.

    >>> td.scorer.main(["samples.npy", "--labels", "labels.npy"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(
        prog="python -m tinydiff.scorer",
        description="Score generated MNIST digits with a small classifier trained by tinydiff: accuracy "
                    "against the requested labels, the fraction of confidently classified digits, and a "
                    "Frechet distance in the classifier's feature space beside its real-vs-real floor at "
                    "the same N. The first run trains the classifier (about a minute) and caches it.")
    parser.add_argument("samples", metavar="SAMPLES.npy",
                        help="digits [N, 28, 28] or [N, 1, 28, 28], float in [0, 1] or uint8 0..255")
    parser.add_argument("--labels", metavar="LABELS.npy",
                        help="integer labels [N] the samples were generated for (enables accuracy)")
    parser.add_argument("--data-dir", metavar="DIR", help="the MNIST folder (default: $TINYDIFF_DATA/mnist, "
                        "then ~/.cache/tinydiff/mnist; see tinydiff.data.mnist)")
    parser.add_argument("--cache-dir", metavar="DIR", help="cache base; the classifier lives in "
                        "DIR/scorer/mnist_cnn_v1.npz (default: $TINYDIFF_DATA, else $XDG_CACHE_HOME/tinydiff, "
                        "else ~/.cache/tinydiff)")
    parser.add_argument("--download", action="store_true", help="download MNIST if it is not found")
    parser.add_argument("--threshold", type=float, default=0.9,
                        help="top class probability that counts as confident (default: 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="seed choosing the real digits (default: 0)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    if not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold must be a probability in [0, 1], got {args.threshold}")

    tune_process()                                # training may follow: see tinydiff/runtime.py
    samples = _load_npy(parser, args.samples, "samples")
    labels = None if args.labels is None else _load_npy(parser, args.labels, "labels")
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    try:
        n = len(as_model_input(samples, "samples"))          # bad files fail now, not after training
        if labels is not None:
            _as_labels(labels, n)
        scorer = DigitScorer.load(args.cache_dir, args.data_dir, download=args.download, log=log)
        result = scorer.score(samples, labels, threshold=args.threshold, seed=args.seed)
    except ScorerCacheError as err:
        parser.error(str(err))
    except FileNotFoundError as err:              # MNIST missing: the message says where it looked
        parser.error(f"{err}\nOr pass --data-dir DIR (the folder holding the MNIST files) or --download.")
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(result) if args.json else format_report(result))
    return result


__all__ = ["DigitClassifier", "DigitScorer", "ScorerCacheError", "ClassifierLoss", "as_model_input",
           "cross_entropy", "default_cache_dir", "frechet_distance", "non_digits", "random_shift", "scorer_path",
           "train_classifier"]

if __name__ == "__main__":
    main()


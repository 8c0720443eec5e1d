"""The text side of text-to-image: a word-level tokenizer, and captioned latents to train on.

Stable Diffusion (Rombach et al. 2022) turns a prompt into token ids with CLIP's byte-pair
tokenizer, pads them to 77 and feeds them to a frozen CLIP text encoder. tinydiff's prompts come
from a grammar of a few dozen words (``td.data.captions``), so its tokenizer is one table:

    "A red seven."  ->  lower-cased, punctuation dropped  ->  ["a", "red", "seven"]
                    ->  [<start>, a, red, seven, <pad>, <pad>, <pad>, <pad>]   ids [L], L = 8
    mask            ->  [True,    T,   T,   T,   False, False, False, False]

Every prompt begins with ``<start>``, so even the empty prompt "" (the null condition of
classifier-free guidance) has one token to attend to; ``<pad>`` fills the rest, and the mask
(``ids != PAD_ID``) tells every attention layer to ignore it: padding changes nothing
(tests/test_text.py). A word outside the vocabulary is an error naming it and listing the
vocabulary: a model cannot know what it never read.

``CaptionedLatents`` feeds a Trainer: fresh scaled posterior draws s * z of coloured digits
(``td.latent.LatentBatches``) with a caption drawn for each at every visit, as token ids.
"""
from __future__ import annotations

import re

import numpy as np

from .checks import check_rng
from .data.captions import VOCABULARY, caption, stroke_weight
from .data.colored_mnist import HELD_OUT, PALETTE, colorize, held_out_mask
from .latent import LatentBatches

PAD, START = "<pad>", "<start>"
PAD_ID, START_ID = 0, 1


class Tokenizer:
    """Prompts -> token ids int64 [B, length]: ``<start>``, one id per word, ``<pad>`` to the end.

    Args:
        vocabulary: the words it knows (default: every word of ``td.data.captions``' grammar).
        length: the fixed context length L (the start token and at most L - 1 words).

    ``tokenizer(prompts)`` -> ids [B, L]; ``tokenizer.mask(ids)`` -> bool [B, L] (True = a real
    token); ``tokenizer.decode(ids)`` -> the prompts back; ``tokenizer.null`` -> the ids of "".

    >>> tok = td.text.Tokenizer()
    >>> ids = tok(["A red seven.", ""])
    >>> ids.shape, tok.decode(ids), tok.mask(ids).sum(axis=1).tolist()
    ((2, 8), ['a red seven', ''], [4, 1])
    >>> tok(["a purple seven"])
    Traceback (most recent call last):
    ...
    ValueError: prompt 'a purple seven': unknown word 'purple'; the vocabulary is: 0 1 2 3 4 5 6 7 8 9 a an blue bold cyan digit eight five four green in magenta nine number one red seven six something the thin three two yellow zero
    """

    def __init__(self, vocabulary=VOCABULARY, length: int = 8):
        words = tuple(vocabulary)
        if len(set(words)) != len(words) or PAD in words or START in words or any(not w for w in words):
            raise ValueError(f"vocabulary: expected distinct non-empty words without {PAD!r} or {START!r}")
        if not (isinstance(length, (int, np.integer)) and length >= 2):
            raise ValueError(f"length: expected a context length >= 2 (the start token and one word), got {length!r}")
        self.words = (PAD, START) + words                       # id -> word
        self.ids = {w: i for i, w in enumerate(self.words)}     # word -> id
        self.length = int(length)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    @property
    def null(self) -> np.ndarray:
        """The ids of the empty prompt, int64 [L]: the null condition."""
        return self([""])[0]

    @staticmethod
    def split(prompt: str) -> list:
        """Lower-case, drop punctuation, split on white space: "A red 7!" -> ["a", "red", "7"]."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt: expected a string, got {type(prompt).__name__} {prompt!r}")
        return re.sub(r"[^\w\s]", " ", prompt.lower()).split()

    def encode(self, prompt: str) -> np.ndarray:
        """One prompt -> ids int64 [L]."""
        words = self.split(prompt)
        unknown = [w for w in words if w not in self.ids]
        if unknown:
            raise ValueError(f"prompt {prompt!r}: unknown word {unknown[0]!r}; the vocabulary is: "
                             + " ".join(self.words[2:]))
        if len(words) > self.length - 1:
            raise ValueError(f"prompt {prompt!r}: {len(words)} words, but at most {self.length - 1} fit in the "
                             f"context of {self.length} tokens (one is the start token)")
        ids = np.full(self.length, PAD_ID, dtype=np.int64)
        ids[0] = START_ID
        ids[1:1 + len(words)] = [self.ids[w] for w in words]
        return ids

    def __call__(self, prompts) -> np.ndarray:
        """Prompts (a list of strings, or one string) -> ids int64 [B, L]."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return np.stack([self.encode(p) for p in prompts]) if len(prompts) else np.zeros((0, self.length), np.int64)

    @staticmethod
    def mask(ids) -> np.ndarray:
        """bool [B, L]: True where a token is real (the start token or a word), False on padding."""
        return np.asarray(ids) != PAD_ID

    def tokens(self, prompt: str) -> list:
        """The tokens a prompt becomes, padding left out: "A red 7" -> ["<start>", "a", "red", "7"]."""
        return [self.words[i] for i in self.encode(prompt) if i != PAD_ID]

    def decode(self, ids) -> list:
        """ids [B, L] -> the prompts, as the tokenizer saw them (lower case, no punctuation)."""
        return [" ".join(self.words[i] for i in row if i not in (PAD_ID, START_ID)) for row in np.asarray(ids)]


class CaptionedLatents(LatentBatches):
    """A Trainer's data for text-to-image in latent space: (s * z [n, *latent], {"y": ids [n, L]}).

    Each example is one coloured digit: the posterior of its image (mean, log_variance
    [N, *latent], unscaled, from ``space.posterior``) and its attributes (digits, colours,
    weights [N] ints; weights from ``td.data.captions.stroke_weight``). At every visit the
    codes are drawn afresh (z = mu + sigma eps) and so is the caption (``captions.caption``),
    then tokenized: the same digit is "a red seven" once and "7" or "" another time.
    ``caption_options`` go to ``captions.caption`` (p_empty, p_digit, ...).

    >>> vae = td.models.VAE((4, 7, 7), channels=(8, 8), in_channels=3, rng=np.random.default_rng(0))
    >>> space = td.latent.LatentSpace(vae, 1.0)
    >>> mean, log_variance = space.posterior(np.zeros((6, 3, 28, 28), np.float32))
    >>> data = td.text.CaptionedLatents(space, mean, log_variance, np.arange(6), np.arange(6) % 6, np.ones(6, int),
    ...                                 td.text.Tokenizer())
    >>> z, kwargs = data(np.random.default_rng(0), 4)
    >>> z.shape, kwargs["y"].shape
    ((4, 4, 7, 7), (4, 8))
    """

    def __init__(self, space, mean, log_variance, digits, colours, weights, tokenizer: Tokenizer,
                 **caption_options):
        attributes = np.stack([np.asarray(a, dtype=np.int64) for a in (digits, colours, weights)], axis=1)
        if attributes.shape != (len(mean), 3):
            raise ValueError(f"digits, colours, weights: expected {len(mean)} of each, got shape {attributes.shape}")
        super().__init__(space, mean, log_variance, attributes)               # y = [N, 3] attributes
        self.tokenizer, self.caption_options = tokenizer, caption_options

    @classmethod
    def from_digits(cls, space, images, labels, tokenizer: Tokenizer, held_out=HELD_OUT, palette=PALETTE,
                    **caption_options) -> "CaptionedLatents":
        """Every training digit in every colour it may take (``held_out`` pairs never), encoded
        once by the frozen VAE (``space.posterior``): images uint8 [N, 28, 28], labels int [N].
        With 6 colours and the diagonal held out, 10,000 digits make 50,000 examples."""
        images, labels = np.asarray(images), np.asarray(labels, dtype=np.int64)
        allowed = ~held_out_mask(held_out, len(palette))                          # [10, K]
        weights = stroke_weight(images, labels)                                   # [N] thin / regular / bold
        parts = []
        for c in range(len(palette)):
            idx = np.flatnonzero(allowed[labels, c])                              # the digits colour c may take
            mean, log_variance = space.posterior(colorize(images[idx], np.full(len(idx), c), palette))
            parts.append((mean, log_variance, labels[idx], np.full(len(idx), c), weights[idx]))
        mean, log_variance, digits, colours, weights = (np.concatenate(p) for p in zip(*parts))
        return cls(space, mean, log_variance, digits, colours, weights, tokenizer, **caption_options)

    def captions(self, attributes, rng) -> list:
        """One random caption per row of attributes [n, 3] = (digit, colour, weight)."""
        rng = check_rng(rng)
        return [caption(d, c, w, rng, **self.caption_options) for d, c, w in attributes]

    def __call__(self, rng, n):
        codes, kwargs = super().__call__(rng, n)
        return codes, {"y": self.tokenizer(self.captions(kwargs["y"], rng))}

    def peek(self, n):
        codes, kwargs = super().peek(n)
        return codes, {"y": self.tokenizer([""] * len(codes))}

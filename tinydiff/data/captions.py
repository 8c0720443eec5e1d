"""Captions for coloured digits: a small grammar of prompts, and the stroke weight it can name.

A text-to-image model learns from pictures paired with free text. Here every coloured training
digit (``td.data.ColoredMNIST``) gets a caption drawn at random, at every visit, from a small
grammar over three attributes:

    the digit     "seven" or "7"
    the colour    one of the palette's six names ("red", "yellow", ...)
    the weight    "thin" or "bold", for digits whose stroke is lighter or heavier than most
                  of their class (``stroke_weight``); other digits are never called either

A caption names each attribute or leaves it out, and says what it names in one of several
phrasings and word orders:

    "a red seven"   "7 in red"   "red 7"   "a seven in red"   "the number 7 in red"
    "a seven"   "the number 7"   "something red"   "a red digit"   "a bold red seven"   ...

A word left out means "any value": a model trained on these captions can be asked for "a seven"
in any colour, which a fixed label cannot say. The empty caption "" names nothing; it is the
null condition classifier-free guidance needs (``caption`` returns it with probability
``p_empty``, 10% by default).

``describe(digit, colour, weight, phrasing)`` writes one given phrasing (the evaluation's prompts);
``caption(digit, colour, weight, rng)`` draws one (training). ``VOCABULARY`` lists every word
the grammar uses: the tokenizer's fixed vocabulary (``td.text.Tokenizer``).
"""
from __future__ import annotations

import numpy as np

from ..checks import check_rng
from .colored_mnist import COLOUR_NAMES, NUM_DIGITS

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WEIGHT_NAMES = ("thin", "regular", "bold")      # "regular" is never written: it is what no word means
THIN, REGULAR, BOLD = 0, 1, 2

# The phrasings, by which attributes they name. {d}: the digit as a word or a numeral, {c}: the
# colour, {w}: the weight word followed by a space, or nothing.
PHRASINGS = {
    "digit colour": ("a {w}{c} {d}", "{w}{c} {d}", "a {w}{d} in {c}", "{d} in {c}", "the {w}number {d} in {c}"),
    "digit": ("a {w}{d}", "the {w}number {d}", "{w}{d}"),
    "colour": ("something {w}{c}", "a {w}{c} digit", "a {w}digit in {c}"),
    "": ("a {w}digit", "something {w}"),
}
# The evaluation's phrasings of one full description, the first being the canonical one
# ("a red seven"), each with the digit as a word or as a numeral.
PARAPHRASES = (("a {w}{c} {d}", "word"), ("{d} in {c}", "numeral"), ("{w}{c} {d}", "numeral"),
               ("a {w}{d} in {c}", "word"), ("the {w}number {d} in {c}", "numeral"))
VOCABULARY = tuple(sorted({"a", "an", "the", "in", "number", "digit", "something", *DIGIT_WORDS,
                           *(str(d) for d in range(NUM_DIGITS)), *COLOUR_NAMES, "thin", "bold"}))


def with_article(text: str) -> str:
    """English's "a" -> "an" before a vowel sound ("an eight", "an 8", "an orange"...).

    >>> td.data.captions.with_article("a eight in red"), td.data.captions.with_article("a red eight")
    ('an eight in red', 'a red eight')
    """
    words = text.split()
    for i in range(len(words) - 1):
        if words[i] == "a" and (words[i + 1][0] in "aeiou" or words[i + 1] in ("8",)):
            words[i] = "an"
    return " ".join(words)


def describe(digit=None, colour=None, weight=None, phrasing: str | None = None, numeral: bool = False) -> str:
    """One caption in a given phrasing: describe(7, 0) -> "a red seven".

    digit: 0..9 or None (not named); colour: a palette index or None; weight: THIN, BOLD, or
    None / REGULAR (not named). phrasing: one of ``PHRASINGS[...]`` for the attributes named
    (default: the first, the canonical one); numeral: write the digit as "7", not "seven".
    Naming nothing gives "a digit"; the null caption is the empty string, never described.

    >>> td.data.captions.describe(7, 0), td.data.captions.describe(7, 0, td.data.captions.BOLD)
    ('a red seven', 'a bold red seven')
    >>> td.data.captions.describe(8, None), td.data.captions.describe(None, 4, phrasing="something {w}{c}")
    ('an eight', 'something blue')
    >>> td.data.captions.describe(3, 1, phrasing="{d} in {c}", numeral=True)
    '3 in yellow'
    """
    kind = " ".join(k for k, v in (("digit", digit), ("colour", colour)) if v is not None)
    templates = PHRASINGS[kind]
    phrasing = templates[0] if phrasing is None else phrasing
    if phrasing not in templates:
        raise ValueError(f"phrasing: {phrasing!r} does not name exactly {kind or 'nothing'}; expected one of "
                         f"{list(templates)}")
    if digit is not None and not 0 <= int(digit) < NUM_DIGITS:
        raise ValueError(f"digit: expected 0..9 or None, got {digit!r}")
    if colour is not None and not 0 <= int(colour) < len(COLOUR_NAMES):
        raise ValueError(f"colour: expected a palette index 0..{len(COLOUR_NAMES) - 1} or None, got {colour!r}")
    if weight not in (None, THIN, REGULAR, BOLD):
        raise ValueError(f"weight: expected THIN (0), REGULAR (1), BOLD (2) or None, got {weight!r}")
    d = "" if digit is None else (str(int(digit)) if numeral else DIGIT_WORDS[int(digit)])
    c = "" if colour is None else COLOUR_NAMES[int(colour)]
    w = WEIGHT_NAMES[weight] + " " if weight in (THIN, BOLD) else ""
    return with_article(phrasing.format(d=d, c=c, w=w).strip())


def caption(digit: int, colour: int, weight: int, rng, p_digit: float = 0.85, p_colour: float = 0.85,
            p_weight: float = 0.5, p_empty: float = 0.1) -> str:
    """A random caption of one training digit, as ``td.text.CaptionedLatents`` draws it at every visit.

    With probability p_empty the empty caption (the null condition of classifier-free
    guidance); otherwise the digit is named with probability p_digit, the colour with p_colour,
    a thin or bold stroke with p_weight (a regular one never), in a phrasing drawn uniformly
    among those naming exactly that, the digit as a word or a numeral with equal odds.
    Draws from rng: 6 uniform numbers, always, so every caption costs the stream the same.

    >>> rng = np.random.default_rng(3)
    >>> [td.data.captions.caption(7, 0, td.data.captions.BOLD, rng) for _ in range(5)]
    ['', 'bold red seven', 'red seven', 'red 7', 'a red seven']
    """
    u = check_rng(rng).random(6)
    if u[0] < p_empty:
        return ""
    d = digit if u[1] < p_digit else None
    c = colour if u[2] < p_colour else None
    w = weight if u[3] < p_weight else None
    kind = " ".join(k for k, v in (("digit", d), ("colour", c)) if v is not None)
    templates = PHRASINGS[kind]
    return describe(d, c, w, templates[int(u[4] * len(templates))], numeral=u[5] < 0.5)


def stroke_weight(images, labels) -> np.ndarray:
    """THIN, REGULAR or BOLD per digit, int64 [N]: the digit's ink (its summed intensity)
    against the others of its class: the lightest third of each class is thin, the heaviest
    third bold (a "one" has less ink than an "eight" at the same stroke, so ink is compared
    within a class). images: uint8 [N, 28, 28]; labels: int [N] digits.

    >>> images = np.zeros((6, 28, 28), np.uint8)
    >>> for i in range(6): images[i, 10:18, 10:12 + i] = 255             # ink grows with i
    >>> td.data.captions.stroke_weight(images, np.zeros(6, np.int64)).tolist()
    [0, 0, 1, 1, 2, 2]
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or labels.shape != (len(images),):
        raise ValueError(f"images, labels: expected [N, H, W] and [N], got shapes {images.shape} and {labels.shape}")
    ink = images.reshape(len(images), -1).astype(np.float64).sum(axis=1)
    weight = np.full(len(images), REGULAR, dtype=np.int64)
    for d in np.unique(labels):
        members = np.flatnonzero(labels == d)
        rank = np.argsort(np.argsort(ink[members], kind="stable"), kind="stable")     # 0 = the lightest
        weight[members[rank < len(members) / 3]] = THIN
        weight[members[rank >= 2 * len(members) / 3]] = BOLD
    return weight

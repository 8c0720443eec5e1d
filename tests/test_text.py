"""Text-to-image parts, each against an independent truth: the tokenizer's errors; padding that
changes nothing (the mask); cross-attention against a per-pixel, per-token loop and finite
differences in float64; negative-prompt guidance against its formula at w = 0 and w = 1; the
caption grammar (three attributes, held-out pairs never captioned); the 3-channel VAE."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinydiff as td
from tinydiff.data import captions
from tinydiff.gradcheck import assert_grad_close
from tinydiff.nn import CrossAttention2d

# every test runs twice: on the fast kernels and inside td.plain() (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("layer_path")
TOK = td.text.Tokenizer()
CROSS_NAMES = ["norm.weight", "norm.bias", "q.weight", "q.bias", "k.weight", "k.bias", "v.weight", "v.bias",
               "proj.weight", "proj.bias"]


# ------------------------------------------------------------------ the tokenizer
def test_tokenizer_lowercases_drops_punctuation_pads_and_decodes():
    ids = TOK(["A RED seven!", "7, in red.", ""])
    assert ids.shape == (3, 8) and ids.dtype == np.int64
    assert (ids[:, 0] == td.text.START_ID).all()                          # every prompt starts with <start>
    assert TOK.decode(ids) == ["a red seven", "7 in red", ""]
    assert TOK.mask(ids).sum(axis=1).tolist() == [4, 4, 1]                # the empty prompt: the start token only
    assert (ids[~TOK.mask(ids)] == td.text.PAD_ID).all()
    assert TOK.tokens("A red 7") == ["<start>", "a", "red", "7"]
    np.testing.assert_array_equal(TOK.null, TOK([""])[0])


def test_tokenizer_errors_name_the_word_and_list_the_vocabulary():
    with pytest.raises(ValueError) as info:
        TOK(["a red seven", "a purple seven"])
    message = str(info.value)
    assert "'purple'" in message and "'a purple seven'" in message
    for word in captions.VOCABULARY:                                        # the whole vocabulary is listed
        assert f" {word}" in message
    with pytest.raises(ValueError, match=r"8 words, but at most 7 fit in the context of 8 tokens"):
        TOK("a a a a a a a a")
    with pytest.raises(TypeError, match="prompt: expected a string, got int 7"):
        TOK([7])
    with pytest.raises(ValueError, match="vocabulary"):
        td.text.Tokenizer(["red", "red"])
    with pytest.raises(ValueError, match="length"):
        td.text.Tokenizer(length=1)


def test_every_caption_of_the_grammar_tokenizes():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        d, c, w = int(rng.integers(10)), int(rng.integers(6)), int(rng.integers(3))
        text = captions.caption(d, c, w, rng)
        assert TOK.decode(TOK(text)) == [text]


# ------------------------------------------------------------------ captions
def test_captions_name_three_attributes_or_leave_them_out():
    rng = np.random.default_rng(1)
    texts = [captions.caption(7, 0, captions.BOLD, rng) for _ in range(3000)]
    share = lambda pred: np.mean([pred(t.split()) for t in texts])          # noqa: E731
    assert 0.07 < share(lambda w: not w) < 0.13                             # the empty caption, p = 0.1
    assert 0.6 < share(lambda w: "seven" in w or "7" in w) < 0.85           # the digit, as a word or a numeral
    assert share(lambda w: "seven" in w) > 0.3 and share(lambda w: "7" in w) > 0.3
    assert 0.6 < share(lambda w: "red" in w) < 0.85
    assert 0.3 < share(lambda w: "bold" in w) < 0.5
    assert share(lambda w: "thin" in w) == 0 and share(lambda w: w[:1] == ["something"]) > 0
    regular = [captions.caption(7, 0, captions.REGULAR, rng) for _ in range(500)]
    assert not any({"thin", "bold"} & set(t.split()) for t in regular)           # a regular stroke is never named
    assert len(set(texts)) >= 20                                            # several phrasings and word orders
    assert {"a red seven", "7 in red", "red 7", "a seven", "something red"} <= set(texts)
    with pytest.raises(ValueError, match="does not name exactly digit"):
        captions.describe(7, None, phrasing="{d} in {c}")


def test_held_out_pairs_are_never_captioned_in_training():
    vae = td.models.VAE((4, 7, 7), channels=(8, 8), in_channels=3, rng=np.random.default_rng(0))
    space = td.latent.LatentSpace(vae, 1.0)
    images = (np.random.default_rng(0).random((40, 28, 28)) * 255).astype(np.uint8)
    labels = np.arange(40) % 10
    data = td.text.CaptionedLatents.from_digits(space, images, labels, TOK)
    assert len(data) == 40 * 5                                             # every digit in its 5 allowed colours
    pairs = {(d, c) for d, c, _ in data.y.tolist()}
    assert pairs == {(d, c) for d in range(10) for c in range(6) if c != d % 6}
    z, kwargs = data(np.random.default_rng(1), 500)
    words = " ".join(TOK.decode(kwargs["y"])).split()
    for d in range(10):                                                    # no caption names a held-out pair
        colour = td.data.COLOUR_NAMES[d % 6]
        for text in TOK.decode(kwargs["y"]):
            named = text.split()
            assert not ({captions.DIGIT_WORDS[d], str(d)} & set(named) and colour in named), text
    assert z.shape == (500, 4, 7, 7) and "something" in words


def test_stroke_weight_splits_each_digit_into_thirds_by_ink():
    rng = np.random.default_rng(0)
    images = (rng.random((90, 28, 28)) * rng.uniform(0.2, 1, (90, 1, 1)) * 255).astype(np.uint8)
    labels = np.repeat(np.arange(3), 30)
    labels[0], images[0] = 0, 0
    weight = captions.stroke_weight(images, labels)
    ink = images.reshape(90, -1).sum(axis=1)
    for d in range(3):
        w, i = weight[labels == d], ink[labels == d]
        assert np.bincount(w, minlength=3).tolist() == [10, 10, 10]
        assert i[w == 0].max() <= i[w == 1].min() and i[w == 1].max() <= i[w == 2].min()


# ------------------------------------------------------------------ cross-attention
def naive_cross(x, context, mask, sd, groups, eps=1e-5):
    """Cross-attention one pixel and one token at a time: q_n = W_q h_n, k_l = W_k c_l, v_l = W_v c_l,
    a_l = softmax over the real tokens of q_n . k_l / sqrt(C), out_n = x_n + W_p sum_l a_l v_l."""
    B, C, H, W = x.shape
    per = C // groups
    out = x.copy()
    for b in range(B):
        h = np.empty_like(x[b])
        for g in range(groups):
            chunk = x[b, g * per:(g + 1) * per]
            h[g * per:(g + 1) * per] = (chunk - chunk.mean()) / np.sqrt(chunk.var() + eps)
        h = h * sd["norm.weight"][:, None, None] + sd["norm.bias"][:, None, None]
        for n in range(H * W):
            q = sd["q.weight"][:, :, 0, 0] @ h[:, n // W, n % W] + sd["q.bias"]
            scores, values = [], []
            for l in range(context.shape[1]):
                if mask[b, l]:
                    scores.append(q @ (sd["k.weight"] @ context[b, l] + sd["k.bias"]) / np.sqrt(C))
                    values.append(sd["v.weight"] @ context[b, l] + sd["v.bias"])
            a = np.exp(np.array(scores) - max(scores))
            a /= a.sum()
            mixed = sum(w * v for w, v in zip(a, values))
            out[b, :, n // W, n % W] += sd["proj.weight"][:, :, 0, 0] @ mixed + sd["proj.bias"]
    return out


def random_cross(channels, context_dim, groups, seed=0):
    block = CrossAttention2d(channels, context_dim, groups, rng=np.random.default_rng(seed), dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    for name, p in block.named_parameters():                 # every parameter random (proj starts at zero)
        p.data[...] = rng.standard_normal(p.shape) * (0.3 if "norm" not in name else 1) + (name == "norm.weight")
    return block


def random_mask(rng, B, L):
    mask = rng.random((B, L)) < 0.6
    mask[:, 0] = True                                         # the start token is always there
    return mask


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 2), st.sampled_from([(1, 2), (2, 4)]), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 4), st.integers(1, 3), st.integers(0, 100))
def test_cross_attention_matches_a_per_pixel_per_token_loop(B, groups_channels, H, W, L, D, seed):
    groups, channels = groups_channels
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, channels, H, W)) * 2
    context, mask = rng.standard_normal((B, L, D)), random_mask(rng, B, L)
    block = random_cross(channels, D, groups, seed)
    block.keep_weights = True
    out = block(x, context, mask).data
    np.testing.assert_allclose(out, naive_cross(x, context, mask, block.state_dict(), groups), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(block.weights.sum(axis=-1), 1.0)              # [B, N, L] rows sum to 1
    assert (block.weights[np.broadcast_to(~mask[:, None, :], block.weights.shape)] == 0).all()


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 2), st.integers(1, 2), st.integers(2, 3), st.integers(0, 50))
def test_cross_attention_gradients_match_finite_differences(B, H, L, seed):
    """float64: d/dx, d/dcontext and d/dparameter of the block against central differences."""
    rng = np.random.default_rng(seed)
    x, context, mask = rng.standard_normal((B, 4, H, 2)), rng.standard_normal((B, L, 3)), random_mask(rng, B, L)
    block = random_cross(4, 3, 2, seed)
    sd = block.state_dict()

    def f(x, context, *tensors):
        for name, t in zip(CROSS_NAMES, tensors):
            module, attr = name.split(".")
            setattr(getattr(block, module), attr, t)
        return block(x, context, mask)
    assert_grad_close(f, [x, context] + [sd[n] for n in CROSS_NAMES], atol=1e-5, rtol=1e-4)


def test_cross_attention_padding_changes_nothing():
    """Padded tokens, whatever their states, leave the output unchanged: also with more of them."""
    rng = np.random.default_rng(0)
    block = random_cross(4, 3, 2)
    x, context = rng.standard_normal((2, 4, 3, 3)), rng.standard_normal((2, 5, 3))
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], bool)
    out = block(x, context, mask).data
    garbage = np.where(mask[..., None], context, rng.standard_normal(context.shape) * 100)
    np.testing.assert_array_equal(block(x, garbage, mask).data, out)
    longer = np.concatenate([context, rng.standard_normal((2, 4, 3))], axis=1)        # four more padded tokens
    np.testing.assert_allclose(block(x, longer, np.pad(mask, ((0, 0), (0, 4)))).data, out, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="at least one key"):
        block(x, context, np.zeros((2, 5), bool))


# ------------------------------------------------------------------ the text encoder and the TextUNet
def tiny_text_unet(seed=0, dtype=np.float32, **options):
    net = td.models.TextUNet(TOK.vocab_size, TOK.length, in_channels=4, base_channels=8, text_dim=8,
                             rng=np.random.default_rng(seed), dtype=dtype, **options)
    rng = np.random.default_rng(seed + 1)
    for block in net.cross_attention_blocks():               # zero-initialised projections would hide the words
        block.proj.weight.data[...] = rng.standard_normal(block.proj.weight.shape).astype(dtype)
    net.out_conv.weight.data[...] = rng.standard_normal(net.out_conv.weight.shape).astype(dtype) * 0.1
    return net


@pytest.mark.parametrize("pooled", [True, False])
def test_padding_tokens_change_nothing_in_the_text_unet(pooled):
    """The padding id's embedding and the padded positions' embeddings are never read: changing
    them leaves the prediction exactly as it was (the mask keeps them out of every attention)."""
    net = tiny_text_unet(pooled=pooled, dtype=np.float64)
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((3, 4, 7, 7)), np.array([5, 500, 900])
    ids = TOK(["a red seven", "7", ""])
    before = net(x, t, y=ids).data
    net.text_encoder.token_emb.weight.data[td.text.PAD_ID] = rng.standard_normal(8) * 50
    net.text_encoder.pos_emb.weight.data[4:] = rng.standard_normal((4, 8)) * 50      # positions only padding uses
    np.testing.assert_allclose(net(x, t, y=ids).data, before, rtol=1e-12, atol=1e-12)
    other = net(x, t, y=TOK(["a blue four", "7", ""])).data                # a word does change it
    assert not np.allclose(other[0], before[0]) and np.allclose(other[1:], before[1:])


def test_the_words_and_their_order_reach_the_prediction():
    net = tiny_text_unet(dtype=np.float64)
    x, t = np.random.default_rng(0).standard_normal((1, 4, 7, 7)), np.array([300])
    outs = [net(x, t, y=TOK([p])).data for p in ("red 7", "7 red", "red", "")]
    for i in range(4):
        for j in range(i):
            assert not np.allclose(outs[i], outs[j])
    np.testing.assert_array_equal(net(x, t).data, outs[3])                 # y=None is the empty prompt
    maps = net.attention_maps(x, t, TOK(["red 7"]))
    assert len(maps) == 1 and maps[0].shape == (1, 49, 8)
    np.testing.assert_allclose(maps[0][..., :3].sum(axis=-1), 1.0)
    assert (maps[0][..., 3:] == 0).all() and net.cross_attention_blocks()[0].weights is None
    with pytest.raises(ValueError, match=r"y: expected token ids \[1, 8\]"):
        net(x, t, y=np.zeros((1, 5), np.int64))
    with pytest.raises(ValueError, match="not padding"):
        net(x, t, y=np.zeros((1, 8), np.int64))


def test_text_unet_gradients_reach_the_encoder_in_float64():
    net = tiny_text_unet(dtype=np.float64)
    x, t = np.random.default_rng(0).standard_normal((2, 4, 7, 7)), np.array([10, 700])
    ids = TOK(["a red seven", "something blue"])
    emb = net.text_encoder.token_emb.weight
    w0 = emb.data.copy()

    def f(weight):
        net.text_encoder.token_emb.weight = weight
        return net(x, t, y=ids)
    assert_grad_close(f, [w0], atol=1e-5, rtol=1e-4)
    net.text_encoder.token_emb.weight = emb


# ------------------------------------------------------------------ negative prompts
class WordModel:
    """eps(x, t, ids) = x * (1 + sum of the ids): every prompt gives another prediction."""
    null_labels = tuple(TOK.null.tolist())

    def __call__(self, x_t, t, y=None):
        return x_t * (1.0 + np.asarray(y).sum(axis=1)).reshape(-1, 1)


@pytest.mark.parametrize("weight", [0.0, 1.0, 4.0])
def test_negative_prompt_guidance_is_eps_neg_plus_w_times_the_difference(weight):
    """eps = eps(neg) + w (eps(prompt) - eps(neg)), w = 1 + the library's scale: w = 0 gives the
    negative prompt's prediction, w = 1 the prompt's own, as the formula says."""
    model, x, t = WordModel(), np.random.default_rng(0).standard_normal((2, 3)), np.array([1, 2])
    prompt, neg = TOK(["a seven", "a seven"]), TOK("red")[0]
    guided = td.ClassifierFreeGuidance(model, weight - 1.0, negative=neg)(x, t, y=prompt)
    eps_prompt, eps_neg = model(x, t, prompt), model(x, t, np.tile(neg, (2, 1)))
    np.testing.assert_allclose(guided, eps_neg + weight * (eps_prompt - eps_neg), rtol=1e-12)
    if weight == 0.0:
        np.testing.assert_allclose(guided, eps_neg, rtol=1e-12)
    if weight == 1.0:
        np.testing.assert_array_equal(guided, eps_prompt)
    plain = td.ClassifierFreeGuidance(model, weight - 1.0)(x, t, y=prompt)          # default neg: the empty prompt
    eps_null = model(x, t, np.tile(TOK.null, (2, 1)))
    np.testing.assert_allclose(plain, eps_null + weight * (eps_prompt - eps_null), rtol=1e-12)


def test_negative_prompts_are_checked():
    with pytest.raises(ValueError, match="negative: expected integer labels"):
        td.ClassifierFreeGuidance(WordModel(), 2.0, negative=TOK("red")[0, :5])
    with pytest.raises(ValueError, match="negative"):
        td.ClassifierFreeGuidance(WordModel(), (2.0,) * 8, negative=TOK("red")[0])
    with pytest.raises(ValueError, match="w >= -1"):
        td.ClassifierFreeGuidance(WordModel(), -1.5, negative=TOK("red")[0])


# ------------------------------------------------------------------ the VAE for 3-channel digits
def test_vae_for_colour_digits_trains_and_round_trips_its_config(tmp_path):
    x = td.data.ColoredMNIST(np.zeros((8, 28, 28), np.uint8) + 100, np.arange(8)).sample(8, np.random.default_rng(0))[0]
    path = tmp_path / "vae.npz"
    td.recipes.train_vae(path, x, {"latent": (4, 7, 7), "channels": (8, 8), "steps": 2, "batch": 4, "in_channels": 3},
                         log=lambda line: None)
    vae = td.recipes.load_vae(path)
    assert vae.in_channels == 3 and vae.generate(vae.encode(x)[0]).shape == (8, 3, 28, 28)
    with pytest.raises(ValueError, match=r"\[B, 3, 28, 28\]"):
        vae.encode(np.zeros((2, 1, 28, 28), np.float32))

"""tinydiff.export's PyTorch twins against tinydiff itself: every model at several configurations,
float32 and float64, outputs and the gradients of one loss (w.r.t. the input and every weight),
and the round trip tinydiff -> torch -> tinydiff to the bit. The independent truth is PyTorch's
own layers (torch.nn.Conv2d, GroupNorm, ...), written in torch_models.py as the papers' math.
Skipped unless torch imports."""
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tinydiff as td  # noqa: E402
from tinydiff.export import torch_diffusion  # noqa: E402

pytestmark = pytest.mark.usefixtures("layer_path")       # on the fast kernels and inside td.plain()
TOL = {np.float32: 1e-5, np.float64: 1e-10}              # max |a - b| / max |b|, per array
PER_WEIGHT = {np.float32: 1e-3, np.float64: 1e-8}        # each weight's gradient alone (see below)


def rel_err(ours, theirs) -> float:
    """max |ours - theirs| / max |theirs|: the error relative to the array's scale."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def unet(**kw):
    return lambda dtype, rng: td.models.UNet(**{"base_channels": 8, "channel_mults": (1, 2), "zero_init_out": False,
                                                **kw}, rng=rng, dtype=dtype)


def images(channels=1, size=8, labels=None):
    """Inputs of a UNet: x [B, C, size, size], t [B], and y (labels as given)."""
    def make(rng, dtype):
        x = rng.standard_normal((3, channels, size, size)).astype(dtype)
        y = None if labels is None else labels(rng)
        return (x, rng.integers(0, 1000, 3)), ({} if y is None else {"y": y})
    return make


def points(dim=2):
    return lambda rng, dtype: ((rng.standard_normal((5, dim)).astype(dtype), rng.integers(0, 20, 5)), {})


# name -> (build(dtype, rng), inputs(rng, dtype) -> (args, kwargs))
CONFIGS = {
    "toy_mlp": (lambda dtype, rng: td.models.ToyMLP(hidden=32, rng=rng, dtype=dtype), points()),
    "toy_mlp_two_heads_3d": (lambda dtype, rng: td.models.ToyMLP(3, heads=2, hidden=16, emb_dim=8, rng=rng,
                                                                 dtype=dtype), points(3)),
    "forward_residual": (lambda dtype, rng: td.models.ForwardResidual(
        td.models.ToyMLP(heads=2, hidden=16, rng=rng, dtype=dtype), td.linear_beta_schedule(20)), points()),
    "unet_unconditional": (unet(), images()),
    "unet_class_labels": (unet(num_classes=10), images(labels=lambda rng: rng.integers(0, 11, 3))),
    "unet_null_labels_by_default": (unet(num_classes=10), images()),
    "unet_tuple_labels": (unet(num_classes=(10, 4)), images(labels=lambda rng: np.stack(
        [rng.integers(0, 11, 3), rng.integers(0, 5, 3)], axis=1))),
    "unet_scale_shift_learned_variance": (unet(scale_shift=True, learned_variance=True, in_channels=3),
                                          images(channels=3)),
    "unet_attention_three_levels": (unet(channel_mults=(1, 2, 2), attention_levels=(0, 1), num_groups=4,
                                         time_dim=12, emb_dim=24), images()),
    "unet_one_level": (unet(channel_mults=(2,)), images(size=4)),
}
TEXT = dict(vocab_size=td.text.Tokenizer().vocab_size, context_length=td.text.Tokenizer().length)


def prompts(rng):
    """Token ids [3, L] of real prompts: padded to different lengths, one of them empty."""
    ids = td.text.Tokenizer()(["a red seven", "7 in bold blue", ""])
    return ids[rng.permutation(3)]


def text_unet(**kw):
    """A TextUNet whose cross-attention projections are not zero (as they start in training), so
    the words reach the output and every cross-attention weight gets a gradient to compare."""
    def make(dtype, rng):
        model = td.models.TextUNet(**TEXT, **{"base_channels": 8, "num_groups": 4, "zero_init_out": False, **kw},
                                   rng=rng, dtype=dtype)
        for block in model.cross_attention_blocks():
            block.proj.weight.data[...] = 0.2 * rng.standard_normal(block.proj.weight.shape)
        return model
    return make


CONFIGS.update({
    "text_unet_pooled_one_level": (text_unet(in_channels=3, channel_mults=(1,), text_dim=8),
                                   images(channels=3, size=7, labels=prompts)),
    "text_unet_cross_only_two_levels": (text_unet(in_channels=2, channel_mults=(1, 2), text_dim=12, text_layers=1,
                                                  pooled=False, attention_levels=(0,), scale_shift=True),
                                        images(channels=2, size=8, labels=prompts)),
    "text_unet_empty_prompt_by_default": (text_unet(in_channels=3, channel_mults=(1,), text_dim=8),
                                          images(channels=3, size=7)),
})
VAES = {"vae_flat_discretized": dict(latent_shape=(6,), channels=(8, 16)),
        "vae_spatial_bernoulli": dict(latent_shape=(3, 7, 7), channels=(8, 8), decoder="bernoulli", num_groups=4),
        "vae_colour_spatial_discretized": dict(latent_shape=(3, 7, 7), channels=(8, 8), num_groups=4, in_channels=3)}


def to_torch_inputs(args, kwargs):
    wrap = lambda v: v if v is None else torch.from_numpy(np.array(v))   # noqa: E731
    return [wrap(a) for a in args], {k: wrap(v) for k, v in kwargs.items()}


def check_forward_and_gradients(model, twin, args, kwargs, dtype, call="__call__"):
    """Outputs equal, and the gradients of sum(out * g) w.r.t. the input and every weight."""
    x = td.Tensor(args[0], requires_grad=True)
    out = getattr(model, call)(x, *args[1:], **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    targs, tkwargs = to_torch_inputs(args, kwargs)
    targs[0].requires_grad_(True)
    theirs = getattr(twin, call)(*targs, **tkwargs)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    rng, loss = np.random.default_rng(7), 0
    for o, t in zip(outs, theirs):
        assert o.dtype == dtype and t.dtype == getattr(torch, np.dtype(dtype).name)
        assert rel_err(o.data, t.detach().numpy()) < TOL[dtype], rel_err(o.data, t.detach().numpy())
        g = rng.standard_normal(o.shape).astype(dtype)
        loss = loss + (o * g).sum()
        t.backward(torch.from_numpy(g), retain_graph=True)
    loss.backward()
    assert rel_err(x.grad, targs[0].grad.numpy()) < TOL[dtype]
    # The gradient of every weight, as one vector, to the same tolerance as the outputs. Per
    # weight, summed gradients (biases) cancel to a small fraction of their terms, down to
    # exactly zero for a bias just before a GroupNorm that normalises it away; each is measured
    # against max(its own scale, 1e-3 of the largest gradient), to a looser bound that still
    # catches any wiring error (which is O(1)).
    theirs = {name: p.grad for name, p in twin.named_parameters()}
    used = [(name, p.grad, theirs[name].numpy()) for name, p in model.named_parameters() if p.grad is not None]
    assert {name for name, *_ in used} == {name for name, g in theirs.items() if g is not None}
    scale = max(np.abs(b).max() for _, _, b in used)
    whole = max(np.abs(a - b).max() for _, a, b in used) / scale
    assert whole < TOL[dtype], whole
    each = {name: np.abs(a - b).max() / max(np.abs(b).max(), 1e-3 * scale) for name, a, b in used}
    assert max(each.values()) < PER_WEIGHT[dtype], sorted(each.items(), key=lambda kv: -kv[1])[:3]
    return whole


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_twin_equals_tinydiff_outputs_and_gradients(name, dtype):
    build, inputs = CONFIGS[name]
    model = build(dtype, np.random.default_rng(0))
    twin = td.export.to_torch(model)
    args, kwargs = inputs(np.random.default_rng(1), dtype)
    check_forward_and_gradients(model, twin, args, kwargs, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(VAES))
def test_vae_twin_encodes_and_decodes_as_tinydiff(name, dtype):
    model = td.models.VAE(**VAES[name], rng=np.random.default_rng(0), dtype=dtype)
    twin = td.export.to_torch(model)
    rng = np.random.default_rng(1)
    check_forward_and_gradients(model, twin, (rng.standard_normal((2, model.in_channels, 28, 28)).astype(dtype),), {}, dtype,
                               "encode")
    z = rng.standard_normal((2, *model.latent_shape)).astype(dtype)
    check_forward_and_gradients(model, twin, (z,), {}, dtype, "decode")
    assert rel_err(model.generate(z), twin.generate(torch.from_numpy(z)).numpy()) < TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["toy_mlp", "forward_residual", "unet_tuple_labels", "unet_attention_three_levels",
                                  "text_unet_cross_only_two_levels"])
def test_round_trip_is_bit_identical(name, dtype):
    build, _ = CONFIGS[name]
    model, other = build(dtype, np.random.default_rng(0)), build(dtype, np.random.default_rng(5))
    twin = td.export.to_torch(model)
    td.export.from_torch(twin, other)
    for (k, a), (k2, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and a.tobytes() == b.tobytes(), k
    td.export.from_torch({k: v.clone() for k, v in twin.state_dict().items()}, other)    # a state dict works too


def test_weights_trained_in_torch_come_back():
    """One SGD step in PyTorch, loaded back: tinydiff's weights are the stepped ones, and the
    outputs of the two agree again."""
    model = unet(num_classes=3)(np.float32, np.random.default_rng(0))
    twin = td.export.to_torch(model)
    (x, t), kw = images(labels=lambda rng: rng.integers(0, 4, 3))(np.random.default_rng(1), np.float32)
    targs, tkw = to_torch_inputs((x, t), kw)
    twin(*targs, **tkw).square().mean().backward()
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.1 * p.grad
    td.export.from_torch(twin, model)
    assert np.array_equal(model.conv_in.weight.data, twin.conv_in.weight.detach().numpy())
    assert rel_err(model(x, t, **kw).data, twin(*targs, **tkw).detach().numpy()) < 1e-5


def test_from_torch_refuses_another_configuration_and_loads_nothing():
    model = unet()(np.float32, np.random.default_rng(0))
    before = model.state_dict()
    other = td.export.to_torch(unet(num_classes=10)(np.float32, np.random.default_rng(1)))
    with pytest.raises(ValueError, match="unexpected keys: label_emb.0.weight"):
        td.export.from_torch(other, model)
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_text_encoder_twin_equals_tinydiff(dtype):
    model = td.models.TextEncoder(**{"vocab_size": TEXT["vocab_size"], "length": TEXT["context_length"]}, dim=8,
                                  rng=np.random.default_rng(0), dtype=dtype)
    twin = td.export.to_torch(model)
    ids = prompts(np.random.default_rng(1))
    ours, mask = model(ids)
    theirs, their_mask = twin(torch.from_numpy(ids))
    assert np.array_equal(mask, their_mask.numpy())
    assert rel_err(ours.data, theirs.detach().numpy()) < TOL[dtype]


def test_unregistered_models_are_refused_by_name():
    class Sub(td.models.ToyMLP):
        pass
    with pytest.raises(TypeError, match="no exporter for Sub"):
        td.export.to_torch(Sub(hidden=8, rng=np.random.default_rng(0)))


def test_torch_diffusion_tables_match_gaussian_diffusion():
    d = td.make_diffusion("hybrid", td.cosine_beta_schedule(100), mse_weighting="min_snr")
    config = td.export.diffusion_config(d)
    tables = torch_diffusion.diffusion_tables(config)
    for name in ("alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                 "snr", "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
                 "posterior_mean_coef2"):
        assert rel_err(tables[name].numpy(), getattr(d, name)) < 1e-12, name
    x0, eps, t = (np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32) for _ in range(2)), None, None
    x0, eps = list(x0)
    t = np.array([0, 10, 50, 99])
    ours = d.q_sample(x0, t, noise=eps)
    theirs = torch_diffusion.q_sample(tables, torch.from_numpy(x0), torch.from_numpy(t), torch.from_numpy(eps))
    assert rel_err(ours, theirs.numpy()) < 1e-6
    weight = torch_diffusion.mse_weight(tables, config, torch.from_numpy(t)).numpy()
    assert rel_err(weight, td.losses.mse_weight(d, t)) < 1e-12


def test_import_tinydiff_never_imports_torch():
    code = ("import sys, numpy as np, tinydiff as td\n"
            "m = td.models.ToyMLP(hidden=8, rng=np.random.default_rng(0))\n"
            "cfg = td.export.export_config(m)\n"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"

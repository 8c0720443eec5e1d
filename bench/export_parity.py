"""How closely tinydiff.export's PyTorch twins follow tinydiff: one line per model and dtype.

For each model (the configurations of tests/test_export_torch.py, and MNIST-UNET itself),
prints max |ours - torch| / max |torch| of the outputs and of the gradients of sum(out * g)
w.r.t. every weight taken as one vector, in float32 and float64, and whether the round trip
tinydiff -> torch -> tinydiff gives the same bytes. The targets: 1e-5 (float32) and 1e-10
(float64); the tests assert them.

    python bench/export_parity.py            # needs torch
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tinydiff as td  # noqa: E402

UNET = dict(base_channels=8, channel_mults=(1, 2), zero_init_out=False)
MODELS = {                      # name -> (build(dtype), inputs(rng, dtype) -> (args, kwargs))
    "ToyMLP": (lambda dt: td.models.ToyMLP(hidden=32, rng=np.random.default_rng(0), dtype=dt),
               lambda r, dt: ((r.standard_normal((5, 2)).astype(dt), r.integers(0, 20, 5)), {})),
    "ForwardResidual": (lambda dt: td.models.ForwardResidual(td.models.ToyMLP(heads=2, hidden=16, dtype=dt,
                                                                              rng=np.random.default_rng(0)),
                                                             td.linear_beta_schedule(20)),
                        lambda r, dt: ((r.standard_normal((5, 2)).astype(dt), r.integers(0, 20, 5)), {})),
    "UNet, tuple labels": (lambda dt: td.models.UNet(**UNET, num_classes=(10, 4), rng=np.random.default_rng(0),
                                                      dtype=dt),
                           lambda r, dt: ((r.standard_normal((3, 1, 8, 8)).astype(dt), r.integers(0, 1000, 3)),
                                          {"y": np.stack([r.integers(0, 11, 3), r.integers(0, 5, 3)], 1)})),
    "UNet, scale-shift, learned variance": (
        lambda dt: td.models.UNet(**UNET, in_channels=3, scale_shift=True, learned_variance=True,
                                  rng=np.random.default_rng(0), dtype=dt),
        lambda r, dt: ((r.standard_normal((3, 3, 8, 8)).astype(dt), r.integers(0, 1000, 3)), {})),
    "UNet, attention at 3 levels": (
        lambda dt: td.models.UNet(**{**UNET, "channel_mults": (1, 2, 2)}, attention_levels=(0, 1), num_groups=4,
                                  rng=np.random.default_rng(0), dtype=dt),
        lambda r, dt: ((r.standard_normal((3, 1, 8, 8)).astype(dt), r.integers(0, 1000, 3)), {})),
    "MNIST-UNET (examples/mnist.py)": (
        lambda dt: td.models.UNet(base_channels=16, num_classes=10, zero_init_out=False, rng=np.random.default_rng(0),
                                  dtype=dt),
        lambda r, dt: ((r.standard_normal((4, 1, 28, 28)).astype(dt), r.integers(0, 1000, 4)),
                       {"y": r.integers(0, 11, 4)})),
    "VAE (encode)": (lambda dt: td.models.VAE((6,), channels=(8, 16), rng=np.random.default_rng(0), dtype=dt),
                     lambda r, dt: ((r.standard_normal((2, 1, 28, 28)).astype(dt),), {})),
    "colour VAE of text_to_image.py (encode)": (
        lambda dt: td.models.VAE((4, 7, 7), channels=(32, 64), in_channels=3, rng=np.random.default_rng(0), dtype=dt),
        lambda r, dt: ((r.standard_normal((2, 3, 28, 28)).astype(dt),), {})),
    "TextUNet of text_to_image.py": (
        lambda dt: text_unet(td.recipes.text_model()[1].astype(dt)),
        lambda r, dt: ((r.standard_normal((3, 4, 7, 7)).astype(dt), r.integers(0, 1000, 3)),
                       {"y": td.text.Tokenizer()(["a red seven", "7 in bold blue", ""])})),
}


def text_unet(model):
    """The output convolution and cross-attention's projections start at zero; make them not, so
    the words reach the output."""
    rng = np.random.default_rng(3)
    for layer in [model.out_conv] + [block.proj for block in model.cross_attention_blocks()]:
        layer.weight.data[...] = 0.2 * rng.standard_normal(layer.weight.shape)
    return model


def measure(name, dtype):
    import torch
    build, inputs = MODELS[name]
    model = build(dtype)
    twin = td.export.to_torch(model)
    (x, *rest), kwargs = inputs(np.random.default_rng(1), dtype)
    call = "encode" if "VAE" in name else "__call__"
    out = getattr(model, call)(td.Tensor(x), *rest, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    theirs = getattr(twin, call)(torch.from_numpy(x), *map(torch.from_numpy, rest),
                                 **{k: torch.from_numpy(v) for k, v in kwargs.items()})
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    g = np.random.default_rng(7).standard_normal(out.shape).astype(dtype)
    out.backward(g)
    theirs.backward(torch.from_numpy(g))
    grads = {k: p.grad.numpy() for k, p in twin.named_parameters() if p.grad is not None}
    ours = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    out_err = np.abs(out.data - theirs.detach().numpy()).max() / np.abs(theirs.detach().numpy()).max()
    grad_err = max(np.abs(ours[k] - grads[k]).max() for k in grads) / max(np.abs(v).max() for v in grads.values())
    back = build(dtype)
    for p in back.parameters():                      # nothing of the original left before loading
        p.data[...] = 0
    td.export.from_torch(twin, back)
    same = all(a.tobytes() == b.tobytes() for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    return out_err, grad_err, same


if __name__ == "__main__":
    print(f"{'model':40s}{'dtype':>9s}{'outputs':>11s}{'gradients':>11s}  round trip")
    for name in MODELS:
        for dtype in (np.float32, np.float64):
            out_err, grad_err, same = measure(name, dtype)
            print(f"{name:40s}{np.dtype(dtype).name:>9s}{out_err:11.1e}{grad_err:11.1e}  "
                  f"{'bit-identical' if same else 'DIFFERS'}")

"""Moving a model between tinydiff and PyTorch: ``to_torch(model)``, ``from_torch(source, model)``.

The idea is the one tinydiff's layers were built for: every layer names and shapes its
parameters as ``torch.nn`` does, so a model's state dict *is* the PyTorch twin's state dict.
Exporting a model therefore needs two things only:

1. a *spec*, ``{"class": "UNet", "args": {...}}``: the constructor arguments that rebuild the
   architecture, the same arguments on both sides (``describe(model)``), JSON so it can
   travel in a config file;
2. the twin, a plain PyTorch class of the same name in ``torch_models.py``, built from the
   spec, into which the state dict loads unchanged (``load_state_dict(strict=True)``).

Adding a model is one registered function that reads its constructor arguments back::

    @register(MyModel)
    def _my_model(model):
        return dict(channels=model.channels, ...)

plus its twin in ``torch_models.MODELS`` (the text models' twins are in ``torch_text.py``). Lookup is by exact class, so a subclass is never
silently exported as its parent. PyTorch is imported by ``to_torch`` (and by ``from_torch``
when handed torch tensors), never when this module is imported.
"""
from __future__ import annotations

import numpy as np

from ..models import VAE, ForwardResidual, TextEncoder, TextUNet, ToyMLP, UNet

EXPORTERS = {}          # tinydiff model class -> function(model) -> its constructor arguments (JSON types)


def register(cls):
    """Decorator: ``@register(UNet)`` over a function ``model -> dict of constructor arguments``.

    >>> sorted(cls.__name__ for cls in td.export.convert.EXPORTERS)           # the models registered so far
    ['ForwardResidual', 'TextEncoder', 'TextUNet', 'ToyMLP', 'UNet', 'VAE']
    """
    def add(arguments):
        EXPORTERS[cls] = arguments
        return arguments
    return add


def describe(model) -> dict:
    """The spec of a tinydiff model: ``{"class": name, "args": constructor arguments}``.

    >>> td.export.describe(td.models.ToyMLP(hidden=32, rng=np.random.default_rng(0)))
    {'class': 'ToyMLP', 'args': {'data_dim': 2, 'heads': 1, 'hidden': 32, 'emb_dim': 64}}
    """
    arguments = EXPORTERS.get(type(model))
    if arguments is None:
        raise TypeError(f"model: no exporter for {type(model).__name__}; exportable models are "
                        f"{sorted(c.__name__ for c in EXPORTERS)} (tinydiff.export.convert.register adds one)")
    return {"class": type(model).__name__, "args": arguments(model)}


@register(ToyMLP)
def _toy_mlp(model):
    return dict(data_dim=model.data_dim, heads=model.heads, hidden=model.net[0].out_features, emb_dim=model.emb_dim)


@register(UNet)
def _unet(model):
    base = model.conv_in.out_channels
    chans = [block.conv1.out_channels for block in model.down_blocks] + [model.mid_block1.conv1.out_channels]
    classes = list(model.num_classes)
    return dict(in_channels=model.in_channels, base_channels=base, channel_mults=[c // base for c in chans],
                num_classes=None if not classes else classes[0] if len(classes) == 1 else classes,
                learned_variance=model.learned_variance, attention_levels=list(model.attention_levels),
                time_dim=model.time_pos.dim, emb_dim=model.time_embed[0].out_features,
                num_groups=model.out_norm.num_groups, dropout=model.mid_block1.dropout.p,
                scale_shift=model.scale_shift)


@register(TextEncoder)
def _text_encoder(model):
    return dict(vocab_size=model.vocab_size, length=model.length, dim=model.dim, layers=len(model.layers),
                pad_id=model.pad_id)


@register(TextUNet)
def _text_unet(model):
    args = {k: v for k, v in _unet(model).items() if k != "num_classes"}    # a TextUNet has no class labels
    encoder = model.text_encoder
    return dict(args, vocab_size=encoder.vocab_size, context_length=model.context_length, text_dim=encoder.dim,
                text_layers=len(encoder.layers), pooled=model.pooled)


@register(VAE)
def _vae(model):
    return model.config


@register(ForwardResidual)
def _forward_residual(model):
    return dict(net=describe(model.net), betas=model.betas.tolist())


def build(spec: dict, dtype=np.float32):
    """The tinydiff model a spec describes (weights freshly drawn), in ``dtype``.

    >>> spec = td.export.describe(td.models.ToyMLP(hidden=8, rng=np.random.default_rng(0)))
    >>> td.export.build(spec, np.float64).net[0].weight.dtype
    dtype('float64')
    """
    from .. import models
    if not isinstance(spec, dict) or not isinstance(spec.get("args"), dict) or \
            spec.get("class") not in {c.__name__ for c in EXPORTERS}:
        raise ValueError(f"spec: expected {{'class': one of {sorted(c.__name__ for c in EXPORTERS)}, 'args': {{...}}}}, "
                         f"got {spec!r:.200}")
    args = {k: build(v, dtype) if isinstance(v, dict) and "class" in v else v for k, v in spec["args"].items()}
    if "betas" in args:
        args["betas"] = np.asarray(args["betas"], dtype=np.float64)
    return getattr(models, spec["class"])(**args).astype(dtype)


def model_dtype(model) -> np.dtype:
    """The dtype of a model's parameters (one dtype for all of them, or a ValueError).

    >>> td.export.convert.model_dtype(td.models.ToyMLP(hidden=8, rng=np.random.default_rng(0)).astype(np.float64))
    dtype('float64')
    """
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) != 1:
        raise ValueError(f"model: expected parameters of one dtype, got {sorted(map(str, dtypes))}")
    return dtypes.pop()


def to_torch(model):
    """The PyTorch twin of a tinydiff model (``tinydiff.export.torch_models``), holding the same
    weights in the same dtype (float32 or float64), in the same train/eval mode. It is called as
    the tinydiff model is: ``twin(x, t, y=y)`` for a UNet, ``twin.encode(x)`` for a VAE.

    >>> import pytest; torch = pytest.importorskip("torch")      # (the test suite runs without torch too)
    >>> model = td.models.ToyMLP(hidden=16, rng=np.random.default_rng(0))
    >>> twin = td.export.to_torch(model)
    >>> x, t = np.ones((3, 2), np.float32), np.array([0, 5, 9])
    >>> bool(np.allclose(twin(torch.from_numpy(x), torch.from_numpy(t)).detach().numpy(), model(x, t).data, atol=1e-6))
    True
    """
    import torch

    from . import torch_models
    twin = torch_models.build(describe(model)).to(getattr(torch, model_dtype(model).name))
    twin.load_state_dict({name: torch.from_numpy(value) for name, value in model.state_dict().items()})
    return twin.train(model.training)


def from_torch(source, model):
    """Load weights into a tinydiff ``model`` of the same configuration, in place; returns it.

    source: a torch module (a DistributedDataParallel wrapper is unwrapped), or a state dict of
    torch tensors or NumPy arrays (e.g. ``load_safetensors(path)``). Values are cast to the
    model's dtype; missing, unexpected or misshapen keys are one ValueError, and then nothing
    is loaded (``Module.load_state_dict``).

    >>> arrays = td.models.ToyMLP(hidden=16, rng=np.random.default_rng(0)).state_dict()    # e.g. from a file
    >>> model = td.export.from_torch(arrays, td.models.ToyMLP(hidden=16, rng=np.random.default_rng(1)))
    >>> bool(np.array_equal(model.net[0].weight.data, arrays["net.0.weight"]))
    True
    """
    if hasattr(source, "state_dict") and callable(source.state_dict):
        source = getattr(source, "module", source).state_dict()    # DDP keeps the model in .module
    if not isinstance(source, dict):
        raise TypeError(f"source: expected a torch module or a state dict, got {type(source).__name__}")
    arrays = {}
    for name, value in source.items():
        if type(value).__module__.startswith("torch"):
            value = value.detach().cpu().numpy()
        value = np.asarray(value)
        if value.dtype.kind not in "fiu":
            raise TypeError(f"source[{name!r}]: expected a numeric tensor, got dtype {value.dtype}")
        arrays[name] = value
    model.load_state_dict(arrays)
    return model

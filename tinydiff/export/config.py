"""A model and its diffusion as one ``.safetensors`` file: the weights, and a JSON config in
the file's metadata.

    {"format": "tinydiff-export", "version": 1, "dtype": "float32",
     "model": {"class": "UNet", "args": {...}},                  constructor arguments (convert.describe)
     "diffusion": {"num_timesteps": 1000, "schedule": "cosine", "objective": "eps",
                   "model_mean_type": "eps", "model_var_type": "fixed_large", "loss_type": "mse",
                   "mse_weighting": "min_snr", "snr_gamma": 5.0, ..., "betas": [...]}}

The betas themselves travel in the config (JSON numbers round-trip float64 exactly), so the
other side needs no schedule formula: ``torch_diffusion.diffusion_tables(config["diffusion"])``
builds q's and p's tables from them in PyTorch. "schedule" and "objective" are the names
tinydiff would build them from ("custom" / null when none fits), for the reader.
"""
from __future__ import annotations

import json

import numpy as np

from ..diffusion import GaussianDiffusion
from ..objectives import OBJECTIVES
from ..schedules import cosine_beta_schedule, linear_beta_schedule
from .convert import build, describe, model_dtype
from .safetensors import load_safetensors, load_safetensors_metadata, save_safetensors

FORMAT, VERSION, METADATA_KEY = "tinydiff-export", 1, "tinydiff_export"
SETTINGS = ("model_mean_type", "model_var_type", "loss_type", "decoder_nll", "mse_weighting", "snr_gamma",
            "hybrid_vb_weight")


def schedule_name(betas) -> str:
    """"cosine" or "linear" when betas is exactly tinydiff's schedule of that name, else "custom".

    >>> td.export.config.schedule_name(td.cosine_beta_schedule(50)), td.export.config.schedule_name(np.full(5, 0.1))
    ('cosine', 'custom')
    """
    T = len(betas)
    for name, make in (("cosine", cosine_beta_schedule), ("linear", linear_beta_schedule)):
        if np.array_equal(betas, make(T)):
            return name
    return "custom"


def diffusion_config(diffusion: GaussianDiffusion) -> dict:
    """The settings of a GaussianDiffusion as JSON types: T, the schedule's name and its betas,
    the objective's name (a row of ``td.OBJECTIVES``, or None) and every setting it was built with.

    >>> cfg = td.export.diffusion_config(td.make_diffusion("hybrid", td.linear_beta_schedule(10)))
    >>> cfg["num_timesteps"], cfg["schedule"], cfg["objective"], cfg["model_var_type"]
    (10, 'linear', 'hybrid', 'learned_range')
    """
    if not isinstance(diffusion, GaussianDiffusion):
        raise TypeError(f"diffusion: expected a GaussianDiffusion, got {type(diffusion).__name__}")
    settings = {name: getattr(diffusion, name) for name in SETTINGS}
    objective = next((name for name, row in OBJECTIVES.items()
                      if all(settings[k] == v for k, v in row.items())), None)
    return {"num_timesteps": diffusion.num_timesteps, "schedule": schedule_name(diffusion.betas),
            "objective": objective, **settings, "betas": diffusion.betas.tolist(),
            "timestep_map": diffusion.timestep_map.tolist()}


def diffusion_from_config(config: dict) -> GaussianDiffusion:
    """Inverse of ``diffusion_config``: the same GaussianDiffusion, tables equal to the bit.

    >>> d = td.make_diffusion("eps", td.cosine_beta_schedule(20), mse_weighting="min_snr")
    >>> again = td.export.diffusion_from_config(td.export.diffusion_config(d))
    >>> bool(np.array_equal(again.alphas_cumprod, d.alphas_cumprod)), again.mse_weighting
    (True, 'min_snr')
    """
    try:
        return GaussianDiffusion(np.asarray(config["betas"], dtype=np.float64),
                                 timestep_map=config.get("timestep_map"), **{k: config[k] for k in SETTINGS})
    except (KeyError, TypeError) as err:
        raise ValueError(f"diffusion config: expected the keys betas, {', '.join(SETTINGS)} ({err})") from None


def export_config(model, diffusion: GaussianDiffusion | None = None) -> dict:
    """The JSON config of a model (and, if given, its diffusion), as described above.

    >>> cfg = td.export.export_config(td.models.ToyMLP(hidden=8, rng=np.random.default_rng(0)))
    >>> cfg["format"], cfg["dtype"], cfg["model"]["class"], cfg["diffusion"]
    ('tinydiff-export', 'float32', 'ToyMLP', None)
    """
    return {"format": FORMAT, "version": VERSION, "dtype": model_dtype(model).name, "model": describe(model),
            "diffusion": None if diffusion is None else diffusion_config(diffusion)}


def save_export(path, model, diffusion: GaussianDiffusion | None = None, weights: dict | None = None) -> dict:
    """Write ``model``'s weights (or ``weights``, e.g. its EMA average) to ``path`` as .safetensors,
    with ``export_config(model, diffusion)`` as JSON in its metadata. Returns the config.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
    >>> d = td.make_diffusion("eps", td.linear_beta_schedule(10))
    >>> _ = td.export.save_export(path, td.models.ToyMLP(hidden=8, rng=np.random.default_rng(0)), d)
    >>> model, diffusion, config = td.export.load_export(path)
    >>> type(model).__name__, diffusion.num_timesteps
    ('ToyMLP', 10)
    """
    config = export_config(model, diffusion)
    state = model.state_dict() if weights is None else dict(weights)
    save_safetensors(path, state, {METADATA_KEY: json.dumps(config)})
    return config


def load_export(path):
    """(model, diffusion or None, config) from a file ``save_export`` wrote, or from the
    weights PyTorch saved beside that config (the same metadata).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "weights.safetensors")
    >>> td.export.save_safetensors(path, {"w": np.zeros(2)})                     # bare weights, no config
    >>> td.export.load_export(path)
    Traceback (most recent call last):
    ...
    ValueError: ...: no 'tinydiff_export' config in the file's metadata; ...
    """
    metadata = load_safetensors_metadata(path)
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: no {METADATA_KEY!r} config in the file's metadata; read the bare "
                         "weights with load_safetensors and load them with from_torch(weights, model)")
    config = json.loads(metadata[METADATA_KEY])
    if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("version") != VERSION:
        raise ValueError(f"{path}: config is not a {FORMAT} version {VERSION} config")
    model = build(config["model"], np.dtype(config["dtype"]))
    model.load_state_dict(load_safetensors(path))
    diffusion = None if config.get("diffusion") is None else diffusion_from_config(config["diffusion"])
    return model, diffusion, config

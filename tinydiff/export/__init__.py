"""Moving tinydiff models to PyTorch and weights to ``.safetensors`` (docs/export.md).

    safetensors.py    save_safetensors, load_safetensors: the format in NumPy, every header
                      fault a SafetensorsError
    convert.py        to_torch(model), from_torch(torch_module_or_state_dict, model); describe(model),
                      the constructor arguments that rebuild it; register, to add a model
    config.py         export_config, diffusion_config: the model and its diffusion as JSON;
                      save_export / load_export: weights and config in one .safetensors file
    torch_models.py   the PyTorch twins (ToyMLP, UNet, VAE, ForwardResidual): plain PyTorch,
                      no tinydiff import, to read beside tinydiff/models/
    torch_text.py     the twins of the text models (TextEncoder, TextUNet with cross-attention)
    torch_diffusion.py  the diffusion's tables and q_sample in PyTorch, from the exported config

Importing this package needs NumPy only; PyTorch is imported when a function needs it
(``to_torch``; the torch_*.py files import it at their top).
"""
from .config import diffusion_config, diffusion_from_config, export_config, load_export, save_export
from .convert import build, describe, from_torch, register, to_torch
from .safetensors import (SafetensorsError, decode_safetensors, encode_safetensors, load_safetensors,
                          load_safetensors_metadata, save_safetensors)

__all__ = ["to_torch", "from_torch", "describe", "build", "register", "save_safetensors", "load_safetensors",
           "load_safetensors_metadata", "encode_safetensors", "decode_safetensors", "SafetensorsError",
           "export_config", "diffusion_config", "diffusion_from_config", "save_export", "load_export"]

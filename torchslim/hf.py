"""Hugging Face models as plain forward workloads: called without caches, their outputs flattened
to tensors so every engine can export them (torch.export, ONNX, TorchScript tracing), and example
inputs of the kind each model takes (token ids in the vocabulary, or images)."""
from __future__ import annotations

import inspect
import os
import sys

import torch
import torch.nn as nn

from .errors import SlimError
from .inputs import Example, parse_shapes


def is_hf_model(model) -> bool:
    """A transformers PreTrainedModel (checked without importing transformers)."""
    tf = sys.modules.get("transformers")
    return tf is not None and isinstance(model, getattr(tf, "PreTrainedModel", ()))


def no_cache_kwargs(model: nn.Module) -> dict:
    """{"use_cache": False} where the model's forward takes it: a forward workload needs no key/value
    cache, and a cache object in the outputs is what no exporter can flatten."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def flat_outputs(out):
    """A model's outputs as tensors only: a ModelOutput/dict as the tuple of its tensor values in
    order (what return_dict=False gives, so out[0] still means the same), a tuple/list with caches
    and other non-tensor values dropped, a tensor as itself."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):  # ModelOutput is an OrderedDict of its non-None fields
        out = tuple(out.values())
    if isinstance(out, (tuple, list)):
        kept = (flat_outputs(v) for v in out if isinstance(v, (torch.Tensor, tuple, list, dict)))
        return tuple(v for v in kept if not (isinstance(v, tuple) and not v))
    return ()


class HFForward(nn.Module):
    """A Hugging Face model called as given (positional or keyword inputs) without a cache, returning
    the tuple of its output tensors (the ModelOutput's fields in order, caches and None dropped)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.extra = no_cache_kwargs(model)

    def forward(self, *args, **kwargs):
        return flat_outputs(self.model(*args, **{**self.extra, **kwargs}))


class HFModel(nn.Module):
    """A Hugging Face model folder's forward workload: called with its main input (token ids, or
    pixel_values for a vision model) and, for token models, the attention mask, without a cache;
    returns the first output tensor (the logits of a task model, the last hidden state otherwise)."""

    def __init__(self, model: nn.Module, main_input: str | None = None):
        super().__init__()
        self.model = model
        self.main_input = main_input or getattr(model, "main_input_name", "input_ids")
        self.extra = no_cache_kwargs(model)

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        kw = dict(self.extra)
        kw[self.main_input] = inputs
        if attention_mask is not None:
            kw["attention_mask"] = attention_mask
        out = flat_outputs(self.model(**kw))
        return out if isinstance(out, torch.Tensor) else out[0]


def load_hf(path: str) -> nn.Module:
    """The Hugging Face model in `path` (offline), with its task head when config.architectures names one."""
    try:
        import transformers
    except ImportError as e:
        raise SlimError("hf: models need the transformers package", "pip install 'torchslim[hf]'") from e
    if not os.path.isdir(path):
        raise SlimError(f"Hugging Face folder '{path}' does not exist", "give a local folder holding config.json and the weights (no downloads)")
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        archs = getattr(config, "architectures", None) or []
        cls = getattr(transformers, archs[0], None) if archs else None
        cls = cls or transformers.AutoModel
        return cls.from_pretrained(path, local_files_only=True, attn_implementation="sdpa").eval()
    except Exception as e:  # noqa: BLE001
        raise SlimError(f"cannot load Hugging Face model from '{path}': {e}", "check the folder holds config.json and weights") from e


def example_inputs(model: nn.Module, input_shape: str | None, with_mask: bool = True) -> Example:
    """Inputs of the kind `model` (a transformers model) takes, at `input_shape`: token ids drawn from
    its vocabulary (and an all-ones attention mask) for BATCHxSEQ, random images for pixel_values
    (BATCHxCHANNELSxHEIGHTxWIDTH, by default one image of the config's size), seeded."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    main = getattr(model, "main_input_name", "input_ids")
    if main == "pixel_values":
        size = getattr(cfg, "image_size", 224)
        hw = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        shapes = parse_shapes(input_shape or "x".join(map(str, (1, getattr(cfg, "num_channels", 3), *hw))))
        if len(shapes) != 1 or len(shapes[0]) != 4:
            raise SlimError(f"this Hugging Face vision model takes one BATCHxCHANNELSxHEIGHTxWIDTH input shape, got '{input_shape}'",
                            f"write e.g. --input-shape 1x{getattr(cfg, 'num_channels', 3)}x{hw[0]}x{hw[1]}")
        return Example((torch.randn(shapes[0], generator=g),))
    if main != "input_ids":
        raise SlimError(f"Hugging Face models whose main input is '{main}' are not supported as hf: folders",
                        "return (model, example_inputs) from a file.py:factory instead")
    shapes = parse_shapes(input_shape or "1x128")
    if len(shapes) != 1 or len(shapes[0]) != 2:
        raise SlimError(f"Hugging Face models take one BATCHxSEQ input shape, got '{input_shape}'", "write e.g. --input-shape 1x128")
    ids = torch.randint(0, int(getattr(cfg, "vocab_size", None) or 1000), shapes[0], generator=g)
    return Example((ids, torch.ones_like(ids)) if with_mask else (ids,))

"""What every engine's export shares: the input dimensions kept dynamic (the batch, a token model's
sequence length), torch.export with them, the export retried at the example's static shapes, what
engine.json records about the shapes served, and the Conv/Linear layers an engine's INT8 names."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import first_line
from ..progress import quiet


def dynamic_dims(example) -> dict[int, str]:
    """The input dimensions an engine export keeps dynamic, the ones validation varies: the batch
    (dim 0, shared by every input tensor) and, for token models (an integer input, every tensor
    sharing dim 1 of size >= 4), the sequence length (dim 1)."""
    ts = example.tensors()
    dims: dict[int, str] = {}
    if ts and all(t.dim() >= 1 and t.shape[0] == ts[0].shape[0] for t in ts):
        dims[0] = "batch"
    s = ts[0].shape[1] if ts and ts[0].dim() >= 2 else 0
    if s >= 4 and all(t.dim() >= 2 and t.shape[1] == s for t in ts) and any(not t.is_floating_point() for t in ts):
        dims[1] = "sequence length"
    return dims


def dynamic_shapes(model: nn.Module, example, dims: dict[int, str]):
    """torch.export / torch.onnx.export(dynamo=True) `dynamic_shapes` marking `dims` of every input
    tensor Dim.AUTO (dynamic where the model allows it, static where it does not: no error)."""
    shapes = torch.export.ShapesCollection()
    for t in example.tensors():
        shapes[t] = tuple(torch.export.Dim.AUTO if i in dims else None for i in range(t.dim()))
    return shapes.dynamic_shapes(model, tuple(example.args), dict(example.kwargs))


def served_shapes(example, dims: dict[int, str], shapes: list[tuple]) -> tuple[list[str], str]:
    """(the dimensions the exported graph kept dynamic, a note for the row). `shapes` are the
    graph's input shapes, a dynamic dimension as anything but an int."""
    if not dims:
        return [], "serves the example's input shapes only (the inputs share no batch dimension)"
    kept = [name for i, name in dims.items() if shapes and all(len(s) > i and not isinstance(s[i], int) for s in shapes)]
    size = example.tensors()[0].shape
    static = [f"{name} {size[i]}" for i, name in dims.items() if name not in kept]
    if static:
        return kept, "serves " + " and ".join(static) + " only (the export kept it static)"
    return kept, "dynamic " + " and ".join(kept)


def export_with_shapes(export: Callable, example, dims: dict[int, str]) -> tuple[Any, dict]:
    """`export(inputs, dims) -> (result, graph input shapes)` with `dims` dynamic, at batch 2 where
    the example has batch 1; at the example's static shapes where that fails or the batch
    specializes. Returns (result, shapes_meta(...))."""
    why = ""
    if dims:
        ex = example.for_export() if 0 in dims else example  # batch to stay dynamic
        try:
            result, shapes = export(ex, dims)
            kept, note = served_shapes(example, dims, shapes)
            if ex is example or "batch" in kept:
                return result, shapes_meta(example, dims, kept, note)
            why = "the batch dimension specialized"
        except Exception as e:  # noqa: BLE001 - the static export below is the fallback
            why = first_line(e)
    result, _ = export(example, {})
    if not dims:
        return result, shapes_meta(example, dims, [], served_shapes(example, dims, [])[1])
    return result, static_meta(example, dims, f"export with dynamic shapes failed: {why[:160]}")


def torch_export(model: nn.Module, example, dims: dict[int, str]) -> tuple[torch.export.ExportedProgram, list[tuple]]:
    """torch.export (non-strict) with `dims` Dim.AUTO; (program, its input shapes: an int where
    static, a str where dynamic)."""
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    shapes = dynamic_shapes(model, example, dims) if dims else None
    with quiet(output=True):
        ep = torch.export.export(model, tuple(example.args), dict(example.kwargs), dynamic_shapes=shapes, strict=False)
    user = set(ep.graph_signature.user_inputs)
    vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
    return ep, [tuple(int(d) if is_concrete_int(d) else str(d) for d in v.shape) for v in vals if isinstance(v, torch.Tensor)]


def export_program(model: nn.Module, example) -> tuple[torch.export.ExportedProgram, dict]:
    """torch.export of `model` with the batch (and a token model's sequence length) dynamic where
    the model allows it; (program, shapes_meta(...))."""
    return export_with_shapes(lambda ex, dims: torch_export(model, ex, dims), example, dynamic_dims(example))


def shapes_meta(example, dims: dict[int, str], kept: list[str], note: str) -> dict:
    """What engine.json records about the shapes an engine graph serves: the dynamic dimensions,
    the row's note, and every input's shape (None where dynamic)."""
    free = {i for i, name in dims.items() if name in kept}
    return {"dynamic": kept, "serves": note,
            "input_shapes": [[None if i in free else n for i, n in enumerate(t.shape)] for t in example.tensors()]}


def static_meta(example, dims: dict[int, str], why: str) -> dict:
    """shapes_meta of a graph kept at the example's shapes: 'serves batch 1 and ... only (why)'."""
    size = example.tensors()[0].shape
    what = " and ".join(f"{name} {size[i]}" for i, name in dims.items()) or "the example's input shapes"
    return shapes_meta(example, dims, [], f"serves {what} only ({why})")


def shape_mismatch(fixed: list[list], flat) -> str | None:
    """Which input does not have the shape a static engine graph was built for, or None."""
    if len(flat) != len(fixed):
        return f"{len(flat)} input tensors, the graph takes {len(fixed)}"
    for i, (want, t) in enumerate(zip(fixed, flat)):
        if len(want) != t.dim() or any(w is not None and w != n for w, n in zip(want, t.shape)):
            return f"input {i} has shape {tuple(t.shape)}, the graph takes {tuple('*' if w is None else w for w in want)}"
    return None


# -- layers kept in float (the sensitivity fallback's `skip`) ------------------------------------

def quantizable_layers(model: nn.Module) -> list[str]:
    """The module names of the model's Conv/Linear layers: what an engine's INT8 quantizes and
    what `skip` patterns name."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return [n for n, m in model.named_modules() if n and isinstance(m, kinds)]


def resolve_skip(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """The Conv/Linear layers the fnmatch `patterns` name (a pattern matching none is an error)."""
    from ..quant.common import match_names

    return match_names(quantizable_layers(model), patterns, "Conv/Linear layer")


class FlatOutputs(nn.Module):
    """`inner` with its outputs as a tuple of tensors (the pytree leaves, non-tensor constants dropped):
    what an exported program returns, so that the file loads in a bare runtime without the output's
    classes (a transformers ModelOutput, a user's dataclass); EngineModule.rebuild restores the
    structure from the saved spec."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return tuple(t for t in torch.utils._pytree.tree_leaves(self.inner(*args, **kwargs)) if isinstance(t, torch.Tensor))

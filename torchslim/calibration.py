"""Calibration data for static quantization: from a file or a factory, cut to the example's batch size."""
from __future__ import annotations

import os
from typing import Callable, Iterable

import torch
import torch.utils._pytree as pytree

from .calibration_sources import NO_CALIBRATION
from .errors import SlimError, first_line
from .inputs import Example, as_example

DEFAULT_SAMPLES = 256
__all__ = ["NO_CALIBRATION", "DEFAULT_SAMPLES", "from_spec", "from_batches", "rebatch", "split", "cap", "check_batch"]


def from_spec(spec: str, example: Example, samples: int = DEFAULT_SAMPLES, model_spec: str | None = None) -> Callable[[], list[Example]]:
    """`--calib-data`, any of:
      inputs.pt          a torch.save'd [N, ...] tensor, tuple/list of such, or dict of such
      arrays.npy/.npz    NumPy arrays (.npz: named like the keyword inputs, or in order); [N,H,W,C] images are preprocessed
      DIR[?mean=..&std=..]  a folder of images (JPEG/PNG need Pillow; .npy images always work), resized and
                         centre-cropped to the example's HxW, normalised (ImageNet mean/std by default)
      texts.txt/.jsonl   one text per line (JSONL: {"text": ...}), for hf: models: tokenized with the model
                         folder's tokenizer to the example's sequence length
      DIR (datasets)     a folder written by datasets' save_to_disk (input_ids, text, image or numeric columns)
      file.py:fn         a function returning batches, a torch Dataset or a DataLoader ((inputs, label) items keep the inputs)
    Returns a calibration function of batches shaped like `example`."""
    from . import calibration_sources as src

    path, opts = src.split_options(spec)
    what = f"calibration data '{spec}'"
    if src.is_saved_dataset(path):
        batches = split(src.saved_dataset(path, example, opts, samples, model_spec), example.batch_size)
    elif os.path.isdir(path):
        batches = split(src.image_folder(path, example, opts, samples), example.batch_size)
    elif os.path.isfile(path) and path.endswith((".npy", ".npz")):
        batches = split(src.numpy_file(path, example, opts), example.batch_size)
    elif os.path.isfile(path) and path.endswith((".txt", ".jsonl")):
        batches = split(src.tokenize(src.read_texts(path, samples), example, model_spec, what), example.batch_size)
    elif os.path.isfile(path) and not path.endswith(".py"):
        from .loading import read_safely

        data = read_safely(path, "calibration data", "save the inputs with torch.save(tensor_or_tuple_or_dict, path)")
        batches = split(as_example(data), example.batch_size)
    elif ":" in spec:
        from .loading import load_factory_fn

        fn = load_factory_fn(spec)
        try:
            made = fn()
        except SlimError:
            raise
        except Exception as e:  # noqa: BLE001 - user code
            raise SlimError(f"the --calib-data function '{spec.rpartition(':')[2]}' raised {type(e).__name__}: {first_line(e)}",
                            "fix it (run with --debug for the traceback)") from e
        made = made if isinstance(made, Iterable) or hasattr(made, "__getitem__") else [made]
        batches = rebatch((as_example(b) for b in src.loader_batches(made, example)), example, samples)
    else:
        raise SlimError(f"calibration data '{spec}' does not exist",
                        "give a .pt/.npy/.npz file, a folder of images, a .txt/.jsonl of texts (hf: models), a datasets folder, or file.py:fn")
    if not batches:
        raise SlimError(f"{what} is empty: it holds no full batch of {example.batch_size} samples (the example's batch size)",
                        "give at least one full batch of real inputs")
    return _checked(batches, example, samples, what)


def rebatch(batches: Iterable[Example], example: Example, samples: float) -> list[Example]:
    """Batches of the example's batch size: as given when they already are, else concatenated and
    cut anew (a DataLoader of batch 32 for a model served at batch 8)."""
    got = cap(batches, samples)
    if all(b.batch_size == example.batch_size for b in got):
        return got
    try:
        parts = list(zip(*(b.tensors() for b in got)))
        whole = iter([torch.cat(p) for p in parts])
        return split(got[0].map(lambda t: next(whole)), example.batch_size)
    except (RuntimeError, StopIteration):
        return got  # mismatched shapes: check_batch names them


def from_batches(batches, example: Example, samples: float = DEFAULT_SAMPLES,
                 what: str = "the calibration data") -> Callable[[], list[Example]]:
    """The Python API's calibration: an iterable of batches (tensors, tuples, dicts or Examples),
    or a function returning one, checked against `example` and capped at `samples`."""
    made = batches() if callable(batches) else batches
    if not isinstance(made, Iterable):
        raise SlimError(f"calibration data of type {type(made).__name__} is not iterable",
                        "give a DataLoader or list of input batches shaped like the example")
    return _checked((as_example(b) for b in made), example, samples, what)


def _checked(batches: Iterable[Example], example: Example, samples: float, what: str) -> Callable[[], list[Example]]:
    """The first `samples` samples of `batches`, each checked against `example`; none is an error."""
    batches = cap(batches, samples)
    for i, b in enumerate(batches):
        check_batch(b, example, i)
        if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in b.tensors()):
            raise SlimError(f"{what}: batch {i + 1} holds NaN or Inf values", "calibrate on the model's real, finite inputs")
    if not batches:
        raise SlimError(f"{what} is empty", "give at least one batch of real inputs")
    return lambda: batches


def split(data: Example, batch: int) -> list[Example]:
    """Cut an Example holding N samples along dimension 0 into Examples of `batch` samples (the rest dropped)."""
    tensors = data.tensors()
    if not tensors:
        return []
    n = int(tensors[0].shape[0])
    return [data.map(lambda t, i=i: t[i:i + batch]) for i in range(0, n - batch + 1, batch)]


def cap(batches: Iterable[Example], samples: int) -> list[Example]:
    out, seen = [], 0
    for b in batches:
        if seen >= samples:
            break
        out.append(b)
        seen += b.batch_size
    return out


def check_batch(batch: Example, example: Example, index: int | None = None) -> None:
    """Refuse a calibration batch whose inputs differ from the example's: in structure (positional/
    keyword inputs, their count), then per tensor in dtype or shape. `index` names the batch."""
    where = "a calibration batch" if index is None else f"calibration batch {index} ({batch.describe()})"
    leaves, tree = pytree.tree_flatten((tuple(batch.args), dict(batch.kwargs)))
    want, want_tree = pytree.tree_flatten((tuple(example.args), dict(example.kwargs)))
    if tree != want_tree:
        raise SlimError(f"{where} has {len(batch.tensors())} input tensor(s), the model takes {len(example.tensors())}: "
                        f"it is structured differently from the example inputs ({_brief(tree)} vs the example's "
                        f"{_brief(want_tree)})", f"give batches shaped like the example inputs: {example.describe()}")
    for i, (g, w) in enumerate(zip(leaves, want)):
        if not isinstance(w, torch.Tensor):
            continue
        if not isinstance(g, torch.Tensor):
            raise SlimError(f"{where}: input {i} is a {type(g).__name__}, the example's is a tensor {tuple(w.shape)}",
                            "give calibration inputs shaped like the example inputs")
        if g.dtype != w.dtype or g.shape != w.shape:
            rank = (f" (the rank differs: shape {tuple(g.shape)} (rank {g.dim()}) vs shape {tuple(w.shape)} (rank {w.dim()}))"
                    if g.dim() != w.dim() else "")
            raise SlimError(f"{where}: calibration input {i} is {tuple(g.shape)}:{_name(g.dtype)}, "
                            f"the example is {tuple(w.shape)}:{_name(w.dtype)}{rank}",
                            "give calibration batches of the same shape and dtype as the example inputs")


def _brief(tree) -> str:
    s = str(tree).replace("\n", " ")
    return s if len(s) < 160 else s[:157] + "..."


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")

"""Datasets for training by name (`fashion-mnist`, `digits`, `digits-images`) or from a factory
(`file.py:fn` returning (train, test)), and the check that a dataset fits a model.

A dataset yields (input, label) pairs with an integer class label. TensorDatasets are indexed a
whole batch at a time (no per-sample collation), which is most of the data time for small images.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset, TensorDataset

from ..errors import SlimError, first_line

DATASETS = """dataset specs:
  fashion-mnist     Fashion-MNIST (Debian dataset-fashion-mnist): [N,1,28,28] images, 10 classes
  digits            scikit-learn's 8x8 digits as [N,64] vectors, 10 classes (1437 train / 360 test)
  digits-images     the same digits as [N,1,8,8] images
  file.py:fn        a function returning (train, test): torch Datasets of (input, label) pairs,
                    or (inputs, labels) tensor pairs"""


def load(spec: str, limit: int | None = None) -> tuple[Dataset, Dataset]:
    """(train, test) datasets for `spec` (see DATASETS); `limit` keeps the first N training samples."""
    if spec == "fashion-mnist":
        from . import fashion_data as fm

        train, test = TensorDataset(*fm.load_split(True)), TensorDataset(*fm.load_split(False))
    elif spec in ("digits", "digits-images"):
        train, test = _digits(images=spec == "digits-images")
    elif ":" in spec:
        train, test = _from_factory(spec)
    else:
        raise SlimError(f"unknown dataset '{spec}'", DATASETS)
    if limit is not None:
        if limit < 1:
            raise SlimError(f"--limit must be at least 1 (got {limit})", "give the number of training samples to keep")
        train = _head(train, limit)
    if len(train) == 0 or len(test) == 0:
        raise SlimError(f"dataset '{spec}' has an empty {'training' if len(train) == 0 else 'test'} split",
                        "give at least one batch of samples in each split")
    return train, test


def _digits(images: bool) -> tuple[TensorDataset, TensorDataset]:
    """sklearn's digits, scaled to [0, 1] then standardized; a fixed shuffle, the last 20 % for test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise SlimError("the 'digits' dataset needs scikit-learn", "pip install scikit-learn") from e
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    x = (x - 0.3) / 0.37  # approximate pixel mean and standard deviation
    y = torch.tensor(d.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    if images:
        x = x.reshape(-1, 1, 8, 8)
    cut = int(len(x) * 0.8)
    return TensorDataset(x[:cut].contiguous(), y[:cut]), TensorDataset(x[cut:].contiguous(), y[cut:])


def _from_factory(spec: str) -> tuple[Dataset, Dataset]:
    from ..loading import call_user, load_factory_fn

    fn = load_factory_fn(spec)
    name = spec.rpartition(":")[2]
    made = call_user(fn, f"dataset function '{name}'", "fix it (run with --debug for the traceback)")
    if not (isinstance(made, (tuple, list)) and len(made) == 2):
        raise SlimError(f"dataset function '{name}' returned {type(made).__name__}", "return (train, test) datasets")
    return _as_dataset(made[0], name, "train"), _as_dataset(made[1], name, "test")


def _as_dataset(obj, name: str, split: str) -> Dataset:
    if isinstance(obj, Dataset):
        return obj
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        if len(obj[0]) != len(obj[1]):
            raise SlimError(f"dataset function '{name}': the {split} split has {len(obj[0])} inputs but {len(obj[1])} labels",
                            "give one label per input")
        return TensorDataset(*obj)
    raise SlimError(f"dataset function '{name}': the {split} split is a {type(obj).__name__}",
                    "give a torch Dataset of (input, label) pairs or an (inputs, labels) tensor pair")


def _head(ds: Dataset, n: int) -> Dataset:
    if isinstance(ds, TensorDataset):
        return TensorDataset(*(t[:n] for t in ds.tensors))
    return Subset(ds, range(min(n, len(ds))))


def take(ds: Dataset, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples at `indices` as one (inputs, labels) batch."""
    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ds.tensors[0][idx], ds.tensors[1][idx]
    pairs = [ds[int(i)] for i in indices]
    try:
        x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
        y = torch.as_tensor([int(p[1]) for p in pairs], dtype=torch.long)
    except (TypeError, IndexError, ValueError, RuntimeError) as e:
        raise SlimError(f"cannot batch the dataset's samples: {type(e).__name__}: {e}",
                        "each sample must be an (input tensor, integer label) pair of the same input shape") from e
    return x, y


def check_fits(model: nn.Module, ds: Dataset, name: str = "dataset") -> int:
    """Run two samples through `model` (no grad, eval mode, restored after); raise SlimError naming
    the shapes when the inputs do not fit or the outputs are not [batch, classes] logits covering
    the labels. Returns the number of classes the model predicts."""
    x, y = take(ds, range(min(2, len(ds))))
    param = next(iter(model.parameters()), None)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(x.to(param.device) if param is not None else x)
    except Exception as e:  # noqa: BLE001 - any failure here means data and model disagree
        first = first_line(e)
        raise SlimError(f"the model does not accept the {name}'s inputs: a batch shaped {tuple(x.shape)} "
                        f"({str(x.dtype).replace('torch.', '')}) raised {type(e).__name__}: {first[:200]}",
                        "give a dataset whose inputs match what the model takes (or a model for this dataset)") from e
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(x):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SlimError(f"the model returns {shape} for a batch shaped {tuple(x.shape)}; classification training "
                        f"needs [batch, classes] logits, here [{len(x)}, C]",
                        "give a classifier that returns one row of class scores per input")
    classes = int(out.shape[1])
    labels = _labels(ds)
    top = int(labels.max()) if labels is not None and len(labels) else int(y.max())
    if top >= classes or (labels is not None and len(labels) and int(labels.min()) < 0):
        raise SlimError(f"the {name}'s labels go up to {top} but the model outputs {classes} class scores "
                        f"(shape {tuple(out.shape)} for inputs {tuple(x.shape)})",
                        "give a model with one output per class, or a dataset with labels 0..C-1")
    return classes


def _labels(ds: Dataset) -> torch.Tensor | None:
    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        return ds.tensors[1]
    return None

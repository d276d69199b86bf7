"""Calibration data from what users hold: image folders, text files, NumPy arrays, saved `datasets`
folders and torch Datasets, each read into N samples that calibration.from_spec cuts and checks."""
from __future__ import annotations

import json
import os
from urllib.parse import parse_qs

import torch
import torch.nn.functional as F

from .errors import SlimError, first_line
from .inputs import Example

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CROP_RATIO = 0.875
MAX_FILES = 4096


def split_options(spec: str) -> tuple[str, dict[str, str]]:
    """'photos/?mean=0.5&std=0.5' -> ('photos/', {'mean': '0.5', 'std': '0.5'})."""
    if "?" not in spec or os.path.exists(spec):
        return spec, {}
    path, _, query = spec.partition("?")
    opts = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(opts) - {"mean", "std"}
    if unknown:
        raise SlimError(f"unknown calibration option(s) {sorted(unknown)} in '{spec}'", "image folders take ?mean=R,G,B&std=R,G,B")
    return path, opts


def is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json"))


# -- images ------------------------------------------------------------------------------------

def image_shape(example: Example) -> tuple[int, int, int]:
    """(C, H, W) of an image model's single [B, C, H, W] float input; else a clear error."""
    ts = example.tensors()
    if len(ts) != 1 or ts[0].dim() != 4 or not ts[0].is_floating_point() or ts[0].shape[1] not in (1, 3, 4):
        raise SlimError(f"images need a model taking one [B, C, H, W] float image tensor, the example is {example.describe()}",
                        "give the calibration inputs as a .pt/.npy tensor shaped like the example instead")
    return tuple(int(d) for d in ts[0].shape[1:])


def _floats(text: str | None, channels: int, default) -> torch.Tensor:
    if text is None:
        vals = list(default) if channels == 3 else [sum(default) / 3] * channels
    else:
        try:
            vals = [float(v) for v in text.split(",")]
        except ValueError:
            raise SlimError(f"cannot read '{text}' as numbers", "write mean/std as comma-separated numbers, e.g. mean=0.5,0.5,0.5") from None
        vals = vals * channels if len(vals) == 1 else vals
    if len(vals) != channels:
        raise SlimError(f"{len(vals)} mean/std values for a {channels}-channel model", f"give {channels} values (or one for all)")
    return torch.tensor(vals).view(channels, 1, 1)


# Images are preprocessed as torchvision's classification presets do: the shorter side resized to
# crop/0.875 (bilinear, antialiased), a centre crop to the example's HxW, scaled to [0, 1] and
# normalised with mean/std: given in the spec (`DIR?mean=0.5,0.5,0.5&std=0.5,0.5,0.5`), else the
# ImageNet default (0.485, 0.456, 0.406)/(0.229, 0.224, 0.225) for 3 channels and 0.449/0.226 (their
# average) for 1. JPEG/PNG/... need Pillow; without it, a folder of .npy images (HxWxC or CxHxW,
# uint8 0-255 or float 0-1) works the same way.
def preprocess(img: torch.Tensor, chw: tuple[int, int, int], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """One image (HxWxC or CxHxW or HxW; uint8 0-255 or float 0-1) -> normalised [C, H, W] float32."""
    c, h, w = chw
    x = img.float() / 255.0 if not img.is_floating_point() else img.float()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    elif x.dim() == 3 and x.shape[0] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(2, 0, 1)
    if x.dim() != 3:
        raise SlimError(f"an image of shape {tuple(img.shape)} is not HxW, HxWxC or CxHxW", "give 2-D or 3-D images")
    x = x[:3] if x.shape[0] == 4 and c != 4 else x
    if x.shape[0] != c:
        x = x.mean(0, keepdim=True) if c == 1 else x.expand(c, -1, -1) if x.shape[0] == 1 else x
    if x.shape[0] != c:
        raise SlimError(f"an image has {x.shape[0]} channels, the model takes {c}", "give images with the model's channel count")
    short = round(max(h, w) / CROP_RATIO)
    ih, iw = x.shape[1:]
    scale = short / min(ih, iw)
    nh, nw = max(h, round(ih * scale)), max(w, round(iw * scale))
    x = F.interpolate(x.unsqueeze(0), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (nh - h) // 2, (nw - w) // 2
    return (x[:, top:top + h, left:left + w] - mean) / std


def _read_image(path: str) -> torch.Tensor:
    import numpy as np

    if path.lower().endswith(".npy"):
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False).copy())
        except (OSError, ValueError, EOFError) as e:
            raise SlimError(f"calibration file '{path}' is not a readable .npy array: {first_line(e)}",
                            "remove it from the --calib-data folder or save it again with numpy.save") from None
    try:
        from PIL import Image
    except ImportError:
        raise SlimError(f"reading '{os.path.basename(path)}' needs Pillow, which is not installed",
                        "pip install pillow, or save the images as .npy arrays (HxWxC uint8) in the folder") from None
    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB")).copy())
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        detail = type(e).__name__ if path in str(e) else f"{type(e).__name__}: {first_line(e)}"
        raise SlimError(f"calibration image '{path}' cannot be read ({detail})",
                        "remove or replace the corrupt file in the --calib-data folder") from None


def image_folder(path: str, example: Example, opts: dict, samples: int) -> Example:
    chw = image_shape(example)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.lower().endswith(IMAGE_EXTS + (".npy",)))
    if not files:
        raise SlimError(f"calibration folder '{path}' holds no images ({', '.join(IMAGE_EXTS)}, .npy)", "put some of the model's real inputs there")
    mean, std = _floats(opts.get("mean"), chw[0], IMAGENET_MEAN), _floats(opts.get("std"), chw[0], IMAGENET_STD)
    imgs = [preprocess(_read_image(f), chw, mean, std) for f in files[:min(samples, MAX_FILES)]]
    return Example((torch.stack(imgs).to(example.tensors()[0].dtype),))


def images_tensor(arr: torch.Tensor, example: Example, opts: dict) -> Example:
    chw = image_shape(example)
    mean, std = _floats(opts.get("mean"), chw[0], IMAGENET_MEAN), _floats(opts.get("std"), chw[0], IMAGENET_STD)
    return Example((torch.stack([preprocess(a, chw, mean, std) for a in arr]),))


# -- NumPy -------------------------------------------------------------------------------------

def numpy_file(path: str, example: Example, opts: dict) -> Example:
    """.npy: one [N, ...] array; .npz: arrays named like the example's keyword inputs, or in order."""
    import numpy as np

    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise SlimError(f"cannot read '{path}' without pickle: {e}", "save plain numeric arrays with np.save/np.savez") from None
    want = example.tensors()
    if isinstance(data, np.ndarray):
        arrays = [data]
    else:
        with data:
            names = list(example.kwargs) if example.kwargs and all(k in data.files for k in example.kwargs) else data.files
            arrays = [data[n] for n in names][:len(want)]
            if example.kwargs and names == list(example.kwargs):
                return Example((), {k: _like(torch.from_numpy(a), w) for (k, w), a in zip(example.kwargs.items(), arrays)})
    odd = [a.dtype for a in arrays if a.dtype.kind not in "biuf"]
    if odd:
        raise SlimError(f"'{path}' holds a {odd[0]} array, not numbers", "save the model's numeric inputs (float images, integer ids)")
    ts = [torch.from_numpy(a) for a in arrays]
    if len(ts) == 1 and len(want) == 1 and tuple(ts[0].shape[1:]) != tuple(want[0].shape[1:]) and want[0].dim() == 4:
        return images_tensor(ts[0], example, opts)  # [N, H, W, C] uint8 images and the like
    return Example(tuple(_like(t, w) for t, w in zip(ts, want)))


def _like(t: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Cast to the example's dtype where both are floats or both integers; add a batch dim to one sample."""
    if t.dim() == want.dim() - 1:
        t = t.unsqueeze(0)
    if t.is_floating_point() == want.is_floating_point():
        t = t.to(want.dtype)
    return t


# -- text for hf: models -----------------------------------------------------------------------

def read_texts(path: str, samples: int) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if path.endswith(".jsonl"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SlimError(f"line {n} of '{path}' is not JSON: {e}", "give one JSON object per line, e.g. {\"text\": \"...\"}") from None
                line = obj.get("text") if isinstance(obj, dict) and "text" in obj else next(
                    (v for v in (obj.values() if isinstance(obj, dict) else [obj]) if isinstance(v, str)), None)
                if not isinstance(line, str):
                    raise SlimError(f"line {n} of '{path}' has no text field", "give objects like {\"text\": \"...\"}")
            texts.append(line)
            if len(texts) >= samples:
                break
    return texts


def tokenize(texts: list[str], example: Example, model_spec: str | None, what: str) -> Example:
    """Texts -> (input_ids, attention_mask) padded/truncated to the example's sequence length, with
    the tokenizer in the hf: model's folder."""
    if not model_spec or not model_spec.startswith("hf:"):
        raise SlimError(f"{what} is text, which only hf: models can tokenize", "give token ids as a .pt/.npy file instead")
    ts = example.tensors()
    if not ts or ts[0].dim() != 2 or ts[0].is_floating_point():
        raise SlimError(f"{what} is text but the example inputs are {example.describe()}", "use a BATCHxSEQ --input-shape")
    if not texts:
        raise SlimError(f"{what} holds no text", "give one text per line")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_spec[3:], local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise SlimError(f"cannot load the tokenizer from '{model_spec[3:]}': {type(e).__name__}: {e}",
                        "the hf: folder needs its tokenizer files (tokenizer.json or vocab.txt)") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    enc = tok(texts, padding="max_length", truncation=True, max_length=int(ts[0].shape[1]), return_tensors="pt")
    parts = (enc["input_ids"], enc["attention_mask"])[:len(ts)]
    return Example(tuple(p.to(t.dtype) for p, t in zip(parts, ts)))


# -- datasets.save_to_disk folders -------------------------------------------------------------

def saved_dataset(path: str, example: Example, opts: dict, samples: int, model_spec: str | None) -> Example:
    """A `datasets` folder: token-id columns, a text column (tokenized), an image column, or numeric columns."""
    try:
        import datasets
    except ImportError:
        raise SlimError(f"'{path}' is a datasets folder but the datasets package is not installed", "pip install datasets") from None
    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    ds = ds.select(range(min(samples, len(ds))))
    cols, feats = ds.column_names, ds.features
    what = f"dataset '{path}'"
    table = ds.with_format("torch")[:]  # {column: tensor (or list)}; column access differs across datasets versions
    if "input_ids" in cols:
        parts = [table["input_ids"]] + ([table["attention_mask"]] if "attention_mask" in cols else [])
        return Example(tuple(_like(p, w) for p, w in zip(parts, example.tensors())))
    text = next((c for c in cols if getattr(feats[c], "dtype", None) in ("string", "large_string")), None)
    image = next((c for c in cols if type(feats[c]).__name__ == "Image"), None)
    if image is not None:
        return Example((torch.stack([preprocess(_pil_tensor(im), image_shape(example), *_norm(example, opts)) for im in ds[:][image]]),))
    if text is not None:
        return tokenize(list(ds[:][text]), example, model_spec, what)
    want = example.tensors()
    arrays = [table[c] for c in cols if isinstance(table[c], torch.Tensor)][:len(want)]
    if not arrays:
        raise SlimError(f"{what} has no input_ids, text, image or numeric column ({cols})", "save the model's inputs as columns")
    if len(want) == 1 and want[0].dim() == 4 and tuple(arrays[0].shape[1:]) != tuple(want[0].shape[1:]):
        return images_tensor(arrays[0], example, opts)
    return Example(tuple(_like(a, w) for a, w in zip(arrays, want)))


def _norm(example: Example, opts: dict):
    c = image_shape(example)[0]
    return _floats(opts.get("mean"), c, IMAGENET_MEAN), _floats(opts.get("std"), c, IMAGENET_STD)


def _pil_tensor(im) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(im.convert("RGB")).copy())


# -- torch Datasets / DataLoaders from a factory ----------------------------------------------

def loader_batches(made, example: Example):
    """A map-style Dataset becomes a DataLoader of the example's batch size; items or batches
    carrying labels, (inputs, label), keep only as many leading tensors as the model takes."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(made, Dataset) and not isinstance(made, torch.utils.data.IterableDataset):
        made = DataLoader(made, batch_size=example.batch_size, shuffle=False)
    n = len(example.tensors())
    for b in made:
        if isinstance(b, (tuple, list)) and len(b) > n and all(isinstance(t, torch.Tensor) for t in b[:n]):
            b = tuple(b[:n])
        elif isinstance(b, dict) and example.kwargs and set(example.kwargs) < set(b):
            b = {k: b[k] for k in example.kwargs}
        yield b


# -- what to pass when there is none -----------------------------------------------------------

NO_CALIBRATION = ("needs calibration data: pass --calib-data (CLI), calibration= (torchslim.apply) or give the "
                  "workload a calibration function")


def missing_hint(what: str, workload) -> str:
    """A static-INT8 skip for want of calibration data, made concrete: the exact option for this
    kind of model, and what static INT8 measured on such models (BENCHMARKS.md)."""
    if NO_CALIBRATION not in what:
        return what
    import torch.nn as nn

    mods = list(workload.model.modules()) if isinstance(workload.model, nn.Module) else []
    convs = sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in mods)
    ts = workload.example.tensors()
    if workload.spec and str(workload.spec).startswith("hf:"):
        how = "--calib-data texts.txt (one real input text per line; or .jsonl with a \"text\" field, or a datasets folder)"
    elif len(ts) == 1 and ts[0].dim() == 4 and ts[0].is_floating_point():
        how = ("--calib-data DIR (a folder of a few hundred real images, resized/cropped to the example's size, "
               "ImageNet mean/std unless DIR?mean=..&std=..), or an [N,C,H,W] .npy/.pt")
    else:
        how = "--calib-data inputs.pt or .npy/.npz ([N, ...] real inputs shaped like the example), or file.py:fn returning a DataLoader"
    win = ("static INT8 was the largest CPU win measured on convolutional models (4.9-12.9x on the Fashion-MNIST CNN, BENCHMARKS.md)"
           if convs else "on Linear-heavy models (transformers) static INT8 measured 2.5-3.0x at batch 1 (MiniLM, BENCHMARKS.md), "
                         "close to the dynamic INT8 recipes tried without data")
    return f"{what.rstrip('.')}: pass {how}; {win}"

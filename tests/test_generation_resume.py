"""A generation run stopped by SIGTERM (a container stopping) keeps its rows, marks the recipe it was
trying as interrupted, removes its lock and exits 143; the same command again resumes it (the settled
rows reused), as optimize's forward search does (tests/test_resume.py)."""
import json
import os
import signal
import subprocess
import sys

from tiny_lm import build_tiny_lm

from test_resume import _wait_for_row
from torchslim import cli

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# da8w4 is settled at once (not applicable without AMX-INT8 or its kernel); the compiled INT8 recipe then
# compiles for seconds: the signal lands there.
SETTLED, SLOW = "da8w4-g32-bf16+static-cache+compile", "int8-wo-bf16+static-cache+compile"


def test_sigterm_mid_generation_keeps_rows_releases_the_lock_and_resumes(tmp_path, capsys):
    folder = build_tiny_lm(str(tmp_path / "tiny"))
    out = str(tmp_path / "out")
    args = ["optimize", "--model", "hf:" + folder, "--task", "text-generation", "--prompt-len", "16", "--new-tokens", "4",
            "--large-batch", "0", "--rounds", "1", "--recipes", f"{SETTLED},{SLOW}", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE])}
    proc = subprocess.Popen([sys.executable, "-m", "torchslim", *args, "--out", out], cwd=HERE, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rows = _wait_for_row(out, SETTLED, proc, timeout=300)
        assert os.path.exists(os.path.join(out, ".torchslim.lock"))  # held while it runs
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "interrupted by SIGTERM" in err.strip().splitlines()[-1]
    d = json.load(open(os.path.join(out, "results.json")))
    assert d["interrupted"] == "SIGTERM", d.get("error")
    got = {r["name"]: r for r in d["recipes"]}
    # the signal lands in the compiled recipe's trial, or (its compile cached by an earlier run) in the timing
    assert got[SETTLED]["status"] == "skipped" and d["error"].startswith("interrupted by SIGTERM"), d["error"]
    assert got.get(SLOW, {}).get("status") in ("interrupted", "ok"), [(r["name"], r["status"]) for r in rows]
    assert got["baseline"]["decode_ms_per_token"] is None  # stopped before the timing finished
    assert not os.path.exists(os.path.join(out, ".torchslim.lock"))
    # The same command resumes: the settled row reused, the interrupted recipe tried again and timed.
    assert cli.main(args + ["--out", out]) == 0
    assert "resuming the unfinished run" in capsys.readouterr().err
    again = {r["name"]: r for r in json.load(open(os.path.join(out, "results.json")))["recipes"]}
    assert any("reused from the interrupted run" in n for n in again[SETTLED]["notes"])
    assert again[SLOW]["status"] in ("ok", "chosen", "rejected") and again[SLOW]["decode_ms_per_token"]
    assert not os.path.exists(os.path.join(out, ".torchslim.lock"))

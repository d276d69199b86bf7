"""torchslim against what users would pick instead: FP32 eager, torchslim's chosen recipe, torchao's
INT8 configs, PyTorch's own eager INT8, ONNX Runtime (FP32, INT8 dynamic, INT8 static QDQ) and
OpenVINO (default precision, FP32, NNCF INT8), on each benchmark model at batch 1 and a large batch.

    make bench-peers                                   # everything, into BENCHMARKS.md (.venv-peers)
    make bench-peers PEERS_ARGS=--quick                # 4 batch-1 cases, few rounds: under 10 minutes
    .venv-peers/bin/python benchmarks/peers/run.py --cases resnet18-b1,lstm-b1 --rounds 5

Per case, two processes: torchslim's `optimize` search (it chooses the recipe), then one process
that prepares every method and times them all interleaved. A method that fails is a row with its
error; a method that kills its process is skipped on a retry and listed as crashed.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from benchmarks.peers import cases  # noqa: E402

PACKAGES = ("torch", "torchao", "transformers", "onnx", "onnxscript", "onnxruntime", "openvino", "nncf")
RETRIES = 3  # crashed methods skipped per case before giving up on it
QUICK_SAMPLES = (8, 32)  # --quick: calibration and held-out samples per case


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"cases {', '.join(cases.QUICK)}; 3 rounds; no task metric; "
                        "8 calibration and 32 held-out samples")
    p.add_argument("--cases", help=f"comma-separated case ids (default: all): {', '.join(c.id for c in cases.CASES)}")
    p.add_argument("--rounds", type=int, help="interleaved timing rounds (default 10, quick 3)")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--recipes", help="torchslim recipes to search: 'all' (every candidate, no budget), 'suite' "
                                     "(the hand-kept list in benchmarks/peers/search.py) or comma-separated names "
                                     "(default: optimize's default search, what a user gets)")
    p.add_argument("--no-task-metric", action="store_true", help="torchslim chooses by output cosine only (faster)")
    p.add_argument("--skip", default="", help="comma-separated methods to leave out")
    p.add_argument("--only", default="", help="comma-separated methods to run (FP32 eager always runs)")
    p.add_argument("--settle-ms", type=float, default=100.0,
                   help="pause before each method's turn in the timing rounds, so other engines' threads sleep (default 100)")
    p.add_argument("--write", help="replace the peers section (between its markers) of this markdown file")
    p.add_argument("--json", help="also write all results as JSON here")
    p.add_argument("--from-json", help="re-render a --json file (e.g. after adding to why.py) instead of measuring")
    p.add_argument("--case-timeout", type=float, default=3600, help="seconds per case process (default 3600)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--search", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--progress", help=argparse.SUPPRESS)
    p.add_argument("--recipe-json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 10)
    args.task_metric = not (args.no_task_metric or args.quick)
    return args


def _search_recipes(args, case: cases.Case) -> tuple[str, ...] | None:
    from benchmarks.peers.search import DEFAULT, RECIPES

    if args.recipes == "all":
        return None
    if args.recipes == "suite":
        return RECIPES
    if args.recipes:
        return tuple(args.recipes.split(","))
    return DEFAULT


def _child(args) -> int:
    """In the case process: time every method, write the result JSON."""
    from benchmarks.peers.suite import run_case

    def progress(msg: str) -> None:
        with open(args.progress, "a") as f:
            f.write(msg + "\n")

    recipe = json.load(open(args.recipe_json)) if args.recipe_json and os.path.exists(args.recipe_json) else None
    result = run_case(cases.BY_ID[args.child], threads=args.threads, rounds=args.rounds,
                      target_round_ms=30.0 if args.quick else 60.0, warmup=2 if args.quick else 3, recipe=recipe,
                      task_metric=args.task_metric, max_samples=QUICK_SAMPLES if args.quick else None,
                      settle_ms=args.settle_ms,
                      skip=_list(args.skip), only=_list(args.only), progress=progress)
    with open(args.out, "w") as f:
        json.dump(result, f, default=str)
    return 0


def _search(args) -> int:
    from benchmarks.peers.search import search

    case = cases.BY_ID[args.search]
    found = search(case, recipes=_search_recipes(args, case), rounds=max(3, args.rounds),
                   threads=args.threads, task_metric=args.task_metric, max_samples=QUICK_SAMPLES if args.quick else None)
    with open(args.out, "w") as f:
        json.dump(found, f, default=str)
    return 0


def _list(s: str) -> tuple[str, ...]:
    return tuple(x for x in (s or "").split(",") if x)


def _spawn(args, role: str, case_id: str, tmp: str, extra: list[str]) -> tuple[int, str, str]:
    """Run one child; echo its progress lines; return (exit code, output json path, last log line)."""
    out, prog, log = (os.path.join(tmp, f"{role}-{case_id}.{ext}") for ext in ("json", "progress", "log"))
    for p in (out, prog):
        if os.path.exists(p):
            os.unlink(p)
    cmd = [sys.executable, os.path.abspath(__file__), f"--{role}", case_id, "--out", out, "--progress", prog,
           "--threads", str(args.threads), "--rounds", str(args.rounds), "--settle-ms", str(args.settle_ms)] + extra
    cmd += ["--quick"] if args.quick else []
    cmd += ["--no-task-metric"] if not args.task_metric else []
    cmd += ["--recipes", args.recipes] if args.recipes else []
    seen, t0 = 0, time.monotonic()
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
        while True:
            try:
                code = proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                code = None
                if time.monotonic() - t0 > args.case_timeout:
                    proc.kill()
                    proc.wait()
                    code = -9
            seen = _echo(prog, seen)
            if code is not None:
                break
    return code, out, _last_line(log) if code != 0 else ""


def _echo(path: str, seen: int) -> int:
    if not os.path.exists(path):
        return seen
    lines = open(path).read().splitlines()
    for line in lines[seen:]:
        print(f"   {line}", file=sys.stderr, flush=True)
    return len(lines)


def _last_line(path: str) -> str:
    """The last line of a child's log that reads like an error ('' if none does)."""
    marks = ("Error", "error:", "Fatal", "Segmentation", "Abort", "Killed", "Traceback")
    lines = [ln.strip() for ln in open(path, errors="replace").read().splitlines()]
    errs = [ln for ln in lines if any(m in ln for m in marks) and not ln.startswith(("W1", "WARNING"))]
    return errs[-1][:240] if errs else ""


def _started(prog: str) -> str | None:
    """The method a crashed case process was working on (the last one it started)."""
    if not os.path.exists(prog):
        return None
    lines = [ln for ln in open(prog).read().splitlines() if ln]
    return lines[-1] if lines and ":" not in lines[-1] else None


def run_one(args, case: cases.Case, tmp: str) -> tuple[dict | None, str]:
    wanted = "torchslim" not in _list(args.skip) and (not args.only or "torchslim" in _list(args.only))
    recipe_json = os.path.join(tmp, f"search-{case.id}.json")
    if wanted:
        print(f"== {case.id}: torchslim search", file=sys.stderr, flush=True)
        code, recipe_json, err = _spawn(args, "search", case.id, tmp, [])
    if not wanted or code != 0:
        with open(recipe_json, "w") as f:
            json.dump({"error": f"search process failed (exit {code}) {err}".strip() if wanted else "not run"}, f)
    found = json.load(open(recipe_json))
    print(f"   chose {found.get('chosen')} ({found.get('search_s', 0):.0f} s)" + (f"; {found['error']}" if found.get("error") else ""),
          file=sys.stderr, flush=True)
    print(f"== {case.id}: methods", file=sys.stderr, flush=True)
    skip, crashed = list(_list(args.skip)), []
    for _ in range(RETRIES + 1):
        extra = ["--recipe-json", recipe_json] + (["--skip", ",".join(skip)] if skip else [])
        extra += ["--only", args.only] if args.only else []
        code, out, err = _spawn(args, "child", case.id, tmp, extra)
        if code == 0:
            result = json.load(open(out))
            result["rows"] += crashed
            return result, ""
        culprit = _started(os.path.join(tmp, f"child-{case.id}.progress"))
        if not culprit or culprit == "timing" or culprit in skip:
            return None, f"case process failed (exit {code}) during {culprit or 'set-up'}" + (f": {err}" if err else "")
        from benchmarks.peers.suite import METHODS  # importing suite registers every method

        m = next((m for m in METHODS if m.name == culprit), None)
        crashed.append({"method": culprit, "engine": m.engine if m else "?", "precision": m.precision if m else "?",
                        "status": "failed", "error": f"crashed the process (exit {code})" + (f": {err}" if err else ""),
                        "notes": []})
        skip.append(culprit)
        print(f"   {culprit} crashed the process; retrying without it", file=sys.stderr, flush=True)
    return None, "too many crashes"


def _meta(args, total_s: float, failed: list) -> dict:
    import torch

    from torchslim import device as dev

    info = dev.describe(torch.device("cpu"))
    versions = {"Python": info["python"]}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    chosen = ",".join(c.id for c in _cases(args))
    mode = "quick: " + chosen if args.quick else ("cases " + chosen if args.cases else "full")
    if not args.task_metric:
        mode += "; torchslim judged by output cosine only"
    return {"command": "python benchmarks/peers/run.py " + " ".join(a for a in sys.argv[1:]),
            "date": datetime.date.today().isoformat(), "mode": mode, "rounds": args.rounds,
            "target_round_ms": 30.0 if args.quick else 60.0, "total_s": total_s, "cpu": info.get("cpu"),
            "cpu_count": info["cpu_count"], "amx": ", ".join(info["amx"]), "versions": versions,
            "threads": args.threads, "settle_ms": args.settle_ms, "failed_cases": failed}


def _cases(args) -> list[cases.Case]:
    if args.cases:
        unknown = [c for c in _list(args.cases) if c not in cases.BY_ID]
        if unknown:
            raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(cases.BY_ID)}")
        return [cases.BY_ID[c] for c in _list(args.cases)]
    return [cases.BY_ID[c] for c in cases.QUICK] if args.quick else list(cases.CASES)


def main(argv=None) -> int:
    args = _args(argv)
    if args.child:
        return _child(args)
    if args.search:
        return _search(args)
    from benchmarks.peers import table
    from benchmarks.peers.why import WHY

    if args.from_json:
        saved = json.load(open(args.from_json))
        results, meta = saved["results"], saved["meta"]
    else:
        t0, results, failed = time.perf_counter(), [], []
        with tempfile.TemporaryDirectory(prefix="peers-run-") as tmp:
            for case in _cases(args):
                result, err = run_one(args, case, tmp)
                if result is None:
                    failed.append((case.title, err))
                    print(f"   case failed: {err}", file=sys.stderr, flush=True)
                else:
                    results.append(result)
        meta = _meta(args, time.perf_counter() - t0, failed)
    text = table.render(results, meta, WHY)
    if args.json and not args.from_json:
        from torchslim.fileio import write_json

        write_json(args.json, {"meta": meta, "results": results})
    if args.write:
        table.write_section(args.write, text)
    print(text)
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())

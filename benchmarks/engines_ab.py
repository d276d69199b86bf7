"""Does an engine model alive in the same process disturb FP32 eager's timing? (issue 14)

optimize() times engine recipes (ONNX Runtime, OpenVINO, AOTInductor) round-robin with PyTorch in
one process, with no pause between turns. That is only honest if no engine's idle worker threads
are still busy while PyTorch is timed (and the reverse). One process, the Fashion-MNIST CNN at
batch 1 (the case where per-call overhead shows most; --model lstm: the peer suite's LSTM), 2 threads; A/B(/C) blocks:

  A: measure.interleaved({eager, eager copy})                       (PyTorch alone)
  B: measure.interleaved({eager, eager copy, ort, openvino})          (torchslim's engine settings)
  C: measure.interleaved({eager, eager copy, ort with spinning on})  (--with-spinning: ORT's default)

and the ratio of eager's median in B (and C) to A, per block pair. With ORT's spinning on (its default),
C's eager rows are expected to suffer; with torchslim's settings (B: spinning off) they must not.

    PYTHONPATH=. python benchmarks/engines_ab.py [--pairs 4] [--with-spinning] [--settle 50]

--settle 50 answers the question the search's timing asks since the settle pause (measure.SETTLE_MS):
with a 50 ms pause and one untimed call before each turn, does a spinning ORT still disturb eager?
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys

import torch

from torchslim import measure
from torchslim.recipes import Recipe, apply
from torchslim.techniques import Context, OpenVinoConfig, OrtConfig


def _fn(model, example):
    def call():
        with torch.no_grad():
            return example(model)
    return call


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch and engine threads (default 2)")
    p.add_argument("--model", choices=("fashion", "lstm"), default="fashion",
                   help="fashion: the Fashion-MNIST CNN (trained and cached on first use); lstm: benchmarks/models.py's LSTM")
    p.add_argument("--with-spinning", action="store_true", help="also time B with an ORT session that spins (ORT's default)")
    p.add_argument("--settle", type=float, default=0.0,
                   help="ms pause + one untimed call before each turn (the search uses measure.SETTLE_MS with engines)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)  # the engines read torch's count when they are built
    if args.model == "fashion":
        from torchslim.examples import fashion_mnist

        wl = fashion_mnist.workload(1)
    else:
        import os

        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from benchmarks import models
        from torchslim import Example, Workload

        model, x = models.lstm(1)
        wl = Workload(model=model, example=Example((x,)))
    ex = wl.example
    ctx = Context(device=torch.device("cpu"), example=ex)
    eager, eager2 = wl.model.eval(), copy.deepcopy(wl.model).eval()
    engines = {"ort": apply(copy.deepcopy(wl.model), Recipe((OrtConfig(),)), ctx),
               "openvino": apply(copy.deepcopy(wl.model), Recipe((OpenVinoConfig(),)), ctx)}
    blocks = {"A": {}, "B": engines}
    if args.with_spinning:
        spin = copy.deepcopy(engines["ort"])
        spin.meta = dict(spin.meta, config_entries={})  # ORT's default: spinning on
        spin.__setstate__(spin.__getstate__())
        blocks["C"] = {"ort-spinning-on": spin}
    rows = []
    for i in range(args.pairs):
        row = {"pair": i}
        for block, extra in blocks.items():
            got = measure.interleaved({"eager": _fn(eager, ex), "eager-copy": _fn(eager2, ex),
                                       **{n: _fn(m, ex) for n, m in extra.items()}}, rounds=args.rounds,
                                      settle_ms=args.settle)
            row[f"{block}_eager_ms"] = statistics.median(got["eager"] + got["eager-copy"])
            row.update({f"{block}_{n}_ms": statistics.median(got[n]) for n in extra})
        row["B_over_A"] = row["B_eager_ms"] / row["A_eager_ms"]
        if "C_eager_ms" in row:
            row["C_over_A"] = row["C_eager_ms"] / row["A_eager_ms"]
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    for key in ("B_over_A", "C_over_A"):
        ratios = [r[key] for r in rows if key in r]
        if ratios:
            print(f"eager {key}: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) over {len(ratios)} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

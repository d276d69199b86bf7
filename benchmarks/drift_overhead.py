"""Latency overhead of torchslim.drift.DriftMonitor on the static INT8 Fashion-MNIST CNN.

The monitor answers one call in `every` with its observing graph (compiled like the model), so
its mean overhead is (t_observed / t_model - 1) / every. Both are measured: the medians of an
observed and a plain call, interleaved (robust on a busy machine), and the mean latency of the
monitored model against the bare one, interleaved (the real thing, but needs a quiet machine).

    python benchmarks/drift_overhead.py                  # batch 64 and 1, every 100 and 64
    python benchmarks/drift_overhead.py --batch 1 --every 100 --rounds 5
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, nargs="+", default=[64, 1])
    p.add_argument("--every", type=int, nargs="+", default=[100, 64])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()

    import torch

    from torchslim import measure
    from torchslim.drift import DriftMonitor
    from torchslim.examples import fashion_mnist as fm
    from torchslim.recipes import Recipe, apply
    from torchslim.techniques import Context, InferenceModeConfig, StaticInt8Config

    with measure.num_threads(args.threads):
        print("| batch | every | model median ms | observed call median ms | overhead from medians | model mean ms "
              "| monitored mean ms | overhead (means) |")
        print("|---|---|---|---|---|---|---|---|")
        for batch in args.batch:
            wl = fm.workload(batch)
            ctx = Context(device=torch.device("cpu"), example=wl.example, calibration=wl.calibration)
            model = apply(copy.deepcopy(wl.model), Recipe((StaticInt8Config(), InferenceModeConfig())), ctx)
            x = wl.example.args[0]
            with torch.no_grad():
                model(x)  # compile
            for every in args.every:
                monitor = DriftMonitor(model, every=every, baseline=[wl.example])  # compiles the observing graph
                # 1) An observed call against a plain one, interleaved: robust medians.
                pair = measure.interleaved({"model": lambda: model(x), "observed": lambda: monitor._observe_call(x)},
                                           rounds=args.rounds)
                t_model, t_obs = statistics.median(pair["model"]), statistics.median(pair["observed"])
                # 2) The monitor as served: `every` calls of each per round, one observed call per round.
                fns = {"model": lambda: model(x), "monitored": lambda: monitor(x)}
                samples = measure.interleaved(fns, rounds=args.rounds, target_round_ms=every * t_model, max_iters=every)
                mm, mb = statistics.fmean(samples["monitored"]), statistics.fmean(samples["model"])
                print(f"| {batch} | {every} | {t_model:.3f} | {t_obs:.3f} | {100 * (t_obs / t_model - 1) / every:+.2f}% | "
                      f"{mb:.3f} | {mm:.3f} | {100 * (mm / mb - 1):+.1f}% |", flush=True)


if __name__ == "__main__":
    main()

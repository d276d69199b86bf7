"""The search respects the user's time (issue 13) and knows when its timing cannot be trusted
(issue 16, item 1): hardware detection, hardware skips, early rejection, time budget, cache,
calibration reuse, noisy timing. Small real models; counts are of real calls (spies, not mocks)."""
import copy
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import tiny_models
from torchslim import OptimizeConfig, load_model, optimize
from torchslim import device as dev
from torchslim.inputs import Example
from torchslim.recipes import Recipe, apply, by_name, candidates, missing_hardware
from torchslim.techniques import Context, StaticInt8Config, StaticInt8FxConfig, TechniqueConfig
from torchslim.techniques import static_int8, static_int8_fx
from torchslim.techniques.base import register
from torchslim.workload import Workload

CPU = torch.device("cpu")
# This project's hosts: one with AMX and native BF16, one with AVX-512 VNNI only (issue 13's host).
AMX_FLAGS = ("fpu sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx_vnni avx512_bf16 avx512_fp16 "
             "amx_tile amx_bf16 amx_int8")
VNNI_FLAGS = "fpu sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni"


@pytest.fixture
def cpu_flags(monkeypatch):
    """Detection reads TORCHSLIM_CPU_FLAGS instead of this CPU (what tests and no-AMX trials use)."""
    def use(flags: str):
        monkeypatch.setenv(dev.FLAGS_ENV, flags)
        dev.cpu_flags.cache_clear()

    yield use
    monkeypatch.delenv(dev.FLAGS_ENV, raising=False)
    dev.cpu_flags.cache_clear()


def _config(tmp_path, **kw):
    return OptimizeConfig(rounds=3, target_round_ms=10, out=str(tmp_path), **kw)


def _deep_mlp():
    """40 tiny Linear+ReLU layers at batch 1: Python overhead rules, so TorchScript freezing wins
    clearly (2.2x in an interleaved A/B on the loaded 2-core dev host)."""
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(40) for m in (nn.Linear(16, 16), nn.ReLU())]).eval()


# -- hardware ---------------------------------------------------------------------------------------

def test_capabilities_from_flags_with_and_without_amx(tmp_path):
    amx = dev.Capabilities.from_flags(AMX_FLAGS.split(), cores=2)
    assert amx.avx2 and amx.avx512 and amx.vnni and amx.amx_int8 and amx.amx_bf16 and amx.bf16
    assert amx.tier() == "amx" and amx.to_dict()["bf16"] is True and amx.cores == 2
    vnni = dev.Capabilities.from_flags(VNNI_FLAGS.split(), cores=2)
    assert vnni.avx512 and vnni.vnni and not vnni.bf16 and not vnni.fp16 and not vnni.amx
    assert vnni.tier() == "vnni"
    # A saved /proc/cpuinfo works as well as a flag list.
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Xeon\nflags\t\t: {VNNI_FLAGS}\n")
    assert dev.parse_flags(info.read_text()) == frozenset(VNNI_FLAGS.split())


def test_bf16_is_not_claimed_where_it_is_emulated(cpu_flags, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(f"flags\t\t: {VNNI_FLAGS}\n")
    cpu_flags(str(info))
    assert not dev.supports_bf16(CPU)  # although oneDNN would emulate it on this AVX-512 CPU
    machine = dev.describe(CPU)
    assert machine["bf16"] is False and machine["capabilities"]["tier"] == "vnni"
    names = [r.name for r in candidates(CPU)]
    assert "bf16-cast" in names  # listed, so that the search can say why it is skipped
    assert "no native BF16" in missing_hardware(by_name(["bf16-cast"], CPU)[0], CPU)
    assert missing_hardware(by_name(["dynamic-int8"], CPU)[0], CPU) is None
    cpu_flags(AMX_FLAGS)
    assert dev.supports_bf16(CPU) and missing_hardware(by_name(["bf16-cast"], CPU)[0], CPU) is None


def test_missing_hardware_skips_with_the_reason_unless_named(cpu_flags, tmp_path):
    cpu_flags(VNNI_FLAGS)
    wl = Workload(model=_deep_mlp(), example=Example((torch.randn(1, 16),)), name="deep-mlp")
    run = optimize(wl, _config(tmp_path / "a", time_budget=1e-6), progress=False)
    rows = {r.name: r for r in run.recipes}
    for name in ("bf16-cast", "bf16-autocast", "bf16-cast+compile", "int8-weight-only+compile"):
        assert rows[name].status == "skipped" and "no native BF16" in rows[name].reason, rows[name].reason
    assert run.to_dict()["machine"]["capabilities"]["bf16"] is False
    named = optimize(wl, _config(tmp_path / "b", recipes=("bf16-cast",)), progress=False)
    assert named.recipes[1].status != "skipped"  # named in --recipes: tried, emulated or not


# -- early rejection --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SleepyConfig(TechniqueConfig):
    """A deliberately slow technique: every call sleeps `ms` more (registered for these tests)."""

    name = "test_sleepy"
    ms: float = 3.0


class _Sleepy(nn.Module):
    def __init__(self, inner, ms):
        super().__init__()
        self.inner, self.ms = inner, ms

    def forward(self, *a):
        time.sleep(self.ms / 1000)
        return self.inner(*a)


register(SleepyConfig)(lambda model, cfg, ctx: _Sleepy(model, cfg.ms))


def test_a_slower_recipe_is_rejected_before_the_task_metric(tmp_path):
    model, x = _deep_mlp(), torch.randn(1, 16)
    calls = []

    def evaluate(m):
        calls.append(1)
        return {"agreement": 100.0 * float(torch.cosine_similarity(m(x), model(x)).mean())}

    wl = Workload(model=model, example=Example((x,)), evaluate=evaluate, metric="agreement", name="deep-mlp")
    slow = Recipe((SleepyConfig(),))
    run = optimize(wl, _config(tmp_path, recipes=(slow, "torchscript-freeze")), progress=False)
    row = run.recipes[1]
    assert row.name == "test_sleepy" and row.status == "rejected" and "early check" in row.reason
    assert row.metrics is None and row.early["ci95"][1] < 1.0 and row.fallback is None
    assert len(calls) == 2  # the baseline and torchscript-freeze; never the slow recipe


# -- time budget ------------------------------------------------------------------------------------

def test_budget_exhaustion_skips_the_rest_and_still_chooses(tmp_path):
    wl = Workload(model=_deep_mlp(), example=Example((torch.randn(1, 16),)), name="deep-mlp")
    run = optimize(wl, _config(tmp_path, recipes=("torchscript-freeze", "inference-mode", "dynamic-int8"),
                               time_budget=1e-6), progress=False)
    assert run.recipes[1].name == "torchscript-freeze" and run.recipes[1].status == "chosen"
    for r in run.recipes[2:]:
        assert r.status == "skipped" and r.reason.startswith("time budget"), r.reason
    assert run.chosen == "torchscript-freeze" and (tmp_path / "model").is_dir()
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["search"]["time_budget_min"] == 1e-6 and on_disk["search"]["phases_s"]["total"] > 0


def test_order_puts_likely_winners_first(cpu_flags):
    from torchslim import priors
    from torchslim.recipes import ordered

    cpu_flags(AMX_FLAGS)
    conv = [r.name for r in ordered(candidates(CPU), tiny_models.cnn(), CPU)]
    assert conv[0].startswith("static-int8-ts") and conv.index("static-int8") < conv.index("compile")
    cpu_flags(VNNI_FLAGS)
    assert priors.patterns("transformer", "vnni")[0] == "fast-transformer"
    cpu_flags("fpu sse2 avx avx2 fma")  # an AVX2-only EPYC: PT2E static INT8 led there
    assert dev.capabilities(CPU).tier() == "avx2"
    assert [r.name for r in ordered(candidates(CPU), tiny_models.cnn(), CPU)][0] == "static-int8"
    # an AMD EPYC with AVX-512 VNNI + native BF16 and no AMX: the engines' INT8 led every case there
    cpu_flags(VNNI_FLAGS + " avx512_bf16")
    assert dev.capabilities(CPU).tier() == "avx512_bf16" and dev.supports_bf16(CPU)
    for model in (tiny_models.cnn(), tiny_models.LSTMNet()):
        assert [r.name for r in ordered(candidates(CPU), model, CPU)][0] == "openvino-int8"
    assert priors.model_kind(nn.TransformerEncoderLayer(16, 2)) == "transformer"
    assert priors.model_kind(tiny_models.LSTMNet()) == "recurrent"


# -- cache ------------------------------------------------------------------------------------------

def test_cache_hit_and_fresh(tmp_path, monkeypatch):
    from torchslim.cli import main

    monkeypatch.setenv("TORCHSLIM_SEARCH_CACHE", str(tmp_path / "cache"))
    args = ["optimize", "--model", "tiny_models:mlp", "--input-shape", "8x64", "--recipes", "torchscript-freeze,inference-mode",
            "--rounds", "2", "--no-progress"]

    def results(out):
        return json.loads((out / "results.json").read_text())

    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    first = results(tmp_path / "a")
    assert not any(r.get("cached") for r in first["recipes"]) and len(os.listdir(tmp_path / "cache")) == 1
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    second = results(tmp_path / "b")
    assert all(r["cached"] == first["created"] for r in second["recipes"])
    assert [r["timing"] for r in second["recipes"]] == [r["timing"] for r in first["recipes"]]
    assert second["chosen"] == first["chosen"] and second["search"]["from_cache"] == first["created"]
    if second["chosen"]:
        assert (tmp_path / "b" / "model").is_dir()  # the chosen recipe is applied again and saved
    assert main(args + ["--out", str(tmp_path / "c"), "--fresh"]) == 0
    assert not any(r.get("cached") for r in results(tmp_path / "c")["recipes"])
    assert main(args + ["--out", str(tmp_path / "d"), "--threads", "1"]) == 0  # threads are in the key
    assert not any(r.get("cached") for r in results(tmp_path / "d")["recipes"])


# -- calibration once -------------------------------------------------------------------------------

@pytest.fixture
def calibration_passes(monkeypatch):
    """Counts real calibration passes (each calls the real static_int8.calibrate)."""
    count = []
    real = static_int8.calibrate

    def spy(*a, **kw):
        count.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(static_int8, "calibrate", spy)
    monkeypatch.setattr(static_int8_fx, "calibrate", spy)
    return count


def _calibrated_cnn():
    model = tiny_models.cnn()
    gen = torch.Generator().manual_seed(1)
    batches = [Example((torch.randn(2, 3, 16, 16, generator=gen),)) for _ in range(4)]
    return model, Example((torch.randn(2, 3, 16, 16, generator=gen),)), (lambda: batches)


def test_calibration_is_reused_by_the_sensitivity_rankings(calibration_passes):
    from torchslim.sensitivity import make_probe

    model, example, calibration = _calibrated_cnn()
    ctx = Context(device=CPU, example=example, calibration=calibration)
    with static_int8.calibration_cache():
        apply(copy.deepcopy(model), Recipe((StaticInt8Config(),)), ctx)
        make_probe(copy.deepcopy(model), StaticInt8Config(), ctx)
        make_probe(copy.deepcopy(model), StaticInt8FxConfig(), ctx)  # ranked on the same PT2E graph
    assert len(calibration_passes) == 1
    make_probe(copy.deepcopy(model), StaticInt8Config(), ctx)  # outside the search: calibrates anew
    assert len(calibration_passes) == 2


def test_search_fallback_does_not_recalibrate_for_its_ranking(tmp_path, calibration_passes):
    model, example, calibration = _calibrated_cnn()
    wl = Workload(model=model, example=example, calibration=calibration, name="cnn")
    run = optimize(wl, _config(tmp_path, recipes=("static-int8",), min_cosine=0.9999999, early_reject=False), progress=False)
    fallback = run.recipes[1].fallback
    assert fallback and "ranking" in fallback, fallback
    retries = len(fallback.get("attempts") or [])
    assert len(calibration_passes) == 1 + retries  # the recipe, then one per real retry; none to rank


def test_under_a_budget_the_fallback_waits_for_the_fresh_candidates(tmp_path):
    model, example, calibration = _calibrated_cnn()
    wl = Workload(model=model, example=example, calibration=calibration, name="cnn")
    kw = dict(recipes=("static-int8", "torchscript-freeze"), min_cosine=0.9999999, early_reject=False)
    run = optimize(wl, _config(tmp_path / "a", time_budget=30, **kw), progress=False)
    names = [r.name for r in run.recipes]
    assert names[1:3] == ["static-int8", "torchscript-freeze"], names  # the fresh candidate first
    assert run.recipes[1].status == "rejected" and "ranking" in run.recipes[1].fallback
    assert all(n.startswith("static-int8") for n in names[3:]), names  # then the retry, if any
    run = optimize(wl, _config(tmp_path / "b", time_budget=1e-6, **kw), progress=False)
    assert run.recipes[2].status == "skipped" and run.recipes[2].reason.startswith("time budget")
    assert "time budget is spent" in run.recipes[1].fallback["result"], run.recipes[1].fallback



def test_a_ranking_that_would_outlast_the_budget_is_not_started():
    """A recipe without a shared calibration (an engine's INT8, torchao's) ranks layers with one
    quantized copy each: under a budget, the fallback is left out when those copies would take
    longer than what is left (the peer suite's MiniLM search spent 10 minutes on it)."""
    from torchslim.results import RecipeResult
    from torchslim.search.config import Budget
    from torchslim.search.fallback import why_not
    from torchslim.techniques import WeightOnlyConfig

    recipe = Recipe((WeightOnlyConfig(),))
    res = RecipeResult(name="int8-weight-only", steps=recipe.to_list(), status="rejected", reason="outputs drifted")
    res.prepare_s = 16.0
    config = OptimizeConfig(time_budget=1.5)
    thirty_s_in = time.perf_counter() - 30.0
    budget = Budget.of(config, start=thirty_s_in)
    assert budget.seconds == 90.0 and budget.deadline == thirty_s_in + 90.0 and not budget.over()
    why = why_not(recipe, res, config, budget, layers=37)
    assert why and "37 x 16 s = 592 s" in why and "60 s left" in why, why
    assert why_not(recipe, res, config, budget, layers=3) is None  # 48 s fits
    for unlimited in (OptimizeConfig(exhaustive=True), OptimizeConfig(time_budget=0)):
        b = Budget.of(unlimited, start=thirty_s_in)
        assert b.unlimited and b.deadline is None and b.left() is None and not b.over()
        assert why_not(recipe, res, unlimited, b, layers=37) is None

# -- noisy timing (issue 16, item 1) ----------------------------------------------------------------

class _Jittery(nn.Module):
    """A model whose latency is heavy-tailed noise (a stand-in for a machine other work keeps busy)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.rng = random.Random(0)

    def forward(self, x):
        time.sleep(0.002 * self.rng.lognormvariate(0.0, 1.0))
        return self.lin(x)


def test_noisy_timing_is_unreliable_not_a_rejection(tmp_path):
    # A process burning a core beside a model whose latency is heavy-tailed noise. (A burning
    # *thread* would hold the GIL and make every call wait one switch interval: steady, not noisy.)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        wl = Workload(model=_Jittery(), example=Example((torch.randn(4, 8),)), name="jittery")
        run = optimize(wl, OptimizeConfig(rounds=2, target_round_ms=0.1, out=str(tmp_path), recipes=("inference-mode",),
                                          early_reject=False), progress=False)
    finally:
        burner.kill()
        burner.wait()
    m = run.measurement
    assert m["reliable"] is False and "unreliable" in m["why"] and m["baseline_spread"] > 1.25, m
    assert m["rounds"] > 2  # rounds were added before giving up
    row = run.recipes[1]
    assert row.status in ("inconclusive", "chosen", "ok") and "slower" not in row.reason, row.reason
    if row.status == "inconclusive":
        assert "measurement unreliable" in row.reason
    from torchslim.report import format_table

    assert "measurement unreliable" in format_table(run.to_dict())


def test_time_budget_must_not_be_negative():
    from torchslim import SlimError

    with pytest.raises(SlimError, match="--time-budget"):
        OptimizeConfig(time_budget=-1)
    assert OptimizeConfig(time_budget=0).time_budget == 0  # 0: no limit


# -- spending the budget by expected gain (issue 27) ------------------------------------------------

def _rows(*rows):
    return [{"name": "baseline", "status": "baseline", "speedup": None, "reason": ""}] + [
        {"name": n, "status": st, "speedup": sp, "reason": why} for n, st, sp, why in rows]


def test_a_fast_rejected_int8_recipe_moves_its_fallback_and_the_accuracy_aware_engines_ahead():
    """The issue-27 CNN: ort-int8-static rejected at 5.55x, bf16-cast+compile accepted at 2.82x; the
    fallback of the first and the NNCF recipes now come before the float recipes left."""
    from torchslim.search import gain
    rows = _rows(("ort-int8-static", "rejected", 5.55, "min cosine 0.9807 < 0.99 on held-out inputs"),
                 ("static-int8-ts", "rejected", 2.59, "min cosine 0.971 < 0.99"),
                 ("bf16-cast+compile", "ok", 2.82, ""))
    pending = [{"kind": "recipe", "name": n, "accuracy_aware": n.startswith("openvino-int8")}
               for n in ("ort", "torchscript-freeze", "compile", "openvino-int8", "openvino-int8-ac")]
    pending += [{"kind": "fallback", "name": n, "from": n} for n in ("ort-int8-static", "static-int8-ts")]
    new, why = gain.rerank(pending, rows)
    assert [gain.label(p) for p in new] == [
        "fallback of ort-int8-static", "openvino-int8", "openvino-int8-ac",  # ceilings 5.55x, tied: fallback first
        "ort", "torchscript-freeze", "compile", "fallback of static-int8-ts"], new  # 2.59x < 2.82x: stays behind
    assert why and "2.82x" in why and "ort-int8-static measured 5.55x" in why and "accuracy-aware" in why, why
    # nothing accepted yet, or the rejected one barely faster than the accepted: the priors order stands
    assert gain.rerank(pending, rows[:3]) == (pending, None)
    close = _rows(("ort-int8-static", "rejected", 3.2, "min cosine"), ("bf16-cast+compile", "ok", 2.82, ""))
    assert gain.rerank(pending, close) == (pending, None)
    # a recipe rejected as slower than the baseline says nothing about the accuracy-aware ones
    slow = _rows(("openvino", "ok", 1.1, ""), ("static-int8", "rejected", 1.5, "slower than the baseline in the early check"))
    new, _ = gain.rerank([{"kind": "recipe", "name": "compile"}, {"kind": "recipe", "name": "openvino-int8", "accuracy_aware": True}], slow)
    assert [p["name"] for p in new] == ["compile", "openvino-int8"]


def test_accuracy_aware_is_declared_by_the_technique_config_not_by_a_recipe_name():
    """search/gain.py reads the flag the loop copies from the recipe's steps (TechniqueConfig.accuracy_aware)."""
    import torch
    from torchslim import recipes
    flagged = {r.name for r in recipes.candidates(torch.device("cpu")) if any(s.accuracy_aware for s in r.steps)}
    assert flagged and all(n.startswith("openvino-int8") for n in flagged), flagged
    assert not any(s.accuracy_aware for r in recipes.candidates(torch.device("cpu"))
                   for s in r.steps if s.name.startswith(("static", "ort", "dynamic")))


def test_what_more_time_would_buy_is_estimated_from_this_runs_trials():
    from torchslim.search import gain
    untried = [{"kind": "recipe", "name": "openvino-int8"}, {"kind": "fallback", "name": "ort-int8-static", "from": "ort-int8-static"}]
    more = gain.more_time(untried, {"ort-int8-static": 40.0, "compile": 10.0}, 1.5)
    # openvino-int8: the INT8 family's mean trial (40 s); the fallback: 3 x its recipe's 40 s
    assert more["seconds"] == 160.0 and more["time_budget_min"] == 4.5, more
    assert more["candidates"] == ["openvino-int8", "the fallback of ort-int8-static"]
    assert more["line"] == ("--time-budget 4.5 would also try openvino-int8 and the fallback of ort-int8-static: "
                            "about 3 more minutes (estimated from this run's trials)"), more["line"]
    assert gain.more_time([], {}, 1.5) is None
    many = gain.more_time([{"kind": "recipe", "name": f"r{i}"} for i in range(7)], {}, 1.5)  # 7 x 20 s by default
    assert many["seconds"] == 140.0 and many["line"].startswith("--time-budget 4 would also try r0, r1, r2, r3 and 3 more: "), many


def test_a_run_cut_by_its_budget_says_what_more_time_would_buy(tmp_path):
    from torchslim.report import format_table
    wl = Workload(model=_deep_mlp(), example=Example((torch.randn(1, 16),)), name="deep-mlp")
    run = optimize(wl, _config(tmp_path, recipes=("torchscript-freeze", "inference-mode", "dynamic-int8"),
                               time_budget=1e-6), progress=False)
    search = json.loads((tmp_path / "results.json").read_text())["search"]
    assert search["order_used"] == ["torchscript-freeze", "inference-mode", "dynamic-int8"], search
    assert search["more_time"]["candidates"] == ["inference-mode", "dynamic-int8"], search["more_time"]
    line = search["more_time"]["line"]
    assert line.startswith("--time-budget ") and "would also try inference-mode and dynamic-int8: about " in line, line
    assert search["more_time"]["seconds"] > 0 and search["trial_s"]["torchscript-freeze"] > 0
    assert line in format_table(run)


@pytest.mark.slow
def test_the_loop_tries_a_fast_rejected_recipes_fallback_before_the_float_recipes_left(tmp_path):
    """A real search under a budget: ort-int8-static, rejected on a cosine it cannot reach, ran many
    times faster than the accepted inference-mode (48x vs 1.0x on the loaded 2-core dev host), so its
    fallback comes before channels_last instead of after it."""
    pytest.importorskip("onnxruntime")
    from torchslim.search import gain
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 512)).eval()
    gen = torch.Generator().manual_seed(1)
    batches = [Example((torch.randn(32, 512, generator=gen),)) for _ in range(4)]
    wl = Workload(model=model, example=Example((torch.randn(32, 512, generator=gen),)), calibration=lambda: batches, name="mlp")
    run = optimize(wl, _config(tmp_path, recipes=("inference-mode", "ort-int8-static", "channels_last"),
                               min_cosine=0.9999999, time_budget=5), progress=False)
    rows = {r.name: r for r in run.recipes}
    fast, accepted = rows["ort-int8-static"], rows["inference-mode"]
    assert fast.status == "rejected" and accepted.early["speedup"] * gain.MARGIN < fast.early["speedup"], (fast, accepted)
    search = json.loads((tmp_path / "results.json").read_text())["search"]
    assert search["order_used"] == ["inference-mode", "ort-int8-static", "fallback of ort-int8-static", "channels_last"], search
    assert len(search["reordered"]) == 1 and "fallback of ort-int8-static (ort-int8-static measured" in search["reordered"][0]
    assert search["order"] == ["inference-mode", "ort-int8-static", "channels_last"]  # the priors/--recipes order, kept

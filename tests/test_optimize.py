"""optimize() end to end through the Python API on small real models."""
import json
import os

import pytest
import torch

import tiny_models
import torchslim
from torchslim import OptimizeConfig, SlimError, load_model, optimize
from torchslim.inputs import Example
from torchslim.workload import Workload

FAST = ("inference-mode", "bf16-cast", "dynamic-int8", "torchscript-freeze")


def _config(tmp_path, **kw):
    return OptimizeConfig(rounds=3, target_round_ms=10, out=str(tmp_path), **kw)


def test_results_are_complete_and_never_choose_a_slower_or_broken_recipe(tmp_path):
    wl = load_model("tiny_models:mlp", input_shape="32x64")
    run = optimize(wl, _config(tmp_path, recipes=FAST), progress=False)
    names = [r.name for r in run.recipes]
    assert names == ["baseline", *FAST]
    for r in run.recipes:
        assert r.status in ("baseline", "chosen", "ok", "rejected", "failed", "skipped", "inconclusive")
        if r.status == "rejected" and "early check" in r.reason:  # never reached the final timing
            assert r.early["speedup"] == r.speedup < 1.0 and r.early["ci95"][1] < 1.0 and r.metrics is None
        else:
            assert r.timing and r.timing["median_ms"] > 0 and r.size_bytes > 0
        if r.status in ("chosen", "ok"):
            assert r.speedup > 1.0 and r.fidelity["min_cosine"] >= 0.99
        if r.status in ("rejected", "failed", "skipped", "chosen"):
            assert r.reason
    chosen = [r for r in run.recipes if r.status == "chosen"]
    assert len(chosen) == (1 if run.chosen else 0)
    if run.chosen:
        ok_times = [r.timing["median_ms"] for r in run.recipes if r.status in ("ok", "chosen")]
        assert chosen[0].timing["median_ms"] == min(ok_times)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in on_disk["recipes"]] == names
    assert on_disk["machine"]["torch"] == torch.__version__ and on_disk["machine"]["torch_threads"] >= 1
    assert (tmp_path / "report.html").stat().st_size > 1000


def test_thresholds_reject_with_reasons(tmp_path):
    wl = load_model("tiny_models:mlp", input_shape="32x64")
    run = optimize(wl, _config(tmp_path, recipes=("bf16-cast", "dynamic-int8"), min_cosine=0.9999999,
                                        early_reject=False), progress=False)  # a slower recipe would be rejected as that first
    for r in run.recipes[1:]:
        assert r.status == "rejected" and "min cosine" in r.reason
    assert run.chosen is None and not (tmp_path / "model").exists()


def test_task_metric_drop_rejects(tmp_path):
    model = tiny_models.mlp()
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)

    def evaluate(m):  # a strict, real metric: agreement with the FP32 outputs, in "points"
        return {"closeness": -1e4 * float((m(x) - ref).abs().mean())}

    wl = Workload(model=model, example=Example((x,)), name="strict", evaluate=evaluate, metric="closeness")
    run = optimize(wl, _config(tmp_path, recipes=("inference-mode", "dynamic-int8"), max_drop=0.5, early_reject=False), progress=False)
    base, im, q = run.recipes
    assert base.metrics["closeness"] == 0.0
    assert im.metric_drop == pytest.approx(0.0, abs=1e-6)
    assert q.status == "rejected" and "closeness dropped" in q.reason


@pytest.mark.parametrize("recipe", ["dynamic-int8", "bf16-cast", "compile"])
def test_saved_model_reloads_with_identical_outputs(tmp_path, recipe):
    wl = load_model("tiny_models:mlp", input_shape="64x64")
    run = optimize(wl, _config(tmp_path, recipes=(recipe,), min_cosine=0.9), progress=False)
    if run.chosen is None:  # too small to be faster on a busy machine: force the save path directly
        torchslim.save(str(tmp_path / "model"), wl.model, torchslim.Recipe.from_list(run.recipes[1].steps), wl.example,
                       spec=wl.spec, reference_output=None)
    model = torchslim.load(str(tmp_path / "model"))
    fresh = torchslim.apply(load_model("tiny_models:mlp", input_shape="64x64").model, torchslim.Recipe.from_list(run.recipes[1].steps), wl.example)
    with torch.no_grad():
        a, b = wl.example(model), wl.example(fresh)
    assert torch.equal(a, b)
    if run.chosen:
        assert (tmp_path / "reproduce.py").read_text().count("torchslim.load(") == 1


def test_reload_refuses_a_tampered_model(tmp_path):
    wl = load_model("tiny_models:mlp", input_shape="8x64")
    steps = torchslim.Recipe((torchslim.InferenceModeConfig(),))
    with torch.no_grad():
        ref = wl.example(wl.model)
    torchslim.save(str(tmp_path), wl.model, steps, wl.example, spec=wl.spec, reference_output=-ref)
    with pytest.raises(SlimError, match="does not reproduce"):
        torchslim.load(str(tmp_path))


def test_wrong_input_shape_is_one_clear_error_and_results_are_kept(tmp_path):
    wl = load_model("tiny_models:mlp", input_shape="8x65")
    with pytest.raises(SlimError, match="raised RuntimeError on example inputs") as e:
        optimize(wl, _config(tmp_path), progress=False)
    assert "--input-shape" in e.value.fix
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["error"] and saved["recipes"][0]["name"] == "baseline"


def test_model_raising_in_forward(tmp_path):
    wl = load_model("tiny_models:raises", input_shape="2x4")
    with pytest.raises(SlimError, match="this model always fails"):
        optimize(wl, _config(tmp_path), progress=False)


def test_inapplicable_recipe_is_skipped_not_failed(tmp_path):
    wl = load_model("tiny_models:mlp", input_shape="4x64")
    run = optimize(wl, _config(tmp_path, recipes=("channels_last",)), progress=False)
    assert run.recipes[1].status == "skipped" and "Conv2d" in run.recipes[1].reason


def test_unknown_recipe_and_bad_config():
    wl = load_model("tiny_models:mlp", input_shape="4x64")
    with pytest.raises(SlimError, match="unknown or unavailable recipe"):
        optimize(wl, OptimizeConfig(recipes=("warp-speed",)), progress=False)
    with pytest.raises(SlimError, match="objective"):
        OptimizeConfig(objective="vibes")
    with pytest.raises(SlimError, match="max-drop"):
        OptimizeConfig(max_drop=-1)


def test_a_saved_model_that_does_not_reload_in_a_fresh_process_is_not_chosen(tmp_path, monkeypatch):
    # Two measured rows, dynamic-int8 ahead of ort under the objective: dynamic-int8's folder rebuilds
    # the architecture from a spec that only works in this process, so its real save fails the real
    # fresh-process reload; the ORT engine file loads by itself and is chosen instead.
    import copy

    from torchslim.fidelity import compare
    from torchslim.measure import Timing
    from torchslim.recipes import apply, by_name
    from torchslim.results import RecipeResult, RunResult
    from torchslim.search.output import save_chosen
    from torchslim.techniques import Context

    monkeypatch.setattr(tiny_models, "THIS_PROCESS_ONLY", True)
    wl = load_model("tiny_models:mlp_this_process_only", input_shape="8x64")
    cpu, ex = torch.device("cpu"), wl.example
    base = RecipeResult("baseline", [], status="baseline", size_bytes=342_000, speedup=1.0)
    run = RunResult(workload={}, machine={}, config={}, recipes=[base])
    models = {}
    for recipe, ms in zip(by_name(["dynamic-int8", "ort"], cpu), (1.0, 2.0)):
        models[recipe.name] = model = apply(copy.deepcopy(wl.model), recipe, Context(device=cpu, example=ex))
        run.recipes.append(RecipeResult(recipe.name, recipe.to_list(), speedup=3.0 / ms, size_bytes=100_000,
                                        fidelity=compare(ex(wl.model), ex(model)),
                                        timing=Timing(5, ms, ms, ms, 0.0, 0.0, (ms, ms))))
    chosen = save_chosen(run, base, models, wl, ex, _config(tmp_path))
    rows = {r.name: r for r in run.recipes}
    assert rows["dynamic-int8"].status == "failed", rows["dynamic-int8"].reason
    assert "does not reload" in rows["dynamic-int8"].reason and "THIS_PROCESS_ONLY is not set" in rows["dynamic-int8"].reason
    assert chosen is rows["ort"] and run.chosen == "ort" and rows["ort"].status == "chosen"
    assert run.artifact == str(tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / "torchslim.json").read_text())
    assert manifest["recipe_name"] == "ort"
    assert [c["name"] for c in manifest["candidates"]] == ["ort"] and manifest["candidates"][0]["speedup"] == 1.5
    assert manifest["host"]["cores"] == os.cpu_count() and set(manifest["host"]["decisive_flags"]) == {"amx", "avx512_vnni", "avx512_bf16", "avx512f"}
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".model")]  # no staging folder left
    torchslim.load(str(tmp_path / "model"))


@pytest.mark.slow
def test_the_chosen_aoti_package_reloads_in_a_fresh_process(tmp_path):
    # torch.export records the model's output structure (a registered dataclass here, a ModelOutput
    # for transformers' models); whatever is chosen must reload where that module is not imported.
    import subprocess
    import sys

    wl = load_model("tiny_models:custom_output", input_shape="1x64")
    run = optimize(wl, _config(tmp_path, recipes=("aoti",), early_reject=False), progress=False)
    aoti = run.recipes[1]
    # exported over engines.FlatOutputs (a tuple of tensors), the package reloads where Scores is unknown
    assert aoti.status != "failed", aoti.reason
    assert aoti.status == "chosen" or "slower" in aoti.reason, aoti.reason  # its speed depends on the host's load
    if run.chosen is None:
        return
    code = f"import torchslim; torchslim.load({str(tmp_path / 'model')!r}); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)})
    assert proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr[-2000:]


def test_load_warns_in_one_line_when_the_decisive_cpu_features_differ(tmp_path, monkeypatch, capsys):
    from torchslim import artifacts
    from torchslim import device as dev
    from torchslim.recipes import Recipe
    from torchslim.techniques.inference_mode import InferenceModeConfig

    model, ex = tiny_models.mlp(), Example((torch.randn(4, 64),))
    monkeypatch.setenv(dev.FLAGS_ENV, "avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile")  # a Sapphire Rapids
    dev.cpu_flags.cache_clear()
    try:
        artifacts.save(str(tmp_path / "m"), model, Recipe((InferenceModeConfig(),)), ex, spec="tiny_models:mlp",
                       reference_output=ex(model))
        torchslim.load(str(tmp_path / "m"))
        assert capsys.readouterr().err == ""  # the same host: nothing to say
        monkeypatch.setenv(dev.FLAGS_ENV, "avx2 fma")  # an AVX2-only server
        dev.cpu_flags.cache_clear()
        torchslim.load(str(tmp_path / "m"))
    finally:
        monkeypatch.delenv(dev.FLAGS_ENV)
        dev.cpu_flags.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("torchslim: warning: this CPU lacks amx, avx512_vnni, avx512_bf16, avx512f"), err

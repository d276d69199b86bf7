"""Engine recipes (AOTInductor, ONNX Runtime, OpenVINO) on tiny real models: fidelity, output
structure, save/load round trips, rejection of a broken engine result, and the AOTInductor package
served in a fresh process without torchslim. Skipped where the engine's extra is not installed."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

import torchslim
from torchslim import artifacts, engines
from torchslim.fidelity import compare
from torchslim.inputs import Example
from torchslim.recipes import Recipe, apply
from torchslim.techniques import (
    AotiConfig, Context, OpenVinoConfig, OpenVinoInt8Config, OrtConfig, OrtStaticInt8Config,
)

from tiny_models import lstm

needs_ort = pytest.mark.skipif(engines.missing("onnxruntime", "onnx") is not None, reason="install torchslim[onnxruntime]")
needs_ov = pytest.mark.skipif(engines.missing("openvino", "nncf") is not None, reason="install torchslim[openvino]")


class TinyEncoder(nn.Module):
    """A 2-layer Transformer encoder returning a dict (the engines must give the same structure back)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        h = self.enc(x)
        return {"hidden": h, "logits": self.head(h[:, 0])}


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


def _case(name):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model, shape = {"cnn": (SmallCNN, (2, 3, 12, 12)), "encoder": (TinyEncoder, (2, 10, 32)), "lstm": (lstm, (2, 8, 32))}[name]
    model = model().eval()
    example = Example((torch.randn(shape, generator=gen),))
    batches = [Example((torch.randn(shape, generator=gen),)) for _ in range(8)]
    return model, example, (lambda: batches)


def _apply(model, cfg, example, calibration):
    ctx = Context(device=torch.device("cpu"), example=example, calibration=calibration)
    return apply(copy.deepcopy(model), Recipe((cfg,)), ctx), ctx


# (config, smallest per-sample cosine): FP32 is exact up to float reordering, OpenVINO's default may
# run in BF16; static INT8 of a random-weight model is held to SQNR >= 20 dB and cosine >= 0.98.
ENGINE_RECIPES = [
    pytest.param(OrtConfig(), 0.99999, marks=needs_ort, id="ort"),
    pytest.param(OrtStaticInt8Config(), 0.98, marks=needs_ort, id="ort-int8-static"),
    pytest.param(OpenVinoConfig(), 0.999, marks=needs_ov, id="openvino"),
    pytest.param(OpenVinoInt8Config(), 0.98, marks=needs_ov, id="openvino-int8"),
]


@pytest.mark.parametrize("name", ["cnn", "encoder", "lstm"])
@pytest.mark.parametrize("cfg,min_cos", ENGINE_RECIPES)
def test_engine_recipe_keeps_outputs_and_structure(name, cfg, min_cos):
    model, example, calib = _case(name)
    slim, ctx = _apply(model, cfg, example, calib)
    with torch.no_grad():
        ref, out = example(model), example(slim)
    assert type(out) is type(ref) and (not isinstance(ref, dict) or list(out) == list(ref))
    fid = compare(ref, out)
    assert fid.finite and fid.min_cosine >= min_cos and fid.sqnr_db >= 20, (cfg.label(), fid)
    assert isinstance(slim, engines.EngineModule) and any("thread" in n for n in ctx.notes)


def test_seven_bit_int8_where_the_cpu_lacks_vnni(monkeypatch):
    from torchslim import device as dev

    for flags, seven in (("fpu sse2 avx avx2 fma", True), ("avx2 avx512f avx512_vnni", False), ("avx2 avx_vnni", False)):
        monkeypatch.setenv(dev.FLAGS_ENV, flags)
        dev.cpu_flags.cache_clear()
        assert dev.seven_bit_int8() is seven and dev.seven_bit_int8(not seven) is (not seven)
    monkeypatch.delenv(dev.FLAGS_ENV)
    dev.cpu_flags.cache_clear()


@needs_ort
def test_ort_dynamic_int8_and_threads_and_spinning():
    model, example, calib = _case("encoder")
    torch.set_num_threads(1)
    try:
        slim, _ = _apply(model, OrtConfig(quantize="dynamic"), example, None)
    finally:
        torch.set_num_threads(2)
    assert slim.meta["threads"] == 1 and slim.meta["config_entries"]["session.intra_op.allow_spinning"] == "1"
    with torch.no_grad():
        assert compare(example(model), example(slim)).min_cosine >= 0.99


@needs_ov
def test_openvino_fp32_runs_in_fp32_with_torchslims_threads():
    model, example, _ = _case("lstm")
    cfg = OpenVinoConfig(precision="fp32")
    ctx = Context(device=torch.device("cpu"), example=example)
    from torchslim.techniques.base import handler

    reason = handler(cfg).applies(model, cfg, ctx)
    if reason:  # a CPU without BF16: the default already is FP32, and this recipe says so
        assert "already is FP32" in reason
        return
    slim, _ = _apply(model, cfg, example, None)
    assert slim.meta["runs_in"] == "f32" and slim.meta["config"]["INFERENCE_NUM_THREADS"] == torch.get_num_threads()
    with torch.no_grad():
        assert compare(example(model), example(slim)).min_cosine >= 0.99999


@pytest.mark.parametrize("cfg", [pytest.param(OrtStaticInt8Config(), marks=needs_ort, id="ort-int8-static"),
                                 pytest.param(OpenVinoConfig(), marks=needs_ov, id="openvino")])
def test_saved_engine_file_reloads_with_identical_outputs(tmp_path, cfg):
    model, example, calib = _case("encoder")
    slim, _ = _apply(model, cfg, example, calib)
    with torch.no_grad():
        out = example(slim)
    folder = str(tmp_path / "model")
    artifacts.save(folder, model, Recipe((cfg,)), example, spec=None, reference_output=out, optimized=slim)
    manifest = artifacts.read_manifest(folder)
    assert manifest["engine"]["files"][0] in os.listdir(folder) and os.path.isfile(os.path.join(folder, "engine.json"))
    again = torchslim.load(folder)  # no architecture needed: the engine file is the model
    with torch.no_grad():
        out2 = example(again)
    assert all(torch.equal(out[k], out2[k]) for k in out)


@needs_ort
def test_broken_engine_result_is_rejected_and_failures_are_rows(tmp_path):
    """Static INT8 calibrated on inputs 1000x too small clips every activation: optimize must
    reject it on fidelity; a model ONNX cannot export is a failed row, not a crash."""
    model, example, _ = _case("cnn")
    tiny = [example.map(lambda t: t * 1e-3)] * 4
    wl = torchslim.Workload(model=model, example=example, calibration=lambda: tiny)
    run = torchslim.optimize(wl, torchslim.OptimizeConfig(recipes=("ort-int8-static", "ort"), rounds=1, threads=2), progress=False)
    by = {r.name: r for r in run.recipes}
    assert by["ort-int8-static"].status == "rejected" and "drifted" in by["ort-int8-static"].reason
    assert by["ort"].status in ("ok", "chosen", "rejected") and by["ort"].fidelity["min_cosine"] > 0.9999
    # the sensitivity fallback retried it with layers in float (skip= -> nodes_to_exclude)
    retry = by["ort-int8-static-skip"]
    assert retry.steps[0]["skip"] and retry.fallback["attempts"] and retry.status != "failed", (retry.status, retry.reason)

    class Unexportable(nn.Module):
        def forward(self, x):
            return torch.linalg.svdvals(x)  # no ONNX op (either exporter) computes it

    wl = torchslim.Workload(model=Unexportable(), example=Example((torch.randn(2, 3, 3),)))
    run = torchslim.optimize(wl, torchslim.OptimizeConfig(recipes=("ort",), rounds=1), progress=False)
    assert run.recipes[1].status == "failed" and "ONNX export failed" in run.recipes[1].reason


@needs_ort
@pytest.mark.parametrize("batch", [2, 1])
def test_engine_recipe_serves_other_batch_sizes_and_passes_validation(batch):
    """The export keeps the batch dynamic (exported at batch 2 where the example has batch 1), so
    validation's other-batch check (batch 1, or 2 for a batch-1 example) passes."""
    model, _, _ = _case("cnn")
    example = Example((torch.randn(batch, 3, 12, 12),))
    run = torchslim.optimize(torchslim.Workload(model=model, example=example),
                             torchslim.OptimizeConfig(recipes=("ort",), rounds=1, threads=2, save_model=False, early_reject=False), progress=False)
    row = run.recipes[1]
    assert row.status in ("ok", "chosen"), (row.status, row.reason)
    # the session is built inside the memory measurement: its arenas and weights count (not 0 B)
    assert row.peak_memory_bytes > 0 and any(n.startswith("peak memory: the engine's session") for n in row.notes)
    assert row.validation["shapes"] == "other shapes checked"
    assert any(c["kind"] == "shape" and c["result"] == "ok" for c in row.validation["checks"])
    assert any("dynamic batch" in n for n in row.notes)


@needs_ort
def test_static_engine_export_says_which_batch_it_serves():
    """A model that bakes its batch size in exports static; the row says so and a call at another
    batch is an error naming the shape, not a wrong answer."""

    class FixedBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):  # the same math at every batch size, but export specializes on the branch
            return self.lin(x) if x.shape[0] == 2 else self.lin(x).clone()

    example = Example((torch.randn(2, 3, 4),))
    run = torchslim.optimize(torchslim.Workload(model=FixedBatch().eval(), example=example),
                             torchslim.OptimizeConfig(recipes=("ort",), rounds=1, threads=2, save_model=False, early_reject=False), progress=False)
    row = run.recipes[1]
    assert any("serves batch 2 only" in n for n in row.notes), row.notes
    assert row.status == "rejected" and row.validation["shapes"] == "example shape only", (row.status, row.reason)
    assert "works only at the example's shape" in row.reason


@needs_ort
def test_torchscript_onnx_exporter_keeps_the_batch_dynamic(tmp_path):
    from torchslim.engines.ort import export_onnx_with, onnx_input_shapes

    model, example, _ = _case("cnn")
    path = str(tmp_path / "m.onnx")
    export_onnx_with(model, example, {0: "batch"}, path, dynamo=False)
    (shape,) = onnx_input_shapes(path)
    assert isinstance(shape[0], str) and shape[1:] == (3, 12, 12)


@pytest.mark.parametrize("cfg", [pytest.param(OrtStaticInt8Config(skip=("net.2",)), marks=needs_ort, id="ort-int8-static"),
                                 pytest.param(OpenVinoInt8Config(skip=("net.2",)), marks=needs_ov, id="openvino-int8")])
def test_engine_int8_keeps_a_skipped_conv_in_float(cfg):
    """`skip` (what the sensitivity fallback sets) maps module names to ONNX nodes (nodes_to_exclude)
    or OpenVINO ops (nncf ignored_scope): that Conv's weight stays float in the engine graph."""
    model, example, calib = _case("cnn")
    slim, ctx = _apply(model, cfg, example, calib)
    assert ctx.details[cfg.name]["float"] == ["net.2"] and set(ctx.details[cfg.name]["quantized"]) == {"net.0", "net.6"}
    if isinstance(cfg, OrtStaticInt8Config):
        import onnx

        graph = onnx.load_from_string(slim.file("model.onnx")).graph
        made_by = {o: n.op_type for n in graph.node for o in n.output}
        weight_from = {n.name: made_by.get(n.input[1], "initializer") for n in graph.node if n.op_type == "Conv"}
        assert sorted(weight_from.values()) == ["DequantizeLinear", "initializer"], weight_from
    else:
        import numpy as np
        import openvino as ov

        ir = ov.Core().read_model(slim.file("model.xml").decode(), ov.Tensor(np.frombuffer(slim.file("model.bin"), dtype=np.uint8)))
        convs = {op.get_friendly_name().split("/")[0]: {i.get_source_output().get_node().get_type_name() for i in op.inputs()}
                 for op in ir.get_ops() if op.get_type_name() == "Convolution"}
        assert "FakeQuantize" in convs["__module.net.0"] and "FakeQuantize" not in convs["__module.net.2"], convs
    with torch.no_grad():
        assert compare(example(model), example(slim)).min_cosine >= 0.98


def test_absent_engine_is_a_skip_that_names_the_extra():
    assert engines.missing("torch") is None
    assert engines.missing("no_such_engine_xyz") == "install torchslim[no_such_engine_xyz] (no no_such_engine_xyz here)"
    assert engines.missing("openvino") in (None, "install torchslim[openvino] (no openvino here)")


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="AOTInductor needs a C++ compiler")
def test_aoti_package_serves_in_a_fresh_process_without_torchslim(tmp_path):
    model, example, _ = _case("cnn")
    slim, _ = _apply(model, AotiConfig(), example, None)
    with torch.no_grad():
        ref, out = example(model), example(slim)
    assert compare(ref, out).min_cosine >= 0.9999
    folder = str(tmp_path / "model")
    artifacts.save(folder, model, Recipe((AotiConfig(),)), example, spec=None, reference_output=out, optimized=slim)
    with torch.no_grad():
        assert torch.equal(example(torchslim.load(folder)), out)
        for n in (1, 5):  # the batch is dynamic in the package
            x = torch.randn(n, 3, 12, 12)
            assert compare(model(x), slim(x)).min_cosine >= 0.9999
    assert slim.meta["dynamic"] == ["batch"] and slim.meta["input_shapes"] == [[None, 3, 12, 12]]
    torch.save(example.args[0], tmp_path / "x.pt")
    code = textwrap.dedent(f"""
        import sys, torch
        model = torch._inductor.aoti_load_package({os.path.join(folder, "model.pt2")!r})
        with torch.no_grad():
            y = model(torch.load({str(tmp_path / "x.pt")!r}))
        torch.save(y, {str(tmp_path / "y.pt")!r})
        print(any(m.startswith("torchslim") for m in sys.modules))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300)
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stdout.strip() == "False"
    assert torch.equal(torch.load(tmp_path / "y.pt"), out)


@needs_ort
@pytest.mark.parametrize("name", ["cnn", "encoder"])
def test_ort_static_int8_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch, name):
    """ORT's symbolic shape inference saves a partial model with a weights-sized external data file
    into the cwd when it cannot finish (dynamic dimensions); none of it may land in the user's folder."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    def incomplete(*args, **kwargs):  # what ORT does on MiniLM's dynamic-shape graph
        for f in ("sym_shape_infer_temp.onnx", "0e0f512a-eb24-11f1-943e-02fc00000001.data"):
            open(f, "wb").close()
        raise Exception("Incomplete symbolic shape inference")

    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes", staticmethod(incomplete))
    monkeypatch.chdir(tmp_path)
    model, example, calib = _case(name)
    slim, _ = _apply(model, OrtStaticInt8Config(), example, calib)
    assert os.listdir(tmp_path) == [] and os.getcwd() == str(tmp_path)
    with torch.no_grad():
        assert compare(example(model), example(slim)).min_cosine >= 0.98


@needs_ort
def test_engine_folder_is_lean_unless_keep_float_and_lists_its_files(tmp_path):
    # The engine file loads by itself: no FP32 weights and no calibration inputs beside it by
    # default; --keep-float keeps both (compact) for rebuilding. Every file has its size, role, SHA-256.
    from torchslim import artifact_files

    model, example, calib = _case("cnn")
    slim, _ = _apply(model, OrtStaticInt8Config(), example, calib)
    with torch.no_grad():
        out = example(slim)
    lean, full = str(tmp_path / "lean"), str(tmp_path / "full")
    for folder, keep in ((lean, False), (full, True)):
        artifacts.save(folder, model, Recipe((OrtStaticInt8Config(),)), example, spec=None, reference_output=out,
                       calibration=calib(), optimized=slim, keep_float=keep)
    m = artifacts.read_manifest(lean)
    assert sorted(os.listdir(lean)) == sorted(["torchslim.json", "model.onnx", "engine.json", "example.pt", "reference.pt"])
    assert set(m["files"]) == set(os.listdir(lean)) - {"torchslim.json"}
    assert m["files"]["model.onnx"]["role"].startswith("serving") and len(m["files"]["model.onnx"]["sha256"]) == 64
    assert m["files"]["model.onnx"]["bytes"] == os.path.getsize(os.path.join(lean, "model.onnx"))
    assert m["calibration"] == {"batches": 8, "samples": 16, "source": None, "kept": False}
    assert {"weights.pt", "calibration.pt"} <= set(os.listdir(full)) and artifacts.read_manifest(full)["calibration"]["kept"]
    for folder in (lean, full):
        with torch.no_grad():
            assert torch.equal(example(torchslim.load(folder)), out)  # and verified against reference.pt
    assert any("model.onnx" in line and "serving" in line for line in artifact_files.table(m["files"]))


def test_calibration_is_stored_compactly_and_losslessly():
    from torchslim.artifact_files import pack, unpack

    pixels = torch.randint(0, 256, (512, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    images = ((pixels / 255.0 - 0.286) / 0.353)[:64]  # a view of a larger data set, normalized 8-bit pixels
    ids = torch.randint(0, 30522, (8, 128), generator=torch.Generator().manual_seed(1))
    noise = torch.randn(4, 1024, generator=torch.Generator().manual_seed(2))
    record = {"args": [images, ids], "kwargs": {"noise": noise, "flag": True}}
    packed = pack(record)
    assert packed["args"][0]["index"].dtype == torch.uint8 and packed["args"][1]["values"].dtype == torch.int32
    back = unpack(packed)
    for a, b in ((images, back["args"][0]), (ids, back["args"][1]), (noise, back["kwargs"]["noise"])):
        assert a.dtype == b.dtype and torch.equal(a, b)  # bit-identical: re-calibration gives the same ranges
    assert back["kwargs"]["flag"] is True
    import io
    buf = io.BytesIO()
    torch.save(packed, buf)
    assert len(buf.getvalue()) < images.numel() * 4 // 3 + ids.numel() * 4 + noise.numel() * 4 + 20_000

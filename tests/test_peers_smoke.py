"""The peer benchmark's report writer (benchmarks/peers/table.py): the per-case table, the
"where peers win" list derived from the numbers, and the replacement between BENCHMARKS.md's
markers. The rows are built the way benchmarks/peers/suite.py builds them: timings summarized by
torchslim.measure, fidelity computed by torchslim.fidelity on real output tensors. The engines
themselves (ONNX Runtime, OpenVINO) live in .venv-peers and are not needed here."""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.peers import table  # noqa: E402
from torchslim import measure  # noqa: E402
from torchslim.fidelity import compare  # noqa: E402


def _row(method, engine, precision, ref, out, samples_ms, base_ms=None, slim_ms=None):
    timing = measure.summarize(samples_ms).to_dict()
    row = {"method": method, "engine": engine, "precision": precision, "status": "ok", "notes": ["n"],
           "prep_s": 1.0, "shared_prep_s": 0.5, "first_call_ms": 1500.0, "size_bytes": 2_000_000,
           "fidelity": compare(ref, out).to_dict(), "timing": timing}
    if base_ms:
        row["vs_fp32"] = base_ms / timing["median_ms"]
    if slim_ms:
        row["vs_torchslim"] = slim_ms / timing["median_ms"]
    return row


def _result():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(64, 10, generator=gen)
    close = ref + 1e-3 * torch.randn(64, 10, generator=gen)
    broken = torch.randn(64, 10, generator=gen)  # unrelated outputs: cosine near 0
    base, slim = [10.0, 10.2, 9.9, 10.1, 10.0], [4.0, 4.1, 3.9, 4.0, 4.0]
    rows = [
        _row("fp32-eager", "PyTorch", "fp32", ref, ref, base, 10.0, 4.0),
        _row("torchslim", "torchslim", "bf16", ref, close, slim, 10.0, 4.0),
        _row("ort-int8-static-qdq", "ONNX Runtime", "int8-static", ref, close, [2.0, 2.1, 1.9, 2.0, 2.0], 10.0, 4.0),
        _row("openvino-nncf-int8", "OpenVINO", "int8-static", ref, broken, [1.0, 1.0, 1.1, 0.9, 1.0], 10.0, 4.0),
        _row("ort-fp32", "ONNX Runtime", "fp32", ref, ref, [8.0, 8.1, 7.9, 8.0, 8.0], 10.0, 4.0),
        {"method": "torch.ao-fx-static", "engine": "PyTorch (torch.ao)", "precision": "int8-static",
         "status": "failed", "error": "RuntimeError: symbolically traced variables cannot be used | as inputs",
         "notes": []},
    ]
    return {"case": "cnn-b1", "title": "A CNN, batch 1", "batch": 1, "rows": rows, "task_metric": False,
            "recipe": {"chosen": "bf16-cast+compile", "task_metric": None, "search_s": 12.0,
                       "tried": [{"name": "bf16-cast+compile", "status": "chosen"}]}}


META = {"command": "python benchmarks/peers/run.py --quick", "date": "2026-11-26", "mode": "quick", "rounds": 3,
        "target_round_ms": 30.0, "total_s": 120.0, "cpu": "Xeon", "cpu_count": 2, "amx": "amx_int8",
        "versions": {"torch": "2.13.0", "onnxruntime": "1.32.0"}, "threads": 2,
        "failed_cases": [("LSTM, batch 1", "case process failed (exit -9) during timing: killed")]}


def test_wins_say_by_how_much_and_why_and_exclude_broken_outputs():
    result = _result()
    won, broke = table.wins([result], {"cnn-b1/ort-int8-static-qdq": "QDQ folded into oneDNN INT8 convs"})
    assert len(won) == 1 and len(broke) == 1
    assert "`cnn-b1/ort-int8-static-qdq`" in won[0] and "**2.00x**" in won[0]
    assert "precision: int8-static vs torchslim's bf16" in won[0]
    assert "Why: QDQ folded into oneDNN INT8 convs" in won[0]
    assert "openvino-nncf-int8" in broke[0] and "< 0.99" in broke[0]
    # ort-fp32 is slower than torchslim: not a win; failed rows never are
    assert not any("ort-fp32" in w or "fx-static" in w for w in won + broke)


def test_render_has_one_row_per_method_and_failures_as_rows():
    text = table.render([_result()], META)
    assert text.startswith(table.BEGIN) and text.endswith(table.END)
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    methods = [ln.split("|")[1].strip() for ln in lines[1:]]
    assert methods == ["fp32-eager", "torchslim", "ort-int8-static-qdq", "openvino-nncf-int8", "ort-fp32",
                       "torch.ao-fx-static"]
    assert all(ln.count("|") == lines[0].count("|") for ln in lines)  # the failure's '|' did not split a cell
    assert "**failed**: RuntimeError: symbolically traced" in text
    assert "(broken)" in text and "1.5" in text  # prep = own + shared seconds
    assert "torchslim chose **bf16-cast+compile**" in text and "judged by output cosine only" in text
    assert "**case failed**: case process failed (exit -9)" in text
    assert "intra_op_num_threads=2" in text and "INFERENCE_NUM_THREADS=2" in text


def test_section_replaced_between_markers_only_and_appended_when_missing(tmp_path):
    section = table.render([_result()], META)
    doc = f"# Benchmarks\n\nintro\n\n{table.BEGIN}\nold table\n{table.END}\n\n## After\nkept\n"
    new = table.replace_section(doc, section)
    assert new.startswith("# Benchmarks\n\nintro\n\n" + table.BEGIN)
    assert new.endswith(table.END + "\n\n## After\nkept\n") and "old table" not in new
    assert table.replace_section(new, section) == new  # idempotent

    appended = table.replace_section("# Benchmarks\nno markers yet", section)
    assert appended == "# Benchmarks\nno markers yet\n\n" + section + "\n"

    path = tmp_path / "BENCHMARKS.md"
    path.write_text(doc)
    table.write_section(str(path), section)
    assert path.read_text() == new
    assert [p.name for p in tmp_path.iterdir()] == ["BENCHMARKS.md"]  # no temporary file left behind

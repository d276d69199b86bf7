"""Data-parallel training: two gloo processes under torchrun follow the single-process loss curve."""
import json
import os
import subprocess
import sys

import pytest
import torch

from torchslim import cli

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _args(out):
    # FP32 and a model without BatchNorm: with DDP averaging gradients, the only difference left is
    # the order of float sums. 1 epoch of the digits at global batch 64 = 22 steps.
    return ["train", "--model", "tiny_models:mlp", "--data", "digits", "--epochs", "1", "--batch-size", "64",
            "--amp", "fp32", "--out", str(out), "--threads", "1", "--no-progress"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_two_gloo_processes_match_one_process_at_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(_args(one)) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE]), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "torchslim", *_args(two)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "(2 processes)" in p.stdout  # rank 0 alone prints the summary
    a = json.loads((one / "summary.json").read_text())
    b = json.loads((two / "summary.json").read_text())
    assert a["world_size"] == 1 and b["world_size"] == 2
    assert len(a["history"]) == len(b["history"]) == 22
    assert b["history"] == pytest.approx(a["history"], rel=1e-4)  # per-step loss over the global batch
    assert a["history"][-1] < 0.8 * a["history"][0]  # and it is a real, falling loss curve
    wa = torch.load(one / "model.pt", weights_only=True)
    wb = torch.load(two / "model.pt", weights_only=True)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)

"""Training: AMP building blocks, the reference loop, checkpoints that survive SIGKILL, bad input.

Real data throughout (scikit-learn's digits: 1437 training / 360 test images), small models.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim import cli
from torchslim import device as dev
from torchslim.errors import SlimError
from torchslim.training import amp, checkpoint, data
from torchslim.training.loop import TrainConfig, fit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# A real MLP for the digits; in training mode each forward also sleeps 20 ms, so a run lasts long
# enough (88 steps, ~2 s) for the test to kill it between two checkpoints.
PACED = textwrap.dedent("""
    import time
    import torch
    import torch.nn as nn

    class Paced(nn.Module):
        def __init__(self, hidden=128):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 10))

        def forward(self, x):
            if self.training:
                time.sleep(0.02)
            return self.net(x)

    def build():
        torch.manual_seed(0)
        return Paced()

    def wider():
        torch.manual_seed(0)
        return Paced(hidden=96)
""")


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 10))


# -- AMP building blocks -------------------------------------------------------------------------

def test_auto_precision_follows_the_hardware():
    a = amp.choose("auto", "cpu")
    assert a.precision == ("bf16" if dev.supports_bf16(torch.device("cpu")) else "fp32")
    assert not a.scales_gradients and not a.scaler().is_enabled()  # BF16/FP32 need no loss scaling
    fp16 = amp.choose("fp16", "cpu")
    assert fp16.scales_gradients and fp16.scaler().is_enabled()
    with pytest.raises(SlimError, match="unknown precision"):
        amp.choose("fp8", "cpu")


def test_bf16_autocast_runs_matmuls_in_bf16_and_trains_as_well_as_fp32(digits):
    train, test = digits
    bf16 = amp.choose("bf16", "cpu")
    with bf16.autocast():
        assert (torch.randn(4, 8) @ torch.randn(8, 4)).dtype == torch.bfloat16
    with amp.choose("fp32", "cpu").autocast():
        assert (torch.randn(4, 8) @ torch.randn(8, 4)).dtype == torch.float32
    results = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, precision=precision)
        results[precision] = fit(_mlp(), train, cfg, test_set=test, progress=False)
    for r in results.values():
        assert r.test_accuracy >= 90.0, r.epochs  # digits: a linear model gets ~95 %
        assert all(p.dtype == torch.float32 for p in r.model.parameters())  # weights stay FP32
    assert abs(results["bf16"].test_accuracy - results["fp32"].test_accuracy) <= 3.0
    assert results["bf16"].precision == "bf16" and results["fp32"].precision == "fp32"


def test_fp16_with_gradient_scaler_trains(digits):
    """FP16 on CPU is emulated (slow) but the scaler path is the one CUDA uses: it must train."""
    train, test = digits
    r = fit(_mlp(), train, TrainConfig(epochs=2, batch_size=64, lr=3e-3, precision="fp16"), test_set=test, progress=False)
    assert r.precision == "fp16" and r.test_accuracy >= 85.0


def test_compare_measures_step_time_and_memory_against_fp32(digits):
    x, y = data.take(digits[0], range(256))
    got = amp.compare(_mlp(), (x, y), lambda out, t: F.cross_entropy(out.float(), t), precisions=("fp32", "bf16"),
                      rounds=2, warmup=1)
    for p in ("fp32", "bf16"):
        assert got[p]["median_ms"] > 0 and got[p]["n"] >= 2 and got[p]["peak_bytes"] >= 0
        assert got[p]["speedup_vs_fp32"] > 0
    assert got["fp32"]["speedup_vs_fp32"] == 1.0


# -- checkpoints ---------------------------------------------------------------------------------

def _train_args(spec, out, *extra):
    return ["train", "--model", spec, "--data", "digits", "--epochs", "2", "--batch-size", "32",
            "--checkpoint-every", "10", "--out", str(out), "--threads", "1", "--no-progress", *extra]


def test_sigkilled_run_resumes_to_the_same_result(tmp_path):
    factory = tmp_path / "paced.py"
    factory.write_text(PACED)
    spec = f"{factory}:build"
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert cli.main(_train_args(spec, ref)) == 0

    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "torchslim", *_train_args(spec, run)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt_file, killed_at = run / "checkpoint.pt", None
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if ckpt_file.exists():
            step = checkpoint.read(str(ckpt_file))["progress"]["step"]
            if step >= 20:  # mid-epoch 1 (44 steps per epoch): kill it now
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-way: {proc.stderr.read().decode()[-2000:]}"
    saved = checkpoint.read(str(ckpt_file))["progress"]
    assert killed_at <= saved["step"] < 88 and saved["step_in_epoch"] > 0
    assert not (run / "model.pt").exists()  # it never finished

    assert cli.main(_train_args(spec, run)) == 0  # the same command resumes
    a = json.loads((ref / "summary.json").read_text())
    b = json.loads((run / "summary.json").read_text())
    assert b["resumed_from"] == saved["step"] and a["resumed_from"] is None
    assert b["steps"] == a["steps"] == 88
    assert b["test_accuracy"] == a["test_accuracy"]
    assert b["history"] == pytest.approx(a["history"], rel=1e-6)
    wa = torch.load(ref / "model.pt", weights_only=True)
    wb = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoint_holds_what_resuming_needs(tmp_path, digits):
    out = tmp_path / "ck"
    fit(_mlp(), digits[0], TrainConfig(epochs=1, batch_size=64, checkpoint_every=5, precision="fp32"),
        out=str(out), progress=False)
    state = checkpoint.read(str(out / "checkpoint.pt"))
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "progress", "settings", "rng"}
    assert state["progress"]["epoch"] == 1 and state["progress"]["step"] == 22 and len(state["progress"]["history"]) == 22
    assert state["settings"]["batch_size"] == 64 and state["settings"]["train_samples"] == 1437
    assert state["optimizer"]["state"]  # AdamW moments
    assert [f for f in os.listdir(out) if f.endswith(".tmp")] == []


# -- bad input -----------------------------------------------------------------------------------

def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    out = tmp_path / "nan"
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e30, schedule="constant", checkpoint_every=1, precision="fp32")
    with pytest.raises(SlimError, match=r"loss became (nan|inf) at step 2 .*last good checkpoint \(step 1\)") as e:
        fit(_mlp(), digits[0], cfg, out=str(out), progress=False)
    assert "lower the learning rate" in e.value.fix
    state = checkpoint.read(str(out / "checkpoint.pt"))
    assert state["progress"]["step"] == 1 and all(map(lambda v: v == v, state["progress"]["history"]))


@pytest.mark.parametrize("model, dataset, message", [
    ("tiny_models:mlp", "digits-images", r"shaped \(2, 1, 8, 8\)"),  # MLP wants [N, 64]
    ("tiny_models:cnn", "digits", r"shaped \(2, 64\)"),  # 3-channel CNN
])
def test_dataset_that_does_not_fit_the_model_is_refused(tmp_path, capsys, model, dataset, message):
    code = cli.main(["train", "--model", model, "--data", dataset, "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "does not accept the training set's inputs" in err
    import re

    assert re.search(message, err), err


def test_labels_beyond_the_model_outputs_are_refused(tmp_path, capsys):
    f = tmp_path / "five.py"
    f.write_text("import torch.nn as nn\ndef build():\n    return nn.Linear(64, 5)\n")
    assert cli.main(["train", "--model", f"{f}:build", "--data", "digits", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "labels go up to 9 but the model outputs 5 class scores" in capsys.readouterr().err


def test_corrupt_truncated_or_mismatched_checkpoints_are_refused(tmp_path, capsys):
    factory = tmp_path / "paced.py"
    factory.write_text(PACED.replace("time.sleep(0.02)", "pass"))
    out = tmp_path / "run"
    args = _train_args(f"{factory}:build", out)
    args[args.index("--epochs") + 1] = "1"
    assert cli.main(args) == 0
    good = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()

    (out / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    assert cli.main(args) == 2
    assert "is corrupt or unreadable" in capsys.readouterr().err

    (out / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    assert cli.main(args) == 2
    assert "is corrupt or unreadable" in capsys.readouterr().err

    (out / "checkpoint.pt").write_bytes(good)
    other = [a.replace(":build", ":wider") for a in args]
    assert cli.main(other) == 2
    assert "does not match this model (shape mismatch: net.0.weight (128, 64) vs (96, 64)" in capsys.readouterr().err

    torch.save({"weights": torch.zeros(2)}, out / "checkpoint.pt")
    assert cli.main(args) == 2
    assert "is not a torchslim training checkpoint" in capsys.readouterr().err
    assert cli.main(args + ["--restart"]) == 0  # --restart trains from the start over it


def test_unknown_dataset_and_bad_options(tmp_path, capsys):
    assert cli.main(["train", "--model", "tiny_models:mlp", "--data", "imagenet", "--out", str(tmp_path)]) == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err
    assert cli.main(["train", "--model", "tiny_models:mlp", "--data", "digits", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "epochs and batch_size must be >= 1" in capsys.readouterr().err


def test_dataset_factory_spec(tmp_path):
    f = tmp_path / "ds.py"
    f.write_text(textwrap.dedent("""
        import torch
        def make():
            g = torch.Generator().manual_seed(0)
            x = torch.randn(96, 64, generator=g)
            return (x, (x[:, 0] > 0).long()), (x[:32], (x[:32, 0] > 0).long())
    """))
    train, test = data.load(f"{f}:make")
    assert len(train) == 96 and len(test) == 32
    assert data.check_fits(_mlp(), train) == 10

"""Quantization-aware training on a real case where PTQ loses accuracy, ending on INT8 kernels.

The case: the trained Fashion-MNIST CNN with 2-bit weights (int8 storage, range [-2, 1]; uint8
activations), PTQ exactly as static_int8 does it. PTQ loses ~10 points there; QAT has to win back
at least half within 2 epochs. To stay inside the test budget the epochs are short (1024
training images each, 16 steps of 64) and accuracy is scored on the first 1000 test images;
benchmarks/training.py runs the full-size version (60000 images per epoch, 10000 test images).
"""
import json

import pytest
import torch
from torch.utils.data import TensorDataset

from torchslim import cli
from torchslim.quant import pt2e, qat
from torchslim.training import checkpoint, data
from torchslim.training.loop import TrainConfig, accuracy
from torchslim.training.qat import QatConfig, fit_qat, load_int8, prepare, ptq, start_from_ptq

pytestmark = pytest.mark.skipif(pt2e.missing() is not None, reason="needs torchao's PT2E quantization")


@pytest.fixture(scope="module")
def fashion():
    from torchslim.examples import fashion_mnist as fm

    train, test = data.load("fashion-mnist", limit=1024)
    return fm.pretrained(), train, TensorDataset(*(t[:1000] for t in test.tensors))


def test_qat_recovers_at_least_half_of_what_ptq_lost(fashion, tmp_path):
    model, train, test = fashion
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = fit_qat(model, train, test, QatConfig(weight_bits=2, freeze_bn_after=24, freeze_observers_after=28),
                  TrainConfig(epochs=2, batch_size=64, lr=1e-4, schedule="cosine", checkpoint_every=10),
                  out=str(tmp_path), progress=False)
    lost = res.fp32_accuracy - res.ptq_accuracy
    print(f"FP32 {res.fp32_accuracy:.1f}  PTQ {res.ptq_accuracy:.1f}  start {res.start_accuracy:.1f}  "
          f"QAT {res.qat_accuracy:.1f}  INT8 {res.int8_accuracy}  recovered {res.recovered:.0%}  {res.seconds}")
    assert res.fp32_accuracy >= 90.0
    assert lost >= 3.0  # a real, measurable PTQ loss
    assert abs(res.start_accuracy - res.ptq_accuracy) <= 1.0  # QAT starts where PTQ ended
    assert res.recovered >= 0.5, res.summary()
    assert res.train.steps == 32

    # the result runs on the same oneDNN INT8 kernels as PTQ, and computes what QAT trained
    assert res.quantized["quantized"] == {"Conv2d": 4, "Linear": 2} and not res.quantized["left_in_float"]
    assert res.kernels == {"conv": 4, "linear": 2}
    assert abs(res.int8_accuracy - res.qat_accuracy) <= 0.3

    # checkpoints carry the fake-quantizers' state; the FP32 model is untouched (it was the teacher)
    state = checkpoint.read(str(tmp_path / "checkpoint.pt"))
    assert any(k.endswith("observer_enabled") for k in state["model"])
    assert any(k.endswith("activation_post_process.min_val") for k in state["model"])
    assert state["settings"]["qat"]["weight_bits"] == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_qat_starts_from_the_ptq_model(fashion):
    """Before any training, the fake-quantized QAT graph predicts what the PTQ model predicts."""
    model, train, test = fashion
    x = data.take(train, range(128))[0]
    from torchslim.inputs import Example

    calib = [x[:64], x[64:]]
    ref = ptq(model, Example((x[:64],)), calib, weight_bits=4)
    prepared = prepare(model, Example((x[:64],)), weight_bits=4)
    start_from_ptq(prepared, calib)
    xt = data.take(test, range(500))[0]
    with torch.no_grad():
        a, b = ref(xt), prepared(xt)
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    assert agree >= 0.98 and cos >= 0.99, (agree, cos)


def test_qat_cli_after_train_cli(tmp_path, capsys):
    """The CLI workflow: train an FP32 model, then QAT it from its weights; the saved INT8 program
    reloads and scores what the summary says."""
    fp32 = tmp_path / "fp32"
    assert cli.main(["train", "--model", "tiny_models:mlp", "--data", "digits", "--epochs", "2", "--amp", "fp32",
                     "--out", str(fp32), "--threads", "1", "--no-progress"]) == 0
    trained = json.loads((fp32 / "summary.json").read_text())
    out = tmp_path / "qat"
    assert cli.main(["qat", "--model", "tiny_models:mlp", "--weights", str(fp32 / "model.pt"), "--data", "digits",
                     "--epochs", "1", "--weight-bits", "4", "--distill", "0.5", "--no-compile", "--out", str(out),
                     "--threads", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "PTQ (int4 weights, uint8 activations)" in printed and "same kernels as 8-bit" in printed
    s = json.loads((out / "summary.json").read_text())
    assert s["fp32_accuracy"] == trained["test_accuracy"]
    assert s["qat"]["distill"] == 0.5 and s["train"]["steps"] == 22
    _, test = data.load("digits")
    program = torch.export.load(str(out / "qat_int8.pt2")).module()
    assert accuracy(program, test) == pytest.approx(s["qat_accuracy"], abs=1e-9)
    assert callable(load_int8)


def test_qat_refuses_low_precision_training_and_bad_bits(tmp_path, capsys):
    from torchslim.errors import SlimError

    train, test = data.load("digits")
    import tiny_models

    with pytest.raises(SlimError, match="QAT trains in FP32"):
        fit_qat(tiny_models.mlp(), train, test, QatConfig(), TrainConfig(precision="bf16"), progress=False)
    assert cli.main(["qat", "--model", "tiny_models:mlp", "--data", "digits", "--weight-bits", "1", "--out", str(tmp_path)]) == 2
    assert "weight bits must be 2..8" in capsys.readouterr().err


def test_freezer_stops_batchnorm_statistics_and_observers_at_their_steps():
    """Freeze schedule on a small conv+BN net over the digits images: before the freeze steps BN
    statistics and weight scales move with training, after them they stay put."""
    import torch.nn as nn

    from torchslim.inputs import Example
    from torchslim.training.qat import Freezer, set_mode

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 64, 10)).eval()
    train, _ = data.load("digits-images")
    x, y = data.take(train, range(64))
    prepared = prepare(net, Example((x,)), weight_bits=4)
    start_from_ptq(prepared, [x])
    opt = torch.optim.SGD(prepared.parameters(), lr=0.5)
    freeze = Freezer(bn_at=2, observers_at=2)
    bn_mean = next(b for n, b in prepared.named_buffers() if n.endswith("running_mean"))
    weight_fq = [m for _, m in qat.fake_quantizers(prepared) if m.dtype == torch.int8]
    act_fq = [m for _, m in qat.fake_quantizers(prepared) if m.dtype == torch.uint8]
    act_scales = [m.scale.clone() for m in act_fq]
    seen = []
    set_mode(prepared, True)
    for step in range(4):
        freeze(prepared, step)
        mean_before, scales_before = bn_mean.clone(), [m.scale.clone() for m in weight_fq]
        loss = torch.nn.functional.cross_entropy(prepared(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append((not torch.equal(bn_mean, mean_before),
                     any(not torch.equal(m.scale, s) for m, s in zip(weight_fq, scales_before))))
        # the scales used in this step's forward came from the weights before this step's update
    assert seen[0][0] and seen[1][0]  # BN statistics move before step 2...
    assert not seen[2][0] and not seen[3][0]  # ...and not after
    assert seen[1][1] and not seen[3][1]  # weight scales follow the weights until frozen
    assert all(torch.equal(m.scale, s) for m, s in zip(act_fq, act_scales))  # activation scales stay PTQ's

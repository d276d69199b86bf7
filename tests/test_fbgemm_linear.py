"""quant.fbgemm.DynamicInt8Linear: fbgemm's dynamic INT8 Linear with per-token activation scales and
SmoothQuant factors, as a module torch.compile traces (the generation recipe int8-sq-dyn)."""
import copy
import io

import pytest
import torch
import torch.nn as nn

from torchslim import device as dev
from torchslim.quant import fbgemm

pytestmark = pytest.mark.skipif(fbgemm.available() is not None, reason=str(fbgemm.available()))


def sqnr(ref, got):
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - got).pow(2).mean()))


def _outlier_inputs(n=64, k=256):
    """Activations like an LLM's after RMSNorm: a few channels 30x larger than the rest."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, k, generator=g)
    x[:, :4] *= 30
    return x


def test_per_token_scales_and_smoothing_keep_the_signal():
    """Per-token scales keep a small row exact even beside a large one (one scale per tensor would not);
    SmoothQuant factors from the inputs' absmax raise SQNR on outlier channels (measured ~27 -> ~33 dB)."""
    torch.manual_seed(0)
    lin = nn.Linear(256, 128)
    x = _outlier_inputs()
    ref = lin(x).detach()
    rr = dev.seven_bit_int8()
    plain = fbgemm.DynamicInt8Linear(lin, rr)
    smooth = fbgemm.DynamicInt8Linear(lin, rr, fbgemm.smoothing(x.abs().amax(0), lin.weight, 0.65))
    s_plain, s_smooth = sqnr(ref, plain(x)), sqnr(ref, smooth(x))
    assert s_plain > 20 and s_smooth > s_plain + 3, (s_plain, s_smooth)
    tiny = torch.cat([x[:1] * 1e-3, x[1:2]])  # row 0 is 1000x smaller than row 1
    assert sqnr(lin(tiny[:1]).detach() - lin.bias.detach(), plain(tiny)[:1].detach() - lin.bias.detach()) > 20


def test_compiles_copies_and_saves():
    """torch.compile traces it (one custom op); a deep copy owns its packed weight (the original can
    go); state_dict carries the INT8 weight, so sizes are counted and a load repacks it."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    m = fbgemm.DynamicInt8Linear(lin, True, torch.rand(64) + 0.5)
    x = torch.randn(3, 5, 64)
    y = m(x)
    assert torch.allclose(torch.compile(m, fullgraph=True)(x), y, atol=1e-5)
    c = copy.deepcopy(m)
    assert c.key != m.key
    del m
    assert torch.equal(c(x), y)
    sd = c.state_dict()
    assert sd["weight"].dtype == torch.qint8 and sd["weight"].shape == (32, 64)
    buf = io.BytesIO()
    torch.save(sd, buf)
    other = fbgemm.DynamicInt8Linear(nn.Linear(64, 32), True, torch.ones(64))
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert torch.equal(other(x), y)


def test_input_absmax_reads_each_named_linear():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(10, 8)
    amax = fbgemm.input_absmax(model, ["0", "2"], [{"input": x}])
    assert torch.equal(amax["0"], x.abs().amax(0))
    assert torch.allclose(amax["2"], torch.relu(model[0](x)).abs().amax(0).detach())
    assert not model[0]._forward_pre_hooks  # hooks removed

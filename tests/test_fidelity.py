import math

import pytest
import torch

from torchslim import fidelity as F


def test_sqnr_of_known_noise():
    x = torch.ones(1000)
    y = x + 0.01  # noise norm is 1% of signal norm -> 40 dB
    assert F.sqnr_db(x, y) == pytest.approx(40.0, abs=1e-3)  # float32 0.01
    assert math.isinf(F.sqnr_db(x, x.clone()))


def test_cosine_and_min_row_cosine_catch_one_bad_row():
    ref = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    bad = ref.clone()
    bad[3] = -bad[3]  # one sample flipped
    assert F.cosine(ref, ref) == pytest.approx(1.0)
    assert F.cosine(ref, bad) > 0.5  # averaged over the batch it still looks fine...
    assert F.min_row_cosine(ref, bad) == pytest.approx(-1.0)  # ...the per-sample minimum does not


def test_top1_agreement_only_for_classifier_outputs():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert F.top1_agreement(ref, x) == pytest.approx(0.75)
    assert F.top1_agreement(torch.randn(4), torch.randn(4)) is None


def test_compare_walks_nested_outputs_and_flags_non_finite():
    ref = (torch.ones(2, 3), {"b": torch.ones(2, 2)}, torch.arange(3))  # int tensor ignored
    out = (torch.ones(2, 3), {"b": torch.full((2, 2), float("nan"))}, torch.arange(3))
    fid = F.compare(ref, out)
    assert not fid.finite
    assert F.compare(ref, ref).finite and F.compare(ref, ref).min_cosine == pytest.approx(1.0)


def test_compare_refuses_changed_structure():
    with pytest.raises(ValueError, match="structure"):
        F.compare(torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="no tensor"):
        F.compare("label", "label")


def test_integer_outputs_are_compared_exactly():
    same = F.compare(torch.arange(4), torch.arange(4))
    assert same.exact_match == 1.0 and same.min_cosine == 1.0 and same.finite
    one_off = F.compare(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 5]))
    assert one_off.exact_match == 0.75 and one_off.min_cosine == 0.75 and one_off.max_abs_err == 1.0

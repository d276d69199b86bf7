"""The generation search's cost sizing (generation/cost.py) on numbers: hand-computed phase seconds,
knobs sized down in order to fit a budget, never below their floors nor above what was asked."""
import pytest

from torchslim.generation import cost

ASKED = cost.Knobs(new_tokens=64, rounds=5, agreement_prompts=4, agreement_tokens=32, ppl_tokens=512, prompt_len=128,
                   large_batch=4, batch_size=1)


def test_phase_seconds_match_hand_counts():
    s = cost.Speed(prefill_s=0.5, step_s=0.1)
    # one generation: 0.5 s prompt + 64 x 0.1 s; at batch 4: 4 x 0.5 + 64 x 0.1 x 1.45
    assert cost.generation_s(s, ASKED, 128, 64) == pytest.approx(6.9)
    assert cost.generation_s(s, ASKED, 128, 64, batch=4) == pytest.approx(2.0 + 6.4 * 1.45)
    assert cost.ppl_s(s, ASKED) == pytest.approx(2.0)  # 512 tokens at 0.5 s per 128
    agree = 0.5 * 24 / 128 + 32 * 0.1
    assert cost.check_s(s, ASKED) == pytest.approx(6.9 + 4 * agree + 2.0)
    # 4 models x ((5 + 2) x 6.9 + (max(2, 2) + 1) x 11.28)
    assert cost.final_s(s, ASKED, models=4) == pytest.approx(4 * (7 * 6.9 + 3 * (2.0 + 6.4 * 1.45)))


def test_fast_model_or_no_budget_keeps_the_asked_settings():
    fast = cost.Speed(prefill_s=0.05, step_s=0.01)  # ~SmolLM2-135M on 2 cores
    sz = cost.size(fast, ASKED, budget_s=600)
    assert sz.changed == [] and sz.sized == sz.asked and sz.fits
    assert sz.reserve_s == pytest.approx(cost.final_s(fast, ASKED), abs=0.1)
    slow = cost.Speed(prefill_s=5.0, step_s=1.5)
    none = cost.size(slow, ASKED, budget_s=None)
    assert none.changed == [] and none.reserve_s == 0 and "nothing sized" in none.why


def test_slow_model_is_sized_down_in_order_and_fits():
    s = cost.Speed(prefill_s=0.6, step_s=0.12)  # ~a 0.5-1.5B model on 2 cores
    budget = 15 * 60
    sz = cost.size(s, ASKED, budget)
    k = cost.Knobs(**sz.sized)
    assert sz.fits and cost.final_s(s, k) <= cost.FINAL_SHARE * budget and cost.check_s(s, k) <= cost.CHECK_SHARE * budget
    # rounds first (to 3), then the timed tokens halved; the agreement checks already fit
    assert sz.changed == ["new_tokens", "rounds"] and (k.rounds, k.new_tokens, k.agreement_tokens) == (3, 32, 32)
    assert k.ppl_tokens == 512 and "fixed 512 tokens" in sz.why  # perplexity is never sized
    for n in ("new_tokens", "rounds", "agreement_prompts", "agreement_tokens"):
        assert getattr(k, n) <= getattr(ASKED, n)


def test_a_budget_too_small_stops_at_the_floors_and_says_so():
    s = cost.Speed(prefill_s=10.0, step_s=3.0)
    sz = cost.size(s, ASKED, budget_s=60)
    assert not sz.fits and "do not fit" in sz.why
    assert sz.sized["rounds"] == 2 and sz.sized["new_tokens"] == 16 and sz.sized["agreement_prompts"] == 2
    assert sz.sized["large_batch"] == 0 and "large_batch 4->0" in sz.why  # the larger batch is not timed
    assert cost.size(s, ASKED, budget_s=60, shrink=cost.KEEP_BATCH).sized["large_batch"] == 4  # --objective throughput
    assert sz.reserve_s == pytest.approx(30.0)  # at most half the budget is held back
    small = cost.Knobs(new_tokens=3, rounds=1, agreement_prompts=1, agreement_tokens=3, ppl_tokens=64, prompt_len=8)
    assert cost.size(s, small, budget_s=60).sized == cost.size(s, small, None).sized  # below the floors: kept


def test_speed_from_a_probe_trace_and_eta():
    sp = cost.speed_from_trace(400.0, [90.0, 30.0, 32.0, 31.0])  # the first step warms up: dropped
    assert sp.prefill_s == pytest.approx(0.4) and sp.step_s == pytest.approx(0.031)
    sz = cost.size(cost.Speed(prefill_s=0.5, step_s=0.1), ASKED, budget_s=600)
    per = sz.predicted_s["final_timing_per_model_s"]
    assert per * 4 == pytest.approx(sz.predicted_s["final_timing_s"], abs=0.05)
    assert cost.eta_text(None, sz, 2) == "" and f"ETA ~{100 + 2 * per:.0f} s" in cost.eta_text(100, sz, 2)

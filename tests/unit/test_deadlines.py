"""How long a batch may run before its engine actor is taken as hung, and what stays out of the
stage digests (timeouts change how a stage runs, not what it makes)."""

from types import SimpleNamespace

import pytest

from cai_ray.config import load_job
from cai_ray.engines.pool import MIN_TOKENS_PER_S, SCORE_TOKENS, Scheduler, _Batch
from cai_ray.generation import Sampling


def sched(call_timeout_s=None, floor=120.0, sampling=Sampling(max_tokens=50, n=2)):
    pool = SimpleNamespace(call_timeout_s=call_timeout_s, timeout_floor_s=floor,
                           measured={"tokens": 0.0, "busy_s": 0.0}, actors=[None], name="t")
    args = (sampling,) if sampling else ([1, 2],)
    return Scheduler(pool, "generate", args, batch_size=4, max_in_flight=1)


def test_deadline_before_any_measure_is_the_floor_plus_budget_at_the_slowest_speed():
    s = sched()
    b = _Batch(0, [("a", None)] * 4, budget=4 * 50 * 2)  # 4 requests x 50 tokens x n=2
    assert s.deadline_s(b) == pytest.approx(120 + 400 / MIN_TOKENS_PER_S)  # 120 + 100


def test_deadline_follows_the_measured_speed_with_a_fivefold_margin():
    s = sched()
    s.pool.measured.update(tokens=1000.0, busy_s=10.0)  # 100 tokens/s -> 20 tokens/s allowed
    assert s.deadline_s(_Batch(0, [], budget=400)) == pytest.approx(120 + 400 / 20)
    s.pool.measured.update(tokens=10.0, busy_s=10.0)  # slower than the floor speed: floor speed
    assert s.deadline_s(_Batch(0, [], budget=400)) == pytest.approx(120 + 400 / MIN_TOKENS_PER_S)


def test_a_set_timeout_wins_and_scoring_has_a_small_budget():
    assert sched(call_timeout_s=7).deadline_s(_Batch(0, [], budget=10 ** 6)) == 7
    assert sched(sampling=None).per_request == SCORE_TOKENS


def test_a_batch_queued_behind_another_runs_from_when_the_first_returned():
    s = sched()
    b = _Batch(0, [], budget=1, started=100.0)
    s.last_done[0] = 130.0
    assert s._running_since(b) == 130.0


def test_timeouts_stay_out_of_the_digests_and_real_settings_do_not():
    base = load_job("tiny")
    timed = load_job("tiny", ["engine.call_timeout_s=5", "engine.timeout_floor_s=9"])
    assert base.digest("engine") == timed.digest("engine")
    assert base.digest() == timed.digest()
    assert base.digest("engine") != load_job("tiny", ["engine.kv_cache_gib=2"]).digest("engine")

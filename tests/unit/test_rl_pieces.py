"""The RL stage's plain pieces without Ray: step plans for the learner group, reward sources (a
user's callable checked at load time), experience batching, and the shared-prompt forward pass
against the joined one on the tiny model."""

import random
import textwrap

import pytest
import torch

from cai_ray.errors import InputError
from cai_ray.rewards import Scored, build_reward, check_reward
from cai_ray.rl.experience import Experience, concat, pad_right
from cai_ray.rl.learner import step_plan


def _covered(plan):
    return sorted(i for step in plan for mb in step for i in mb)


def test_step_plan_covers_every_rollout_once_per_epoch_in_equal_shapes():
    lengths = [random.Random(i).randint(5, 50) for i in range(30)]
    groups = [i // 3 for i in range(30)]  # ten prompts, three samples each
    plans = step_plan(lengths, groups, world=4, mini=12, micro=4, epochs=2, seed=1)
    assert len(plans) == 4
    shapes = [[len(step) for step in p] for p in plans]
    assert all(s == shapes[0] for s in shapes)  # same steps and micro-batches on every rank
    everything = sorted(i for p in plans for i in _covered(p))
    assert everything == sorted(list(range(30)) * 2)  # each rollout once per epoch
    for p in plans:
        for step in p:
            for mb in step:
                assert len(mb) <= 4
                # a group is never split when it fits in a micro-batch
                for g in {groups[i] for i in mb}:
                    assert all(groups[i] != g for j in step if j is not mb for i in j)


def test_step_plan_one_step_keeps_group_order_and_splits_big_groups():
    groups = [0] * 6 + [1] * 2
    plans = step_plan([10] * 8, groups, world=1, mini=None, micro=4, epochs=1)
    assert plans == [[[[0, 1, 2, 3], [4, 5, 6, 7]]]]  # group 0 split at 4; group 1 packed after


def test_rule_rewards():
    batch = [Scored("p", "q", "I am sorry.", 4), Scored("p", "q", "Sure!", 64)]
    assert build_reward("contains:SORRY").score(batch) == [1.0, 0.0]
    assert build_reward("short", max_tokens=64).score(batch) == pytest.approx([1 - 4 / 64, 0.0])
    # "I am sorry." has 11 characters, 7 of them among a..z; "Sure!" 5, 3 of them
    assert build_reward("share:abcdefghijklmnopqrstuvwxyz").score(batch) == pytest.approx(
        [7 / 11, 3 / 5])
    with pytest.raises(InputError, match="share:CHARS"):
        build_reward("share:")
    with pytest.raises(InputError, match="not a reward source"):
        build_reward("nonsense")


def test_served_scorer_urls():
    from cai_ray.rewards.remote import http_route

    assert http_route("http://127.0.0.1:8000/v1/score") == "score"
    assert http_route("https://rm.example:443/v1/judge/") == "judge"
    for bad in ("http://127.0.0.1:8000/v1/chat/completions", "http:///v1/score",
                "http://127.0.0.1:8000/score"):
        with pytest.raises(InputError, match="v1/judge"):
            http_route(bad)
    with pytest.raises(ValueError, match="SFT model's answers"):  # pairwise needs them
        build_reward("http://127.0.0.1:9/v1/judge")


def test_a_user_callable_is_checked_at_load_time(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        def length(prompts, completions, **kw):
            return [float(len(c)) for c in completions]
        def wrong_length(prompts, completions, **kw):
            return [1.0]
        def words(prompts, completions, **kw):
            return ["good"] * len(completions)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    check_reward("my_rewards:length", 64)
    assert build_reward("my_rewards:length").score([Scored("p", "q", "abc", 1)]) == [3.0]
    with pytest.raises(InputError, match="cannot import"):
        check_reward("no_such_module:fn", 64)
    with pytest.raises(InputError, match="cannot import"):
        check_reward("my_rewards:missing", 64)
    with pytest.raises(InputError, match="list of 2 numbers"):
        check_reward("my_rewards:wrong_length", 64)
    with pytest.raises(InputError, match="not a number"):
        check_reward("my_rewards:words", 64)


def _exp(lengths, group):
    resp, mask = pad_right([[5] * n for n in lengths])
    return Experience([[1, 2]] * len(lengths), resp, mask, torch.zeros_like(mask),
                      torch.arange(len(lengths), dtype=torch.float32), torch.tensor(group),
                      [0] * len(lengths), ref_logp=torch.ones_like(mask))


def test_experience_concat_select_trim():
    a, b = _exp([2, 3], [0, 0]), _exp([5], [1])
    both = concat([a, b])
    assert both.response.shape == (3, 5) and both.score.tolist() == [0, 1, 0]
    assert both.ref_logp[0].tolist() == [1, 1, 1, 0, 0]  # padded to the widest
    assert concat([a, Experience(**{**b.__dict__, "ref_logp": None})]).ref_logp is None
    sub = both.select([0]).trim()
    assert sub.response.shape == (1, 2) and sub.versions == [0]


def test_shared_prompt_forward_equals_the_joined_one(tiny_model):
    from transformers import AutoModelForCausalLM

    from cai_ray.rl.forward import _shared_hidden, joined_logprobs, rollout_logprobs

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 250) for _ in range(n)] for n in (7, 12, 9)]
    pids, resp = [], []
    for p in prompts:
        for _ in range(3):
            pids.append(p)
            resp.append([rng.randrange(3, 250) for _ in range(rng.randint(3, 11))])
    R, M = pad_right(resp)
    with torch.no_grad():  # the shared path is taken, not its fallback
        assert _shared_hidden(model.model, pids, R, M, 0) is not None
        want = joined_logprobs(model, pids, R, M, 0)
        shared, _ = rollout_logprobs(model, pids, R, M, 0, share_prompts=True)
        plain, _ = rollout_logprobs(model, pids, R, M, 0, share_prompts=False)
    assert float((shared - want).abs().max()) < 1e-4
    assert float((plain - want).abs().max()) < 1e-4
    assert float((shared * (1 - M)).abs().max()) == 0  # nothing on padding
    grads = []
    for share in (True, False):
        model.zero_grad()
        lp, _ = rollout_logprobs(model, pids, R, M, 0, share_prompts=share)
        lp.sum().backward()  # gradients reach the prompt's pass through the expanded cache
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()
                                if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-3)

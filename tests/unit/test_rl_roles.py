"""The frozen roles of RL as plain classes, without Ray (cai_ray/rl/roles.py): the reference
policy's log-probs are the model's own, token by token, and zero on padding; the reward worker
builds its source from a spec (a plugin's included) and returns one float per rollout."""

import sys

import pytest
import torch

from cai_ray.rewards import Scored


@pytest.mark.parametrize("share_prompts", [True, False])
def test_reference_logprobs_are_the_models_own(tiny_model, share_prompts):
    from transformers import AutoModelForCausalLM

    from cai_ray.rl.experience import pad_responses
    from cai_ray.rl.roles import ReferencePolicy

    ref = ReferencePolicy(tiny_model, threads=1, chunk=3,  # chunks smaller than an answer
                          share_prompts=share_prompts)  # a prompt run once for its samples, or not
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 200, (6,), generator=g).tolist()] * 2 + \
        [torch.randint(5, 200, (4,), generator=g).tolist()]
    answers = [torch.randint(5, 200, (n,), generator=g).tolist() for n in (5, 2, 4)]
    resp, mask = pad_responses(answers)
    got = ref.logprobs(prompts, resp, mask)  # (B, T)
    assert got.shape == mask.shape and (got[mask == 0] == 0).all()
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    for b, (p, a) in enumerate(zip(prompts, answers)):  # one sequence at a time, no sharing
        with torch.no_grad():
            logits = model(torch.tensor([p + a])).logits[0].float()
        want = torch.log_softmax(logits[len(p) - 1:-1], -1)[torch.arange(len(a)), torch.tensor(a)]
        assert torch.allclose(got[b, :len(a)], want, atol=1e-4), b
    assert ref.ping() and ref.peak_rss_mb() > 0


def test_reward_worker_scores_each_rollout_with_its_source(tmp_path, monkeypatch):
    from cai_ray.rl.roles import RewardWorker

    batch = [Scored("p1", "Hi?", "I can't help with that, sorry.", 8),
             Scored("p2", "Hi?", "Sure!", 2)]
    assert RewardWorker("contains:sorry", {"max_tokens": 8}).score(batch) == [1.0, 0.0]
    short = RewardWorker("short", {"max_tokens": 8}).score(batch)
    assert short == pytest.approx([0.0, 0.75]) and all(type(x) is float for x in short)
    plugin = tmp_path / "my_rewards.py"  # a plugin's reward source, registered in this process
    plugin.write_text("from cai_ray.rewards import register_reward\n"
                      "@register_reward('length_of_prompt_id')\n"
                      "class L:\n"
                      "    def __init__(self, arg, **kw): pass\n"
                      "    def score(self, batch): return [len(s.prompt_id) * 1 for s in batch]\n")
    from cai_ray.rewards import registry

    monkeypatch.setattr(registry, "REWARDS", dict(registry.REWARDS))  # forgotten after the test
    monkeypatch.delitem(sys.modules, "cai_ray_plugin_my_rewards", raising=False)
    worker = RewardWorker("length_of_prompt_id", {}, plugins=(str(plugin),))
    assert worker.score(batch) == [2.0, 2.0]

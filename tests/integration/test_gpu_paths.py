"""CUDA paths (marked gpu: skipped on machines without CUDA; run by benchmarks/gpu_check.py's
checks on a lent GPU). The RL learner on CUDA with the tiny model."""

import math

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.integration]


def test_rl_learner_update_on_cuda(tiny_model):
    from cai_ray.algos.stats import whiten
    from cai_ray.config.rl import RlCfg
    from cai_ray.rl.experience import Experience, pad_responses
    from cai_ray.rl.learner import Learner, step_plan
    from cai_ray.rl.spec import LearnerSpec

    cfg = RlCfg(algorithm="ppo", use_gpu=True, precision="bf16", micro_batch_size=2)
    ln = Learner(tiny_model, LearnerSpec.of(cfg), critic_path=tiny_model)
    ln.join(*ln.listen())
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 200, (7,), generator=g).tolist()] * 2 + \
        [torch.randint(5, 200, (5,), generator=g).tolist()] * 2
    resp, mask = pad_responses([torch.randint(5, 200, (n,), generator=g).tolist()
                                for n in (3, 5, 5, 2)])
    logp, values = ln.logprobs(prompts, resp, mask), ln.values(prompts, resp, mask)
    assert logp.shape == values.shape == mask.shape and (logp[mask == 0] == 0).all()
    adv = whiten(torch.randn(4, 5, generator=g), mask)
    exp = Experience(prompts, resp, mask, logp.clone(), torch.randn(4), torch.tensor([0, 0, 1, 1]),
                     [0] * 4, old_logp=logp, values=values, advantages=adv, returns=values + adv)
    before = {n: p.detach().float().clone() for n, p in ln.actor.module.named_parameters()}
    m = ln.train(exp, step_plan([9, 12, 10, 7], [0, 0, 1, 1], 1, None, 2, 1)[0])
    assert {"policy/loss", "critic/loss"} <= set(m)
    assert all(math.isfinite(v) for v in m.values()), m
    moved = [n for n, p in ln.actor.module.named_parameters()
             if not torch.equal(p.detach().float(), before[n].to(p.device))]
    assert moved, "the CUDA update changed no policy weight"
    assert next(ln.actor.module.parameters()).is_cuda
    assert [k for k, _, _ in ln.weight_meta()] == list(ln._policy_state())

"""CUDA paths (marked gpu: skipped on machines without CUDA; run by benchmarks/gpu_check.py's
checks on a lent GPU). The PPO learner and the trainers on CUDA with the tiny model."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.integration]


@pytest.fixture(scope="module")
def dist_one_rank():
    import os

    import deepspeed

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29651", "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    deepspeed.init_distributed(dist_backend="nccl")


def test_ppo_learner_update_on_cuda(tiny_model, dist_one_rank):
    from cai_ray.algos.advantages import whiten
    from cai_ray.config import PpoCfg
    from cai_ray.rl.experience import Experience, pad_responses
    from cai_ray.rl.learner import PpoLearner

    cfg = dict(PpoCfg().model_dump(), use_gpu=True, precision="bf16")
    ln = PpoLearner(tiny_model, tiny_model, cfg, master_port=29651)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 200, (7,), generator=g).tolist() for _ in range(4)]
    resp, mask = pad_responses([torch.randint(5, 200, (n,), generator=g).tolist()
                                for n in (3, 5, 5, 2)])
    logp, values = ln.logprobs_values(prompts, resp, mask)
    assert logp.shape == values.shape == mask.shape and (logp[mask == 0] == 0).all()
    adv = whiten(torch.randn(4, 5, generator=g), mask)
    exp = Experience(prompts, resp, mask, logp, logp.clone(), values, torch.randn(4),
                     advantages=adv, returns=values + adv)
    m = ln.train(exp, epochs=1, minibatch=2, clip=0.2, value_clip=0.2)
    assert all(v == v for v in m.values())
    assert [k for k, _, _ in ln.sync_meta()] == list(ln.policy_state())

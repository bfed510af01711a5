"""RL math against numbers computed by hand: group statistics, the advantage estimators, loss
aggregation, clipped policy losses (asymmetric, dual, sequence-level), KL, rollout correction, and
the algorithm registry."""

import math

import pytest
import torch

from cai_ray.algos.advantages import ESTIMATORS, AdvantageInput, AdvantageParams
from cai_ray.algos.algorithms import ALGORITHMS, resolve
from cai_ray.algos.kl import kl_estimate
from cai_ray.algos.policy_loss import aggregate, kl_loss, mismatch, policy_loss, tis_weights
from cai_ray.algos.stats import group_stats

MASK5 = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0],
                      [1.0, 1.0, 0.0]])
GROUP5 = torch.tensor([7, 7, 7, 9, 9])  # any labels: two prompts, 3 and 2 samples


def run(name, score, mask=MASK5, group=GROUP5, **kw):
    adv, ret = ESTIMATORS[name].fn(AdvantageInput(torch.tensor(score), mask, group, **kw),
                                   AdvantageParams())
    return adv, ret


def test_group_stats():
    mean, std, n = group_stats(torch.tensor([1.0, 3.0, 5.0, 10.0]), torch.tensor([0, 0, 0, 1]))
    # group 0: mean 3, unbiased std sqrt((4 + 0 + 4) / 2) = 2; group 1: one sample, std 0
    assert mean.tolist() == [3, 3, 3, 10] and std.tolist() == [2, 2, 2, 0]
    assert n.tolist() == [3, 3, 3, 1]


def test_grpo_normalises_within_each_group():
    adv, ret = run("grpo", [1.0, 3.0, 5.0, 2.0, 2.0])
    # group 7: (r - 3) / 2 = -1, 0, 1 on each answer token; group 9: equal rewards -> 0
    want = [[-1, -1, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0], [0, 0, 0]]
    assert adv.flatten().tolist() == pytest.approx(sum(want, []), abs=1e-5)
    assert ret is None


def test_dr_grpo_skips_the_std():
    adv, _ = run("dr_grpo", [1.0, 3.0, 5.0, 2.0, 4.0])
    assert adv[:, 0].tolist() == pytest.approx([-2, 0, 2, -1, 1])


def test_rloo_leave_one_out():
    adv, _ = run("rloo", [1.0, 3.0, 5.0, 2.0, 4.0])
    # 1 - (3 + 5) / 2 = -3; 3 - (1 + 5) / 2 = 0; 5 - (1 + 3) / 2 = 3; 2 - 4 = -2; 4 - 2 = 2
    assert adv[:, 0].tolist() == pytest.approx([-3, 0, 3, -2, 2])
    assert adv[1, 1] == 0 and adv[0, 2] == 0  # padding stays 0


def test_kl_in_the_reward_lowers_the_sequence_reward():
    x = AdvantageInput(torch.tensor([1.0]), torch.tensor([[1.0, 1.0, 0.0]]),
                       kl=torch.tensor([[0.5, 0.5, 9.0]]), kl_coef=0.1)
    assert float(x.sequence_reward()[0]) == pytest.approx(1 - 0.1 * (0.5 + 0.5))  # padding ignored


def test_reinforce_pp_batch_normalised_returns():
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv, _ = run("reinforce_pp", [1.0, 0.0], mask=mask, group=None,
                 kl=torch.tensor([[0.5, 0.2], [0.1, 0.0]]), kl_coef=0.1)
    # token rewards: [-0.05, -0.02 + 1] and [-0.01]; returns [0.93, 0.98] and [-0.01];
    # mean 0.63333, population std 0.455358 -> (G - mean) / std
    assert adv.flatten().tolist() == pytest.approx([0.65150, 0.76130, -1.41280, 0.0], abs=1e-4)


def test_reinforce_pp_baseline_subtracts_the_group_mean_first():
    mask = torch.ones(4, 1)
    adv, _ = run("reinforce_pp_baseline", [1.0, 3.0, 10.0, 10.0], mask=mask,
                 group=torch.tensor([0, 0, 1, 1]))
    # shifted scores [-1, 1, 0, 0]; whitened over the batch: mean 0, std sqrt(0.5)
    s = math.sqrt(0.5)
    assert adv[:, 0].tolist() == pytest.approx([-1 / s, 1 / s, 0, 0], abs=1e-4)


def test_gae_estimator_whitens_and_needs_values():
    with pytest.raises(ValueError, match="critic"):
        run("gae", [1.0, 1.0, 1.0, 1.0, 1.0])
    assert ESTIMATORS["gae"].needs_critic and not ESTIMATORS["grpo"].needs_critic
    assert ESTIMATORS["grpo"].grouped and not ESTIMATORS["reinforce_pp"].grouped


def test_aggregations():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert float(aggregate(x, m, "token_mean")) == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert float(aggregate(x, m, "seq_mean_token_mean")) == pytest.approx((2 + 4) / 2)
    assert float(aggregate(x, m, "seq_mean_token_sum_norm", norm_len=3)) == \
        pytest.approx((6 / 3 + 4 / 3) / 2)
    # a micro-batch of an 8-token step: its share of the step's token mean
    assert float(aggregate(x, m, "token_mean", denom=8)) == pytest.approx(10 / 8)


def test_asymmetric_clip():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.25, 0.7]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, m = policy_loss(logp, old, adv, torch.ones(1, 4), clip_low=0.2, clip_high=0.3)
    # per token max(-rA, -clip(r, 0.8, 1.3)A): -1.3, 0.8, -1.25 (inside), 0.8
    assert float(loss) == pytest.approx((-1.3 + 0.8 - 1.25 + 0.8) / 4)
    sym, _ = policy_loss(logp, old, adv, torch.ones(1, 4), clip_low=0.2, clip_high=0.2)
    assert float(sym) == pytest.approx((-1.2 + 0.8 - 1.2 + 0.8) / 4)  # 1.25 clipped at 1.2
    assert m["policy/clipfrac_high"] == pytest.approx(0.25)  # token 0 (r 1.5 > 1.3, A > 0)
    assert m["policy/clipfrac_low"] == pytest.approx(0.5)    # tokens 1 and 3 (r < 0.8, A < 0)


def test_dual_clip_bounds_negative_advantages():
    logp = torch.log(torch.tensor([[5.0, 5.0]]))
    adv = torch.tensor([[-1.0, 1.0]])
    loss, m = policy_loss(logp, torch.zeros(1, 2), adv, torch.ones(1, 2), dual_clip=3.0)
    # token 0: max(5, 1.2) = 5, dual clip min(5, 3) = 3; token 1: max(-5, -1.2) = -1.2
    assert float(loss) == pytest.approx((3 - 1.2) / 2)
    assert m["policy/dual_clipfrac"] == pytest.approx(0.5)
    plain, _ = policy_loss(logp, torch.zeros(1, 2), adv, torch.ones(1, 2))
    assert float(plain) == pytest.approx((5 - 1.2) / 2)


def test_sequence_level_ratio_gspo():
    logp = torch.tensor([[0.2, 0.4, 7.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = torch.ones(1, 3)
    clipped, _ = policy_loss(logp, torch.zeros(1, 3), adv, mask, ratio_level="sequence")
    # the answer's ratio exp(mean(0.2, 0.4)) = exp(0.3) = 1.34986 > 1.2: clipped to -1.2
    assert float(clipped.detach()) == pytest.approx(-1.2)
    loss, m = policy_loss(logp, torch.zeros(1, 3), adv, mask, ratio_level="sequence",
                          clip_low=10, clip_high=10)
    loss.backward()
    # loss = -(r + r) / 2 with dr/dlogp_t = r for every answer token
    assert float(loss.detach()) == pytest.approx(-math.exp(0.3))
    assert logp.grad.tolist()[0] == pytest.approx([-math.exp(0.3) / 2, -math.exp(0.3) / 2, 0])
    assert m["policy/ratio_mean"] == pytest.approx(math.exp(0.3))


def test_weights_scale_the_per_token_loss():
    logp = torch.zeros(1, 2)
    loss, _ = policy_loss(logp, logp, torch.tensor([[1.0, 1.0]]), torch.ones(1, 2),
                          weights=torch.tensor([[2.0, 0.5]]))
    assert float(loss) == pytest.approx((-2.0 - 0.5) / 2)


def test_kl_loss_k3():
    lp, ref = torch.tensor([[math.log(0.5), 0.0]]), torch.tensor([[math.log(0.25), 0.0]])
    k3 = 0.5 - 1 + math.log(2)  # q/p - 1 - log(q/p) with q/p = 0.5
    assert float(kl_loss(lp, ref, torch.tensor([[1.0, 0.0]]))) == pytest.approx(k3)
    assert float(kl_estimate(lp, ref, "k2")[0, 0]) == pytest.approx(0.5 * math.log(2) ** 2)


def test_truncated_importance_weights_and_mismatch():
    learner = torch.tensor([[-1.0, -1.0]])
    sampler = torch.tensor([[-1.5, -0.5]])
    w = tis_weights(learner, sampler, torch.ones(1, 2), cap=1.5)
    assert w.tolist()[0] == pytest.approx([1.5, math.exp(-0.5)])  # exp(0.5) = 1.65 capped
    seq = tis_weights(learner, sampler, torch.ones(1, 2), cap=1.5, level="sequence")
    assert seq.tolist()[0] == pytest.approx([1.0, 1.0])  # summed log-ratio 0
    m = mismatch(learner, sampler, torch.ones(1, 2))
    assert m["mismatch/abs_logp_diff"] == pytest.approx(0.5)
    # k3 at d = -0.5 and +0.5: (e^0.5 - 1 - 0.5 + e^-0.5 - 1 + 0.5) / 2
    assert m["mismatch/kl"] == pytest.approx(0.1276260, abs=1e-6)


def test_algorithm_registry_declares_roles():
    assert {"ppo", "grpo", "rloo", "reinforce_pp"} <= set(ALGORITHMS)
    assert resolve("ppo").needs_critic and not any(resolve(a).needs_critic for a in
                                                   ("grpo", "rloo", "reinforce_pp"))
    assert resolve("grpo").needs_reference and not resolve("grpo", kl_coef=0.0).needs_reference
    assert resolve("grpo", clip_high=0.28, dual_clip=None).clip_high == 0.28
    assert resolve("grpo").grouped and not resolve("reinforce_pp").grouped
    with pytest.raises(ValueError, match="unknown algorithm"):
        resolve("ppo2")

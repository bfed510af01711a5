"""PPO's pieces against numbers computed by hand: GAE, the clipped value loss, KL estimators and the
per-token penalty, whitening, entropy and the adaptive KL controller."""

import math

import pytest
import torch

from cai_ray.algos.advantages import gae
from cai_ray.algos.kl import AdaptiveKLController, kl_estimate, penalised_rewards
from cai_ray.algos.policy_loss import entropy_from_logits, policy_loss, value_loss
from cai_ray.algos.stats import whiten


def test_gae_three_steps():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=1.0, lam=0.5)
    # delta = [0.1, 0.1, 0.3]; A2 = 0.3, A1 = 0.1 + 0.5 * 0.3, A0 = 0.1 + 0.5 * 0.25
    assert adv.tolist()[0] == pytest.approx([0.225, 0.25, 0.3])
    assert ret.tolist()[0] == pytest.approx([0.725, 0.85, 1.0])


def test_gae_ignores_padding_and_discounts():
    r = torch.tensor([[0.0, 1.0, 5.0]])
    v = torch.tensor([[0.0, 0.0, 9.0]])
    adv, _ = gae(r, v, torch.tensor([[1.0, 1.0, 0.0]]), gamma=0.9, lam=1.0)
    assert adv.tolist()[0] == pytest.approx([0.9, 1.0, 0.0])


def test_policy_loss_clips_on_both_sides():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, m = policy_loss(logp, old, adv, torch.ones(1, 4), clip_low=0.2, clip_high=0.2)
    # per token: -min(rA, clip(r)A) = [-1.2, 0.8, -0.5, 1.5]
    assert float(loss) == pytest.approx((-1.2 + 0.8 - 0.5 + 1.5) / 4)
    assert m["policy/clipfrac"] == 0.5  # tokens 0 and 1: the clipped term is the larger loss
    masked, _ = policy_loss(logp, old, adv, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert float(masked) == pytest.approx(-1.2)


def test_value_loss_clipping():
    v, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    loss, _ = value_loss(v, old, ret, torch.ones(1, 2), clip=0.2)
    # token 0: max((1-0)^2, (0.2-0)^2) = 1; token 1: max((0-1)^2, (0-1)^2) = 1
    assert float(loss) == pytest.approx(0.5 * (1 + 1) / 2)


def test_kl_estimators_and_penalty():
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert float(kl_estimate(lp, ref, "k1")) == pytest.approx(math.log(2))
    assert float(kl_estimate(lp, ref, "k2")) == pytest.approx(0.5 * math.log(2) ** 2)
    assert float(kl_estimate(lp, ref, "k3")) == pytest.approx(0.5 - 1 + math.log(2))
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, 0.0]])
    refp = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, -2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rw, kl = penalised_rewards(torch.tensor([2.0, -1.0]), logp, refp, mask, kl_coef=0.1)
    assert sum(rw.tolist(), []) == pytest.approx([-0.05, 0.0, 2.0, 0.0, -0.1 - 1.0, 0.0])
    assert kl.tolist()[1] == pytest.approx([0.0, 1.0, 0.0])


def test_whiten_and_entropy():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    w = whiten(x, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert w.tolist()[0][:3] == pytest.approx([-1.2247, 0.0, 1.2247], abs=1e-3)
    assert w[0, 3] == 0
    uniform = torch.zeros(1, 2, 4)
    assert float(entropy_from_logits(uniform, torch.ones(1, 2))) == pytest.approx(math.log(4))


def test_adaptive_kl_controller():
    c = AdaptiveKLController(0.1, target=1.0, horizon=100)
    assert c.update(2.0, 10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped to +0.2
    c2 = AdaptiveKLController(0.1, target=1.0, horizon=100)
    assert c2.update(0.9, 100) == pytest.approx(0.1 * 0.9)

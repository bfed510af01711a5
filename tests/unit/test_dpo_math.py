"""DPO / IPO / conservative DPO losses against numbers computed by hand.

One pair throughout: log pi(chosen) = -10, log pi(rejected) = -12, both reference log-probs -11,
so h = (-10 + 11) - (-12 + 11) = 2; with beta = 0.5, beta * h = 1 and
-log sigmoid(1) = log(1 + e^-1) = 0.3132617, -log sigmoid(-1) = 1.3132617.
"""

import math

import pytest
import torch

from cai_ray.algos.dpo import preference_loss

PAIR = [torch.tensor([x]) for x in (-10.0, -12.0, -11.0, -11.0)]
L1, LM1 = math.log1p(math.exp(-1)), math.log1p(math.exp(1))


def loss(p=1.0, **kw):
    out, m = preference_loss(*PAIR, torch.tensor([p]), beta=0.5, **kw)
    return float(out), m


def test_dpo_is_minus_log_sigmoid_of_beta_h():
    assert loss(loss_type="dpo")[0] == pytest.approx(0.3132617, abs=1e-6)
    assert L1 == pytest.approx(0.3132617, abs=1e-6)


def test_dpo_ignores_the_soft_label_unless_asked():
    assert loss(0.8, loss_type="dpo")[0] == pytest.approx(L1, abs=1e-6)
    assert loss(0.8, loss_type="dpo", soft_labels=True)[0] == pytest.approx(0.8 * L1 + 0.2 * LM1,
                                                                            abs=1e-6)


def test_conservative_dpo_weighs_both_orderings_by_the_soft_label():
    # 0.8 * 0.3132617 + 0.2 * 1.3132617 = 0.5132617
    assert loss(0.8, loss_type="cdpo")[0] == pytest.approx(0.5132617, abs=1e-6)


def test_conservative_dpo_at_p_one_is_dpo():
    assert loss(1.0, loss_type="cdpo")[0] == pytest.approx(loss(1.0, loss_type="dpo")[0], abs=1e-7)


def test_label_smoothing_moves_the_target_towards_one_half():
    # q = 0.9: 0.9 * 0.3132617 + 0.1 * 1.3132617 = 0.4132617
    assert loss(loss_type="dpo", label_smoothing=0.1)[0] == pytest.approx(0.4132617, abs=1e-6)


def test_summed_ipo_is_squared_distance_to_one_over_two_beta():
    # (h - 1 / (2 * 0.5))^2 = (2 - 1)^2 = 1; soft p = 0.8: 0.8 * 1 + 0.2 * (-2 - 1)^2 = 2.6
    assert loss(loss_type="ipo", ipo_per_token=False)[0] == pytest.approx(1.0, abs=1e-6)
    assert loss(0.8, loss_type="ipo", soft_labels=True, ipo_per_token=False)[0] == \
        pytest.approx(2.6, abs=1e-6)


def test_ipo_divides_each_log_ratio_by_its_answer_s_tokens():
    # chosen 4 tokens, rejected 2: h = (-10 + 11) / 4 - (-12 + 11) / 2 = 0.25 + 0.5 = 0.75;
    # (0.75 - 1)^2 = 0.0625; soft p = 0.8: 0.8 * 0.0625 + 0.2 * (-0.75 - 1)^2 = 0.05 + 0.6125
    lengths = torch.tensor([[4, 2]])
    assert loss(loss_type="ipo", lengths=lengths)[0] == pytest.approx(0.0625, abs=1e-6)
    assert loss(0.8, loss_type="ipo", soft_labels=True, lengths=lengths)[0] == \
        pytest.approx(0.6625, abs=1e-6)


def test_per_token_ipo_does_not_let_the_longer_pair_dominate():
    # the same per-token log-ratios (+0.1 chosen, -0.1 rejected), one pair 10 tokens per answer,
    # one 100: per token both have h = 0.2 and the same loss; summed, h = 2 and h = 20
    pi_c, pi_r = torch.tensor([1.0, 10.0]), torch.tensor([-1.0, -10.0])
    ref, p = torch.zeros(2), torch.ones(2)
    lengths = torch.tensor([[10, 10], [100, 100]])
    per_token = [float(preference_loss(pi_c[i:i + 1], pi_r[i:i + 1], ref[:1], ref[:1], p[:1],
                                       beta=0.5, loss_type="ipo", lengths=lengths[i:i + 1])[0])
                 for i in range(2)]
    assert per_token == pytest.approx([0.64, 0.64])  # (0.2 - 1)^2
    summed = [float(preference_loss(pi_c[i:i + 1], pi_r[i:i + 1], ref[:1], ref[:1], p[:1],
                                    beta=0.5, loss_type="ipo", ipo_per_token=False)[0])
              for i in range(2)]
    assert summed == pytest.approx([1.0, 361.0])  # (2 - 1)^2, (20 - 1)^2


def test_ipo_per_token_without_lengths_is_refused():
    with pytest.raises(ValueError, match="token counts"):
        loss(loss_type="ipo")


def test_soft_ipo_is_minimised_at_its_target_margin():
    # q (h - 1/(2b))^2 + (1 - q)(h + 1/(2b))^2 has its minimum at h = (2q - 1) / (2b) = 0.6
    h = torch.tensor([0.6], requires_grad=True)
    out, _ = preference_loss(h, torch.zeros(1), torch.zeros(1), torch.zeros(1),
                             torch.tensor([0.8]), beta=0.5, loss_type="ipo", soft_labels=True,
                             ipo_per_token=False)
    out.backward()
    assert float(h.grad) == pytest.approx(0.0, abs=1e-6)


def test_implicit_reward_metrics():
    _, m = loss(loss_type="dpo")
    assert m["rewards/chosen"] == pytest.approx(0.5)  # 0.5 * (-10 + 11)
    assert m["rewards/rejected"] == pytest.approx(-0.5)
    assert m["rewards/margin"] == pytest.approx(1.0)
    assert m["rewards/accuracy"] == 1.0
    assert m["logps/chosen"] == -10.0 and m["logps/rejected"] == -12.0


def test_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = torch.tensor([-10.0], requires_grad=True), torch.tensor([-12.0], requires_grad=True)
    out, _ = preference_loss(pc, pr, PAIR[2], PAIR[3], torch.ones(1), beta=0.5)
    out.backward()
    # d/dpc -log s(b h) = -b (1 - s(1)) = -0.5 * 0.2689414
    assert float(pc.grad) == pytest.approx(-0.5 * (1 - 1 / (1 + math.exp(-1))), abs=1e-6)
    assert float(pr.grad) == pytest.approx(-float(pc.grad), abs=1e-7)


def test_unknown_type_is_refused():
    with pytest.raises(ValueError, match="unknown DPO loss type"):
        loss(loss_type="kto")

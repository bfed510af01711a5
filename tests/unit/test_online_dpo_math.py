"""Online DPO's pure pieces against hand-computed values (cai_ray/algos): the best_worst
estimator, the dpo_pair loss, and the online_dpo preset."""

import math

import pytest
import torch

from cai_ray.algos.advantages import ESTIMATORS, AdvantageInput, AdvantageParams
from cai_ray.algos.algorithms import resolve
from cai_ray.algos.policy_loss import POLICY_LOSSES


def test_best_and_worst_of_each_group_and_nothing_for_a_group_of_equals():
    score = torch.tensor([0.2, 0.9, 0.5, 0.3, 0.3, 0.7, 0.7, 0.1])
    group = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    mask = torch.ones(8, 3)
    mask[1, 2] = 0
    adv, ret = ESTIMATORS["best_worst"].fn(AdvantageInput(score, mask, group),
                                            AdvantageParams())
    assert ret is None and ESTIMATORS["best_worst"].grouped
    assert adv[:, 0].tolist() == [-1, 1, 0, 0, 0, 1, 0, -1]  # ties: the first of equals
    assert adv[1].tolist() == [1, 1, 0]  # on answer tokens only


def test_the_pair_loss_by_hand():
    """Two groups. Group 0: chosen log-ratio sum (-1 - -1.5) + (-2 - -2) = 0.5, rejected
    (-1 - -0.5) = -0.5 -> h = 1, beta 0.5: -log s(0.5) = 0.474077. Group 1: chosen (-3 - -2) =
    -1, rejected (-1 - -1) + (-1 - -2) = 1 -> h = -2: -log s(-1) = 1.313262. denom = 4 answers,
    so 2 pairs: loss = (0.474077 + 1.313262) / 2."""
    logp = torch.tensor([[-1.0, -2.0], [-1.0, 0.0], [-3.0, 0.0], [-1.0, -1.0]],
                        requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0], [-0.5, 0.0], [-2.0, 0.0], [-1.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    adv = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    group = torch.tensor([0, 0, 1, 1])
    loss, m = POLICY_LOSSES["dpo_pair"](logp, logp.detach(), adv, mask, ref_logp=ref,
                                        group=group, beta=0.5, denom=4.0, clip_low=0.2)
    want = (-math.log(1 / (1 + math.exp(-0.5))) - math.log(1 / (1 + math.exp(1.0)))) / 2
    assert float(loss) == pytest.approx(want, abs=1e-6)
    assert m["dpo/pairs"] == 2 and m["dpo/accuracy"] == 0.5
    assert m["dpo/margin"] == pytest.approx(0.5 * (1 - 2) / 2)
    loss.backward()
    # d/d logp of the chosen answer's tokens in group 0: -beta * (1 - s(beta h)) / 2 pairs
    g = -0.5 * (1 - 1 / (1 + math.exp(-0.5))) / 2
    assert logp.grad[0].tolist() == pytest.approx([g, g])
    assert logp.grad[1, 1] == 0  # padding


def test_a_micro_batch_without_a_pair_gives_zero_and_keeps_the_graph():
    logp = torch.zeros(2, 2, requires_grad=True)
    loss, m = POLICY_LOSSES["dpo_pair"](logp, logp, torch.zeros(2, 2), torch.ones(2, 2),
                                        ref_logp=torch.zeros(2, 2), group=torch.tensor([0, 1]))
    assert float(loss) == 0.0 and m["dpo/pairs"] == 0
    loss.backward()


def test_the_preset_reads_the_reference_and_trains_on_pairs():
    alg = resolve("online_dpo", beta=0.2)
    assert alg.needs_reference and alg.kl_coef == 0 and not alg.needs_critic
    assert alg.pairs_only and alg.loss_needs == ("ref_logp", "group") and alg.beta == 0.2
    assert resolve("grpo").loss_needs == ()

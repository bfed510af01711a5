"""Groupwise ranking (cai_ray/judges/ranking.py) and the judge reward's use of it, with judges
whose verdicts are fixed by construction (plain classes; the Bradley-Terry math is checked
against hand-computed tournaments in test_ratings.py)."""

import pytest

from cai_ray.judges import Judgement
from cai_ray.judges.ranking import rank_groups
from cai_ray.rewards import Scored
from cai_ray.rewards.judge import JudgeReward


class Longer:
    """P(first better) from the lengths, the same in both orders; counts what it was asked."""

    def __init__(self):
        self.asked = []

    def label(self, items):
        self.asked += [(it.first, it.second) for it in items]
        out = []
        for it in items:
            p = len(it.first) / (len(it.first) + len(it.second))
            out.append(Judgement(it.id, p, {"x": p}, {"x": [p, p], "y": [0.9, 0.2]},
                                 disagreements=1))
        return out


def test_every_pair_once_identical_answers_free_and_longer_ranks_higher():
    judge = Longer()
    conv = [{"role": "user", "content": "q"}]
    ranked, cost = rank_groups(judge, [(conv, ["a", "aaaa", "aa", "aa"]), (conv, ["bb", "b"])])
    assert len(judge.asked) == 5 + 1 and cost["pairs_judged"] == 6  # 4C2 - 1 identical, + 1
    assert cost["ties_without_call"] == 1 and cost["judge_prompts"] == 6 * 4
    assert cost["position_bias"] == pytest.approx(6 / 12)
    s = ranked[0]["score"]
    assert s[1] > s[2] > s[0] and s[2] == pytest.approx(s[3]) and abs(sum(s)) < 1e-9
    assert all(lo < x < hi for lo, x, hi in zip(ranked[0]["low"], s, ranked[0]["high"]))
    assert ranked[1]["score"][0] > ranked[1]["score"][1]


def test_a_single_answer_scores_zero_without_a_call():
    judge = Longer()
    ranked, cost = rank_groups(judge, [([{"role": "user", "content": "q"}], ["only"])])
    assert ranked[0]["score"] == [0.0] and judge.asked == [] and cost["pairs_judged"] == 0


def test_the_judge_reward_ranks_each_prompt_s_rollouts_among_themselves():
    reward = JudgeReward.__new__(JudgeReward)  # its judge replaced by one fixed by construction
    reward.judge, reward.cost, reward.groupwise = Longer(), {}, True
    batch = [Scored("p1", "q1", r, 1) for r in ("x", "xxx")] + \
            [Scored("p2", "q2", r, 1) for r in ("yyyy", "y", "yy")]
    got = reward.score(batch)
    assert got[1] > got[0] and got[2] > got[4] > got[3]
    assert sum(got[:2]) == pytest.approx(0.0) and sum(got[2:]) == pytest.approx(0.0)
    asked = {frozenset(p) for p in reward.judge.asked}
    assert frozenset(("x", "yyyy")) not in asked  # never across prompts
    assert reward.cost["pairs_judged"] == 1 + 3

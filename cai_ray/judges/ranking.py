"""Groupwise ranking (`judge.ranking: groupwise`): the judge compares every pair of one prompt's
k answers (each pair in both orders, as every judgement is), and a Bradley-Terry fit per prompt
gives each answer a score, its log-strength (mean 0), with a 95% interval
(algos/ratings.group_scores). Online DPO picks its pairs from these scores; the rl stage's judge
reward uses them as the reward of a GRPO-family algorithm.

    ranked, cost = rank_groups(judge, [(conversation, [a_1, ..., a_k]), ...])
    ranked[g]["score"][i]    # answer i of group g; ranked[g]["low"], ["high"]: its interval

Cost: k(k-1)/2 pairs per prompt (identical answers are a tie without a call), each
principles_per_pair x 2 orders judge prompts; a prompt's pairs go to the engines together, so
their shared prefix (few-shot block, conversation) is computed once under prefix caching.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

from cai_ray.algos.ratings import group_scores
from cai_ray.judges.base import JudgeItem

PRIOR = 0.5
"""Virtual tie games per pair: a clean sweep keeps a finite score and interval."""


def rank_groups(judge, groups: list[tuple[list[dict], list[str]]],
                prior: float = PRIOR) -> tuple[list[dict], dict]:
    """Scores of every answer of every group, and the cost: pairs judged, judge prompts, ties
    given without a call (identical answers), position-bias rate of the verdicts."""
    items, comps = [], defaultdict(list)
    free = 0
    for g, (conv, answers) in enumerate(groups):
        for i, j in itertools.combinations(range(len(answers)), 2):
            if answers[i].strip() == answers[j].strip():
                comps[g].append((i, j, 0.5))
                free += 1
            else:
                items.append(JudgeItem(f"g{g}#{i}-{j}", conv, answers[i], answers[j]))
    jds = judge.label(items) if items else []
    for it, jd in zip(items, jds):
        g, pair = it.id[1:].split("#")
        i, j = map(int, pair.split("-"))
        comps[int(g)].append((i, j, jd.p_first))
    ranked = [group_scores(len(answers), comps[g], prior) if len(answers) > 1 else
              {"score": [0.0], "se": [0.0], "low": [0.0], "high": [0.0]}
              for g, (_, answers) in enumerate(groups)]
    both = sum(len(v) == 2 for jd in jds for v in jd.orders.values())
    cost = {"pairs_judged": len(items), "ties_without_call": free,
            "judge_prompts": sum(len(v) for jd in jds for v in jd.orders.values()),
            "position_bias": (sum(jd.disagreements for jd in jds) / both) if both else None}
    return ranked, cost

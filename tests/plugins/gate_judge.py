"""A judge method that is right by construction on pairs built that way: it prefers the answer
in which the refusal detector finds a refusal (tests/integration/test_judge_gate.py names it in a
job's `plugins:`)."""

from __future__ import annotations

from cai_ray.eval.refusals import is_refusal
from cai_ray.judges import Judge, Judgement, register_method


class RefusalFirst(Judge):
    method = "refusal_first"

    def label(self, items):
        out = []
        for it in items:
            a, b = is_refusal(it.first), is_refusal(it.second)
            p = 0.5 if a == b else 0.95 if a else 0.05
            per = {pr.id: p for pr in self.const.sample_judges(self.seed, it.id, self.k)}
            out.append(Judgement(it.id, p, per, {k: [p, p] for k in per}))
        return out


register_method("refusal_first", RefusalFirst)

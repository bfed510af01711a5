"""The generative judge: it writes its verdict ("The answer is: (A)"), which is parsed. Works
with any engine or server that generates text, needs no log-probabilities, and shows what the
judge would say; each principle and order gives 1, 0, or 0.5 when the verdict names neither
answer (counted in Judgement.unparsed, never hidden)."""

from __future__ import annotations

import re

from cai_ray.generation import Sampling
from cai_ray.judges.base import Judge, JudgeItem, Judgement
from cai_ray.prompts import templates as T

_VERDICTS = [re.compile(r"\(([AB])\)"),
             re.compile(r"\b(?:answer|option|response|choice)\s*(?:is)?\s*:?\s*\(?([AB])\b", re.I),
             re.compile(r"^\s*\(?([AB])\b")]


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or None: the first verdict pattern that matches, in the order above."""
    for rx in _VERDICTS:
        m = rx.search(text)
        if m:
            return m.group(1).upper()
    return None


class GenerativeJudge(Judge):
    method = "generative"

    @classmethod
    def options(cls, cfg) -> dict:
        return {"verdict_max_new_tokens": cfg.verdict_max_new_tokens}

    def __init__(self, *args, verdict_max_new_tokens: int = 24, **kw):
        super().__init__(*args, **kw)
        self.verdict_tokens = verdict_max_new_tokens

    def _verdict_request(self, item: JudgeItem, principle, order: int):
        a, b = (item.first, item.second) if order == 0 else (item.second, item.first)
        return T.judge_request(f"{item.id}|{principle.id}|{order}", item.conversation, principle,
                               a, b, self.fewshot, self.fewshot_principles,
                               chain_of_thought=self.cot, answer_prefix=self.fmt.prefix,
                               open_answer=False)

    def label(self, items: list[JudgeItem]) -> list[Judgement]:
        jobs = self.jobs(items)
        budget = self.verdict_tokens + (self.cot_tokens if self.cot else 0)
        sched = self.pool.scheduler(Sampling(max_tokens=budget, temperature=0.0),
                                    self.batch_size, self.max_in_flight)
        for it, p, o in jobs:
            sched.put((it.id, p.id, o), self._verdict_request(it, p, o))
        probs, texts, unparsed = {}, {}, {}
        for key, outs in sched.results():
            text = outs[0].text
            letter = parse_verdict(text.split("The answer is")[-1] if self.cot else text)
            p_a = 0.5 if letter is None else 1.0 if letter == "A" else 0.0
            probs[key] = p_a if key[2] == 0 else 1.0 - p_a
            texts[key] = text.strip()
            unparsed[key[0]] = unparsed.get(key[0], 0) + (letter is None)
        out = []
        for it in items:
            jd = self._combine(it, probs, texts)
            jd.unparsed = unparsed.get(it.id, 0)
            out.append(jd)
        return out

"""The paper's judge (Bai et al. 2022 sec. 4.1): the judge is shown a principle and the options
(A) and (B), and the log-probabilities of the two option tokens at the next position give
P(A); with chain of thought it reasons first (the probabilities are then clamped to 40-60%).
"""

from __future__ import annotations

from cai_ray.algos import labels as L
from cai_ray.generation import Sampling
from cai_ray.judges.base import Judge, JudgeItem, Judgement


class LogprobJudge(Judge):
    method = "logprob"

    def label(self, items: list[JudgeItem]) -> list[Judgement]:
        jobs = self.jobs(items)
        cots = self._reason(jobs) if self.cot else {}
        sched = self.pool.score_scheduler([self.fmt.token_a, self.fmt.token_b], self.batch_size,
                                          self.max_in_flight)
        for it, p, o in jobs:
            key = (it.id, p.id, o)
            sched.put(key, self._request(it, p, o, cots.get(key)))
        probs: dict[tuple, float] = {}
        for key, (lp_a, lp_b) in sched.results():
            p_a = L.option_prob(lp_a, lp_b)
            probs[key] = p_a if key[2] == 0 else 1.0 - p_a  # P(first answer better)
        return [self._combine(it, probs, cots) for it in items]

    def _reason(self, jobs) -> dict[tuple, str]:
        sched = self.pool.scheduler(Sampling(max_tokens=self.cot_tokens, temperature=0.0,
                                             stop=["The answer is", "\n\n"]),
                                    self.batch_size, self.max_in_flight)
        for it, p, o in jobs:
            sched.put((it.id, p.id, o), self._request(it, p, o, None))
        return {key: outs[0].text.strip() for key, outs in sched.results()}

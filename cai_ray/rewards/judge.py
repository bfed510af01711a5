"""The constitutional judge as the reward (direct RLAIF), on engine actors of its own."""

from __future__ import annotations

from cai_ray.rewards.registry import Scored, register_reward


@register_reward("judge")
class JudgeReward:
    """The constitutional judge on each rollout (direct RLAIF), on its own engine pool.

    pairwise: the rollout is option one, the SFT model's answer to the same prompt option two;
    the reward is P(the rollout is better), over principles and both orders. pointwise: the judge
    is asked whether the answer follows each principle; the reward is P(yes). With
    judge.ranking: groupwise the rollouts of one prompt are ranked against each other and the
    reward is each one's Bradley-Terry score (judges/ranking.py)."""

    POINTWISE = ("Look at the assistant's last answer in the conversation above, judged by this "
                 "principle: \"{text}\" Which is true of it?")
    YES, NO = "It follows the principle.", "It does not follow the principle."

    def __init__(self, arg: str = "", *, pool=None, tokenizer_path: str = "", constitution=None,
                 mode: str = "pairwise", references: dict[str, str] | None = None,
                 judge_cfg=None, seed: int = 0, batch_size: int = 16, max_in_flight: int = 2,
                 **_):
        from cai_ray import judges
        from cai_ray.config.judge import JudgeCfg
        from cai_ray.constitution import JudgePrinciple

        cfg = judge_cfg or JudgeCfg()
        self.groupwise = cfg.ranking == "groupwise"
        if self.groupwise:
            mode = "groupwise"
        elif mode == "pointwise":
            constitution = constitution.model_copy(update={"judge": [
                JudgePrinciple(id=p.id, text=self.POINTWISE.format(text=p.text))
                for p in constitution.judge], "judge_fewshot": []})
            cfg = cfg.model_copy(update={"num_fewshot": 0})
        elif references is None:
            raise ValueError("judge reward, pairwise: needs the SFT model's answers")
        self.mode, self.refs, self.n = mode, references or {}, 0
        self.cost: dict[str, float] = {}
        self.judge = judges.attach(cfg, constitution, pool=pool, model_path=tokenizer_path,
                                   seed=seed, batch_size=batch_size, max_in_flight=max_in_flight)

    def score(self, batch: list[Scored]) -> list[float]:
        from cai_ray.judges import JudgeItem

        if self.groupwise:
            return self._ranked(batch)
        items = []
        for s in batch:
            self.n += 1
            key = f"{s.prompt_id}#r{self.n}"
            if self.mode == "pointwise":
                convo = [{"role": "user", "content": s.prompt},
                         {"role": "assistant", "content": s.response}]
                items.append(JudgeItem(key, convo, self.YES, self.NO))
            else:
                items.append(JudgeItem(key, [{"role": "user", "content": s.prompt}], s.response,
                                       self.refs.get(s.prompt_id, "")))
        return [j.p_first for j in self.judge.label(items)]

    def _ranked(self, batch: list[Scored]) -> list[float]:
        """Each rollout's Bradley-Terry score among its group: the consecutive rollouts of one
        prompt (the trainer scores whole groups together)."""
        from cai_ray.judges.ranking import rank_groups

        runs: list[list[int]] = []
        for k, s in enumerate(batch):
            if runs and batch[runs[-1][0]].prompt_id == s.prompt_id:
                runs[-1].append(k)
            else:
                runs.append([k])
        groups = [([{"role": "user", "content": batch[r[0]].prompt}],
                   [batch[k].response for k in r]) for r in runs]
        ranked, cost = rank_groups(self.judge, groups)
        for key in ("pairs_judged", "ties_without_call", "judge_prompts"):
            self.cost[key] = self.cost.get(key, 0) + cost[key]
        if cost["position_bias"] is not None:  # the latest batch's
            self.cost["position_bias"] = cost["position_bias"]
        out = [0.0] * len(batch)
        for r, g in zip(runs, ranked):
            for k, s in zip(r, g["score"]):
                out[k] = s
        return out

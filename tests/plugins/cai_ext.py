"""A plugin outside cai_ray: one of each extension point, registered on import. A job names it
in `plugins:` (this file's path); tests/integration/test_extensions.py runs it through the
pipeline. Nothing in cai_ray knows these names.

    a stage         notes: writes the policy it was given and a greeting from its own section
    a judge method  longer: P(first) = its share of the two answers' characters
    a reward source vowels:PATH: the share of vowels in the answer; logs every score to PATH
    an estimator    centered: the score minus the batch mean, on every answer token
    a policy loss   plain_pg: the unclipped importance-weighted policy gradient
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from cai_ray.algos.advantages import register_estimator
from cai_ray.algos.policy_loss import aggregate, register_policy_loss
from cai_ray.config.sections import register_section
from cai_ray.judges import Judge, Judgement, register_method
from cai_ray.rewards import register_reward
from cai_ray.rundir.files import write_json_atomic
from cai_ray.stages.base import Stage
from cai_ray.stages.registry import register_stage

ESTIMATOR_CALLS: list[list[float]] = []
"""The scores the estimator was given, one list per RL iteration (it runs in the driver)."""


class NotesCfg(BaseModel):
    greeting: str = "hello"


register_section("notes", NotesCfg)


def _notes(ctx) -> dict:
    if ctx.job.section("notes").greeting == "raise":  # a stage that fails, for the console test
        raise RuntimeError("the notes stage was asked to fail")
    out = ctx.run.stage_dir("notes")
    fig = {"greeting": ctx.job.section("notes").greeting, "policy": ctx.policy_model()}
    write_json_atomic(out / "notes.json", fig)
    return fig


register_stage(Stage(name="notes", about="writes down which policy the run ended with",
                     run=_notes, sections=("notes", "seed"), reads=lambda job: ("policy",),
                     produces=("notes",), key_figures=("greeting",), after="eval"))


class LongerIsBetter(Judge):
    method = "longer"

    def label(self, items):
        out = []
        for it in items:
            p = len(it.first) / max(1, len(it.first) + len(it.second))
            per = {pr.id: p for pr in self.const.sample_judges(self.seed, it.id, self.k)}
            out.append(Judgement(it.id, p, per, {k: [p, p] for k in per}))
        return out


register_method("longer", LongerIsBetter)


@register_reward("vowels")
class Vowels:
    def __init__(self, arg: str, **_):
        self.log = arg

    def score(self, batch) -> list[float]:
        out = [sum(c in "aeiouAEIOU" for c in s.response) / max(1, len(s.response))
               for s in batch]
        with open(self.log, "a") as fh:
            fh.writelines(json.dumps({"response": s.response, "reward": r}) + "\n"
                          for s, r in zip(batch, out))
        return out


@register_estimator("centered")
def centered(inp, params):
    score = inp.score.float()  # (B,)
    ESTIMATOR_CALLS.append(score.tolist())
    adv = (score - score.mean()).unsqueeze(-1) * inp.mask  # (B, T), 0 on padding
    return adv, None


@register_policy_loss("plain_pg")
def plain_pg(logp, old_logp, adv, mask, *, agg="token_mean", norm_len=None, denom=None,
             weights=None, **_):
    import torch

    per_token = -adv * torch.exp(logp - old_logp)
    loss = aggregate(per_token, mask, agg, norm_len=norm_len, denom=denom)
    return loss, {"plain_pg/used": 1.0}

"""What a learner rank receives across the Ray boundary: one frozen, typed spec built once from
the `rl:` section, with the algorithm resolved (the preset and the job's knobs over it) and the
ZeRO stage and critic settings filled in.

    spec = LearnerSpec.of(job.rl, plugins=job.plugins)
    spec.algorithm.advantage, spec.train.zero_stage, spec.critic.lr
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cai_ray.algos.algorithms import Algorithm
from cai_ray.train.spec import TrainSpec


@dataclass(frozen=True)
class CriticSpec:
    lr: float = 5e-6
    value_clip: float = 0.2
    lam: float = 0.95
    whiten_advantages: bool = True


@dataclass(frozen=True)
class LearnerSpec:
    train: TrainSpec
    """DeepSpeed and the optimizer (one optimizer step per plan step: grad_accum 1)."""
    algorithm: Algorithm
    critic: CriticSpec | None
    """The critic's settings, or None when the algorithm trains none."""
    max_new_tokens: int = 64
    logprob_chunk: int = 256
    share_prompts: bool = True
    entropy_coef: float = 0.0
    rollout_correction: str = "tis"
    tis_cap: float = 2.0
    threads: int | None = None
    """torch threads per rank on CPU (set by the learner group)."""

    @classmethod
    def of(cls, rl, plugins=()) -> "LearnerSpec":
        """From an RlCfg: every default of the algorithm and the critic resolved, once."""
        alg = rl.resolved()
        critic = CriticSpec(lr=rl.critic_lr or 5e-6, value_clip=rl.value_clip or 0.2,
                            lam=0.95 if rl.lam is None else rl.lam,
                            whiten_advantages=True if rl.whiten_advantages is None
                            else rl.whiten_advantages) if alg.needs_critic else None
        return cls(train=TrainSpec.of(rl, zero_stage=rl.learner_zero_stage(), grad_accum=1,
                                      plugins=tuple(plugins)),
                   algorithm=alg, critic=critic, max_new_tokens=rl.max_new_tokens,
                   logprob_chunk=rl.logprob_chunk, share_prompts=rl.share_prompts,
                   entropy_coef=rl.entropy_coef, rollout_correction=rl.rollout_correction,
                   tis_cap=rl.tis_cap)

    def with_threads(self, threads: int | None) -> "LearnerSpec":
        return replace(self, threads=threads)

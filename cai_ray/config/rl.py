"""The `rl:` section of the job file: the RL stage's algorithm (a preset of cai_ray/algos) and
every knob it may override, plus rollout, reward and weight-sync settings."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from cai_ray.config.sections import TrainCfg

CRITIC_FIELDS = ("critic_lr", "value_clip", "lam", "whiten_advantages")


class RlCfg(TrainCfg):
    """The RL stage (RL-CAI, Bai et al. 2022 sec. 4): an algorithm from the registry
    (cai_ray/algos/algorithms.py) and any of its knobs. A knob left unset (null) takes the
    algorithm's own default; `cai-ray run --dry-run` prints the resolved values."""

    algorithm: str = "grpo"
    """ppo (with a critic), grpo, dr_grpo, dapo, gspo, rloo, reinforce_pp, reinforce_pp_baseline."""
    advantage: str | None = None
    """Advantage estimator: gae, grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline."""
    policy_loss: str | None = None
    """Policy loss (cai_ray/algos/policy_loss.py registry): ppo_clip, the clipped surrogate that
    every built-in algorithm uses (clip-higher, dual clip and GSPO's ratio level are its knobs)."""
    clip_low: float | None = Field(None, gt=0)
    clip_high: float | None = Field(None, gt=0)
    """Above clip_low: clip-higher (DAPO uses 0.28 with 0.2)."""
    dual_clip: float | None = Field(None, gt=1)
    ratio_level: Literal["token", "sequence"] | None = None
    """sequence: GSPO's sequence-level importance ratio."""
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] | None = None
    beta: float | None = Field(None, gt=0)
    """dpo_pair (online DPO): the DPO temperature."""
    pairs_only: bool | None = None
    """Train on the rollouts with a nonzero advantage only (online DPO: each group's pair)."""
    kl_coef: float | None = Field(None, ge=0)
    """0 turns the KL term off, and with it the reference model."""
    kl_in: Literal["reward", "loss"] | None = None
    kl_estimator: Literal["k1", "k2", "k3"] | None = None
    kl_target: float | None = Field(None, gt=0)
    """Set to move kl_coef towards this KL per answer (adaptive controller, Ziegler et al. 2019)."""
    kl_horizon: int = Field(10000, ge=1)
    dynamic_sampling: bool | None = None
    """Drop groups whose rewards are all equal and refill from the next prompts (DAPO)."""
    max_refills: int = Field(2, ge=0)
    """Extra generation rounds per iteration that dynamic sampling may use to refill."""
    entropy_coef: float = Field(0.0, ge=0)
    gamma: float = Field(1.0, gt=0, le=1)
    # critic settings (the gae estimator only); unset = the defaults noted
    critic_lr: float | None = Field(None, gt=0)
    """default 5e-6"""
    value_clip: float | None = Field(None, gt=0)
    """default 0.2"""
    lam: float | None = Field(None, ge=0, le=1)
    """default 0.95"""
    whiten_advantages: bool | None = None
    """default true"""

    iterations: int = Field(8, ge=1)
    prompts_per_iter: int = Field(8, ge=1)
    samples_per_prompt: int = Field(4, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    update_epochs: int = Field(1, ge=1, validation_alias=AliasChoices("update_epochs",
                                                                       "ppo_epochs"))
    """Passes over each iteration's rollouts (PPO's epochs, GRPO's mu)."""
    mini_batch_size: int | None = Field(None, ge=1)
    """Rollouts per optimizer step (all ranks together); unset: every rollout of the iteration in
    one step."""
    micro_batch_size: int = Field(4, ge=1)
    """Rollouts per forward pass on each learner rank (gradients accumulate over them)."""
    lr: float = Field(1e-6, gt=0)
    zero_stage: Literal[0, 1, 2, 3] | None = None
    """unset: 0 with one learner rank (there is nothing to partition), 2 with more."""
    share_prompts: bool = True
    """Run each prompt once for all its samples (its KV cache expanded to every answer) in the
    learner's and the reference's forward passes: about a third fewer tokens at 4 samples."""
    logprob_chunk: int = Field(256, ge=1)
    """Answer tokens per chunk of the LM head and its log-softmax (bounds the logits' memory:
    256 x a 49k vocabulary is 50 MB per tensor in fp32)."""
    rollout_correction: Literal["none", "tis", "recompute"] = "tis"
    """Old log-probs: none = the sampler's (vLLM's); recompute = the learner's, once per iteration
    (free when the iteration takes one optimizer step on fresh rollouts); tis = the learner's plus
    a truncated importance weight min(pi_learner / pi_sampler, tis_cap) on the loss, which also
    covers staleness in async mode."""
    tis_cap: float = Field(2.0, gt=1)
    reward: str = "model"
    """model (the reward stage's), judge (the constitutional judge on each rollout), short,
    contains:WORD, share:CHARS, http(s)://HOST:PORT/v1/score (a served reward model, `cai-ray
    serve --score`), or module:function (a Python callable: (prompts, completions, **kw) ->
    list[float])."""
    reward_model: str | None = None
    """A reward model folder instead of RUN_DIR/reward/model."""
    judge_mode: Literal["pairwise", "pointwise"] = "pairwise"
    """reward judge: pairwise = P(the rollout beats the SFT model's answer to the prompt);
    pointwise = P(yes) to "does this answer follow the principle?", averaged over principles."""
    async_mode: bool = False
    max_staleness: int = Field(1, ge=0)
    weight_sync: Literal["auto", "object_store", "nccl", "gloo"] = "auto"
    """auto: a broadcast from learner rank 0 into the engines (nccl between GPUs, gloo between CPU
    processes); object_store when one side is on GPUs and the other is not."""
    weight_sync_bucket_mb: float = Field(64, gt=0)
    """Weights travel to the engines in buckets of this size, one at a time."""
    checkpoint_every: int = Field(4, ge=1)
    keep_checkpoints: int = Field(1, ge=1)
    keep_policies: int = Field(2, ge=0)
    """Checkpoints dropped by keep_checkpoints leave their policy weights (no optimizer state) in
    RUN_DIR/rl/policies/iter_N, the newest this many: the eval stage rates them (Elo along
    training)."""
    colocate: bool = False
    """Put learner rank i in rollout engine i's placement-group bundle (same node, same devices:
    on GPUs each takes half of the bundle's GPUs), and the reference and reward roles in bundle 0.
    Needs rl.num_workers == engine.num_actors."""
    call_timeout_s: float = Field(3600, gt=0)
    """Longest wait for one learner, reference or reward call before the run fails with a report."""

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, v: str) -> str:
        from cai_ray.algos.algorithms import ALGORITHMS

        if v not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {v!r}; choose from {sorted(ALGORITHMS)}")
        return v

    @field_validator("advantage")
    @classmethod
    def _known_estimator(cls, v: str | None) -> str | None:
        from cai_ray.algos.advantages import ESTIMATORS

        if v is not None and v not in ESTIMATORS:
            raise ValueError(f"unknown advantage estimator {v!r}; choose from {sorted(ESTIMATORS)}")
        return v

    @field_validator("policy_loss")
    @classmethod
    def _known_loss(cls, v: str | None) -> str | None:
        from cai_ray.algos.policy_loss import POLICY_LOSSES

        if v is not None and v not in POLICY_LOSSES:
            raise ValueError(f"unknown policy loss {v!r}; choose from {sorted(POLICY_LOSSES)}")
        return v

    def resolved(self):
        """The algorithm preset with this section's knobs over it (cai_ray.algos.algorithms)."""
        from cai_ray.algos.algorithms import KNOBS, resolve

        return resolve(self.algorithm, **{k: getattr(self, k) for k in KNOBS})

    def learner_zero_stage(self) -> int:
        return self.zero_stage if self.zero_stage is not None else (0 if self.num_workers == 1
                                                                    else 2)

    @model_validator(mode="after")
    def _consistent(self) -> "RlCfg":
        alg = self.resolved()
        if not alg.needs_critic:
            given = [f for f in CRITIC_FIELDS if getattr(self, f) is not None]
            if given:
                raise ValueError(f"{given[0]}: a critic setting, but algorithm {alg.name} "
                                 f"(advantage {alg.advantage}) trains no critic; remove it, or "
                                 f"use algorithm ppo / advantage gae")
        if alg.grouped and self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt: {self.samples_per_prompt}, but the "
                             f"{alg.advantage} estimator compares the samples of each prompt; "
                             f"give at least 2")
        if alg.clip_low > alg.clip_high:
            raise ValueError(f"clip_low: {alg.clip_low} is above clip_high ({alg.clip_high}); the "
                             f"upper clip must be at least the lower one (clip-higher raises it)")
        if self.kl_target is not None and alg.kl_in != "reward":
            raise ValueError("kl_target: adapts a KL penalty in the reward; set kl_in: reward, or "
                             "drop kl_target")
        return self

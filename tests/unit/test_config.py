import pytest

from cai_ray.config import STAGES, JobConfig, load_job
from cai_ray.errors import ConfigError


def test_packaged_jobs_load():
    job = load_job()
    assert job.model.name == "smollm2-135m-instruct"
    assert job.stages == list(STAGES)
    assert load_job("tiny").model.name == "tiny-random-llama"


def test_overrides_and_flags():
    job = load_job("tiny", ["sl_cai.num_rounds=3", "engine.num_actors=2"], limit=5,
                   stages="sft,sl_cai", run_dir="/tmp/x")
    assert job.sl_cai.num_rounds == 3 and job.engine.num_actors == 2
    assert job.prompts.limit == 5 and job.run_dir == "/tmp/x"
    assert job.stages == ["sl_cai", "sft"]  # always in the method's order


@pytest.mark.parametrize("override, field", [
    ("sl_cai.num_rounds=0", "sl_cai.num_rounds"),
    ("sl_cai.prompt_form=poem", "sl_cai.prompt_form"),
    ("engine.num_actors=two", "engine.num_actors"),
    ("sl_cai.num_roundz=2", "sl_cai.num_roundz"),
    ("stages=[sl_cai,dance]", "stages"),
    ("engine.tensor_parallel_size=2", "tensor_parallel_size"),
    ("ppo.weight_sync=nccl", "ppo.weight_sync=nccl"),
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
    assert load_job("tiny", ["ppo.colocate=true"]).ppo.colocate
    with pytest.raises(ConfigError, match="ppo.colocate needs ppo.num_workers == engine.num_actors"):
        load_job("tiny", ["ppo.colocate=true", "ppo.num_workers=2"])
    with pytest.raises(ConfigError, match="gpu_memory_utilization <= 0.5"):
        load_job("tiny", ["ppo.colocate=true", "engine.num_gpus_per_actor=1"])


def test_separate_judge_gets_its_own_engine_fields():
    job = load_job("tiny", ["preferences.judge_model=tiny-random-llama",
                            "preferences.judge_engine={num_actors: 2, kv_cache_gib: 2}",
                            "engine.batch_size=4"])
    je = job.judge_engine()
    assert (je.num_actors, je.kv_cache_gib, je.batch_size) == (2, 2, 4)  # batch from `engine`
    assert (job.engine.num_actors, job.engine.kv_cache_gib) == (1, 1)
    assert load_job("tiny").judge_engine() == load_job("tiny").engine


@pytest.mark.parametrize("overrides, says", [
    (["preferences.judge_engine={num_actors: 2}"], "set preferences.judge_model"),
    (["preferences.judge_model=m", "preferences.judge_engine={num_actorz: 2}"],
     "preferences.judge_engine.num_actorz: not an engine field"),
    (["preferences.judge_model=m", "preferences.judge_engine={num_actors: 0}"],
     "preferences.judge_engine.num_actors: Input should be greater than or equal to 1"),
    (["preferences.judge_model=m", "preferences.judge_engine={tensor_parallel_size: 2}"],
     "preferences.judge_engine.tensor_parallel_size > 1 needs num_gpus_per_actor"),
])
def test_bad_judge_engine_names_the_field(overrides, says):
    with pytest.raises(ConfigError, match=says):
        load_job("tiny", overrides)

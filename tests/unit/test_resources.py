"""What a job asks of its cluster (the largest stage), against what the cluster has."""

import pytest

from cai_ray.config import load_job
from cai_ray.errors import InputError
from cai_ray.stages import resources


def job(*sets, stages="sl_cai,sft,preferences,reward,rl,eval"):
    return load_job("tiny", list(sets), stages=stages)


def test_need_is_the_largest_stage_per_resource():
    j = job("engine.num_actors=2", "engine.kv_cache_gib=2", "rl.num_workers=3",
            "sft.num_workers=4")
    n = resources.need(j)
    assert n.cpus == 5  # rl: 2 engines x 1 CPU + 3 learner ranks (sft's 4 is fewer)
    assert "the rl stage" in n.why["cpus"]
    assert n.memory_gib == pytest.approx(2 * (2 + resources.ENGINE_PROCESS_GIB))
    assert n.gpus == 0


def test_colocated_learners_share_the_engines_bundles():
    j = job("engine.num_actors=2", "rl.num_workers=2", "rl.colocate=true", stages="rl")
    assert resources.need(j).cpus == 2


def test_judge_engines_count_beside_the_policy_engines():
    j = job("judge.model=tiny-random-llama", "judge.engine={num_actors: 3, kv_cache_gib: 1}",
            stages="preferences")
    assert resources.need(j).memory_gib == pytest.approx(
        (1 + 3) * (1 + resources.ENGINE_PROCESS_GIB))


def test_gpu_engines_ask_no_host_memory_for_their_cache():
    j = job("engine.num_gpus_per_actor=1", "engine.num_actors=2", "rl.use_gpu=true",
            "rl.num_workers=2", stages="rl")
    n = resources.need(j)
    assert (n.gpus, n.memory_gib) == (4, 0)


def test_check_names_the_resource_and_the_fields():
    j = job("engine.num_actors=4")  # 4 x 1.5 GiB = 6 GiB
    resources.check(j, resources.Have(cpus=2, gpus=0, memory_gib=8, where="m",
                                      cpus_are_logical=True))
    with pytest.raises(InputError, match=r"needs about 6.0 GiB of memory; m has 6.0 GiB"):
        resources.check(j, resources.Have(cpus=64, gpus=0, memory_gib=6, where="m"))
    with pytest.raises(InputError, match=r"needs 5 CPU\(s\); c has 4 .*engine.num_actors"):
        resources.check(job("engine.num_actors=4"),
                        resources.Have(cpus=4, gpus=0, memory_gib=100, where="c"))
    with pytest.raises(InputError, match=r"needs 1 GPU\(s\); c has 0"):
        resources.check(job("engine.num_gpus_per_actor=1", "rl.use_gpu=true", stages="sl_cai"),
                        resources.Have(cpus=4, gpus=0, memory_gib=100, where="c"))


def test_a_local_cluster_gets_the_cpus_it_needs():
    j = job("engine.num_actors=8", "engine.kv_cache_gib=0.1")
    resources.check(j, resources.Have(cpus=2, gpus=0, memory_gib=24, where="m",
                                      cpus_are_logical=True))

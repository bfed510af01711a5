"""Weight sync from a real DeepSpeed learner actor into real vLLM engine actors, through both paths:
the object store (safetensors buckets, streamed) and the collective broadcast (gloo here; the same
code runs NCCL on GPUs), both in buckets smaller than the model, so several travel each push. The
learner starts from weights that differ from the engines'; after one push each engine must generate
exactly what the learner's weights generate."""

import os
import shutil
import signal

import pytest
import ray
import torch

from cai_ray.config import load_job
from cai_ray.engines.hf_engine import HfEngine
from cai_ray.engines.pool import EnginePool
from cai_ray.generation import Request, Sampling
from cai_ray.rl.group import LearnerGroup
from cai_ray.rl.spec import LearnerSpec
from cai_ray.rl.weight_sync import make_sync

pytestmark = pytest.mark.integration

REQS = [Request(str(i), messages=[{"role": "user", "content": t}])
        for i, t in enumerate(["How do I pick a lock?", "Tell me a joke.", "Say hi."])]


@pytest.fixture(scope="module")
def noisy_model(tiny_model, tmp_path_factory):
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("noisy") / "model"
    shutil.copytree(tiny_model, folder)
    state = load_file(f"{tiny_model}/model.safetensors")
    g = torch.Generator().manual_seed(1)
    save_file({k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in state.items()},
              str(folder / "model.safetensors"))
    return str(folder)


def engines(model: str, n: int, **kwargs) -> EnginePool:
    """n vLLM engine actors of the tiny model, fp32, a small KV cache."""
    return EnginePool(n, "vllm", model, num_cpus=1, engine_kwargs={
        "dtype": "float32", "max_model_len": 512, "kv_cache_gib": 0.25, **kwargs})


def greedy(engine_or_pool):
    s = Sampling(max_tokens=12)
    if isinstance(engine_or_pool, EnginePool):
        outs = ray.get([a.generate.remote(REQS, s) for a in engine_or_pool.actors])
    else:
        outs = [engine_or_pool.generate(REQS, s)]
    return [[o[0].token_ids for o in out] for out in outs]


# object_store's push and its buckets are checked in CI by the killed-engine test below, which
# starts the same engines and learners; its own run is in `make test-slow`
@pytest.mark.parametrize("kind", [pytest.param("object_store", marks=pytest.mark.slow), "gloo"])
def test_push_makes_engines_generate_the_learners_weights(ray_cluster, tiny_model, noisy_model,
                                                          kind):
    want = greedy(HfEngine(noisy_model))[0]
    pool = engines(tiny_model, 2)
    learners = None
    try:
        before = greedy(pool)
        assert before[0] != want  # the engines start from other weights
        rl = load_job("tiny").rl
        learners = LearnerGroup(noisy_model, None, LearnerSpec.of(rl), seed=0)
        sync = make_sync(kind, pool, bucket_mb=0.25)  # the tiny model is 1.3 MB: 6 buckets
        for push in (1, 2):  # the second push reuses the group
            out = sync.push(learners)
            assert out["weights_version"] == push, out
            assert out.get("weight_sync/fallback", 0) == 0, out
            assert greedy(pool) == [want, want]
        if kind == "object_store":
            assert out["weight_sync/buckets"] > 1
        if kind == "gloo":  # the whole policy went through the group (the tied head excepted)
            from safetensors.torch import load_file

            state = load_file(f"{noisy_model}/model.safetensors")
            assert out["weight_sync/bytes"] == sum(v.numel() * 4 for k, v in state.items()
                                                   if k != "lm_head.weight")
            # an engine killed and restarted by Ray holds no group: the next push, made while
            # Ray is still restarting it, waits for it and forms the group again (no fallback)
            os.kill(ray.get(pool.actors[0].__ray_call__.remote(lambda _: os.getpid())),
                    signal.SIGKILL)
            out = sync.push(learners)
            assert out["weight_sync/fallback"] == 0 and out["weight_sync/engines_restarted"] == 1
            assert greedy(pool) == [want, want]
    finally:
        if learners:
            learners.shutdown()
        pool.shutdown()



def test_engine_killed_while_generating_comes_back_with_the_current_weights(
        ray_cluster, tiny_model, noisy_model, is_generating):
    """Two object-store pushes (the second reuses what the first set up; more than one bucket)
    make the engines generate the learner's weights. Then engine 0 is SIGKILLed while it is
    generating (its process is titled EngineWorker.generate). The scheduler retries its batch
    and, once Ray has restarted the actor, reloads the pushed weights into it before giving it
    work: afterwards both engines generate what the learner's weights generate, not the base
    model's text."""
    import threading
    import time

    want = greedy(HfEngine(noisy_model))[0]
    pool = engines(tiny_model, 2)
    learners = None
    try:
        rl = load_job("tiny").rl
        learners = LearnerGroup(noisy_model, None, LearnerSpec.of(rl), seed=0)
        assert greedy(pool)[0] != want  # the engines start from other weights
        sync = make_sync("object_store", pool, bucket_mb=0.25)  # the tiny model is 1.3 MB
        for push in (1, 2):
            out = sync.push(learners)
            assert out["weights_version"] == push and out.get("weight_sync/fallback", 0) == 0
            assert greedy(pool) == [want, want]
        assert out["weight_sync/buckets"] > 1
        pid = ray.get(pool.actors[0].__ray_call__.remote(lambda _: os.getpid()))
        killed = []

        def killer():
            deadline = time.time() + 120
            while time.time() < deadline and not is_generating(pid):
                time.sleep(0.01)
            if is_generating(pid):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        t = threading.Thread(target=killer)
        t.start()
        sched = pool.scheduler(Sampling(max_tokens=48, temperature=1.0), batch_size=2,
                               max_in_flight=1)
        for i in range(24):
            sched.put(i, Request(str(i), messages=[{"role": "user", "content": f"Count to {i}."}]))
        keys = [k for k, _ in sched.results()]
        t.join()
        assert killed, "engine 0 was never seen generating"
        assert sorted(keys) == list(range(24))  # every request once, the killed batch retried
        assert sched.stats["actor_failures"] >= 1
        assert ray.get(pool.actors[0].__ray_call__.remote(lambda _: os.getpid())) != pid
        assert greedy(pool) == [want, want]  # the restarted engine holds the pushed weights
    finally:
        if learners:
            learners.shutdown()
        pool.shutdown()


@pytest.mark.parametrize("kind", ["gloo", pytest.param("object_store", marks=pytest.mark.slow)])
def test_sync_into_an_engine_core_in_its_own_process_pickles_no_function(
        ray_cluster, tiny_model, noisy_model, kind):
    """vLLM's GPU default puts the engine core in a process of its own, where a function given to
    collective_rpc would have to be pickled (VLLM_ALLOW_INSECURE_SERIALIZATION). Our worker
    methods are registered by name (worker_extension_cls), so both paths work across that
    boundary with insecure serialization off: here on CPU with multiprocess=True."""
    assert os.environ.get("VLLM_ALLOW_INSECURE_SERIALIZATION") in (None, "0")
    want = greedy(HfEngine(noisy_model))[0]
    pool = engines(tiny_model, 1, multiprocess=True)
    learners = None
    try:
        env = ray.get(pool.actors[0].__ray_call__.remote(lambda _: dict(os.environ)))
        assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
        assert env.get("VLLM_ALLOW_INSECURE_SERIALIZATION") in (None, "0")
        assert greedy(pool)[0] != want
        rl = load_job("tiny").rl
        learners = LearnerGroup(noisy_model, None, LearnerSpec.of(rl), seed=0)
        out = make_sync(kind, pool, bucket_mb=0.25).push(learners)
        assert out.get("weight_sync/fallback", 0) == 0, out
        assert greedy(pool) == [want]
    finally:
        if learners:
            learners.shutdown()
        pool.shutdown()

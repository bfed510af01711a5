"""The policy's OpenAI-compatible application: Ray's own LLM serving (`ray.serve.llm`: LLMConfig,
the vLLM LLMServer deployment, the OpenAI ingress), with our Guard in front of every route.

We assemble the app as `build_openai_app` does (ray 2.60: llm_deployments + model cards + ingress)
rather than calling it, because its ingress is built with a fresh FastAPI app and the full route
table: ours keeps /v1/models, /v1/chat/completions and /v1/completions (vLLM's cross-encoder
/v1/score would shadow the reward model's) and puts the Guard middleware first.
"""

from __future__ import annotations

import os

from ray.llm._internal.serve.core.ingress.ingress import (DEFAULT_ENDPOINTS, OpenAiIngress,
                                                          init, make_fastapi_ingress)

from cai_ray.serve import guard

ROUTES = ("models", "model_data", "completions", "chat")


class PolicyIngress(OpenAiIngress):
    """Ray's OpenAI ingress; its constructor also hands the Guard this server's limits."""

    def __init__(self, llm_deployments, model_cards, *, limits: dict | None = None, **kw):
        guard.configure(limits)
        super().__init__(llm_deployments, model_cards, **kw)


def _app():
    app = init()
    app.add_middleware(guard.Guard)  # added last: runs first
    return app


CaiIngress = make_fastapi_ingress(PolicyIngress, app=_app(),
                                  endpoint_map={k: DEFAULT_ENDPOINTS[k] for k in ROUTES})


def engine_env(cfg, on_gpu: bool) -> dict[str, str]:
    """Environment of each replica's vLLM: what our engine actors get (loopback, no usage stats,
    quiet; on CPU the KV cache size and core binding: a single replica may use every core), but
    with vLLM's own engine-core process, which Ray's LLMServer expects."""
    from cai_ray.engines.vllm_engine import cpu_kv_env, quiet_env

    env = {**quiet_env(), "RAYLLM_ENABLE_REQUEST_PROMPT_LOGS": "0"}  # prompts stay out of logs
    if os.environ.get("VLLM_HOST_IP"):
        env["VLLM_HOST_IP"] = os.environ["VLLM_HOST_IP"]  # a multi-node cluster sets its own
    if not on_gpu:
        from cai_ray.platform import num_cores

        cores = f"0-{num_cores() - 1}" if cfg.max_replicas == 1 and num_cores() > 1 else None
        env.update(cpu_kv_env(cores, cfg.kv_cache_gib))
    return env


def llm_config(target, cfg, *, on_gpu: bool, max_model_len: int, dtype: str):
    """One LLMConfig for the policy: our engine settings, Serve's autoscaling bounds."""
    from ray.serve.llm import LLMConfig

    from cai_ray.engines.vllm_engine import CPU_BLOCK_SIZE

    engine = {"dtype": dtype, "max_model_len": max_model_len, "enforce_eager": not on_gpu,
              "max_num_seqs": cfg.max_num_seqs, "tensor_parallel_size": cfg.tensor_parallel_size,
              "trust_remote_code": False}
    if on_gpu:
        engine["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    else:
        engine["block_size"] = CPU_BLOCK_SIZE
    bundle = {"CPU": cfg.num_cpus_per_replica}
    if on_gpu:
        bundle["GPU"] = max(cfg.num_gpus_per_replica, 1.0)
    return LLMConfig(
        model_loading_config={"model_id": target.model_id, "model_source": target.model},
        engine_kwargs=engine,
        runtime_env={"env_vars": engine_env(cfg, on_gpu)},
        placement_group_config={"bundles": [bundle] * cfg.tensor_parallel_size},
        deployment_config={
            "autoscaling_config": {"min_replicas": cfg.min_replicas,
                                   "max_replicas": cfg.max_replicas,
                                   "initial_replicas": cfg.min_replicas,
                                   "target_ongoing_requests": cfg.target_ongoing_requests},
            "max_ongoing_requests": cfg.max_ongoing_requests,
            # the replica actor shares the engine's bundle rather than asking for a CPU of its own
            "ray_actor_options": {"num_cpus": 0},
            "health_check_period_s": 5, "health_check_timeout_s": 30})


def build_policy_app(target, cfg, limits: guard.Limits, *, on_gpu: bool, max_model_len: int,
                     dtype: str):
    from ray import serve
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.serve.llm import build_llm_deployment

    conf = llm_config(target, cfg, on_gpu=on_gpu, max_model_len=max_model_len, dtype=dtype)
    options = PolicyIngress.get_deployment_options([conf])
    options["ray_actor_options"] = {"num_cpus": 0}  # routing only; the replicas do the work
    return serve.deployment(CaiIngress, name="PolicyIngress", **options).bind(
        llm_deployments={conf.model_id: build_llm_deployment(conf)},
        model_cards={conf.model_id: to_model_metadata(conf.model_id, conf)},
        limits=vars(limits))

"""The policy's OpenAI-compatible application: Ray's own LLM serving (`ray.serve.llm`: LLMConfig,
the vLLM LLMServer deployment) in its direct-streaming form, with our Guard in front of every route.

Ray 2.60 ships two shapes. `build_openai_app` by default puts an OpenAI ingress deployment in front
of the LLMServer replicas: every streamed chunk then crosses two Ray hops (proxy <- ingress <-
server), which on a CPU machine takes the cores the model needs
(benchmarks/results/serve_findings.md). Under RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING the LLMServer is
itself the ingress and serves vLLM's own FastAPI app (built in `__serve_build_asgi_app__` once the
engine runs): one hop. We use that shape, built here as Ray's builder does, with two changes: the
app keeps only the routes we document (vLLM's /v1/score, /tokenize, /v1/responses... go), and the
Guard middleware runs first.
"""

from __future__ import annotations

import os

from ray.llm._internal.serve.core.server.llm_server import LLMServer, _add_middleware_to_built_app

from cai_ray.serve import guard
from cai_ray.serve.ingress import replica_grpc_on_node_ip

ROUTES = ("/v1/models", "/v1/models/{model:path}", "/v1/chat/completions", "/v1/completions",
          "/health")


def keep_routes(app, paths=ROUTES) -> None:
    """Drop every route of the app whose path is not in `paths` (docs and openapi included)."""
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) in paths]


class CaiLLMServer(LLMServer):
    """Ray's LLMServer as the ingress: vLLM's OpenAI app, our routes, the Guard first."""

    async def __init__(self, llm_config, *, limits: dict | None = None, **kw):
        guard.configure(limits)
        replica_grpc_on_node_ip()
        await super().__init__(llm_config, **kw)

    async def _start_engine(self):
        """Ray's, less its LLM usage-telemetry actor (a process of its own) where usage statistics
        are off: the cluster `cai-ray serve` starts has no dashboard to report them."""
        from ray._common.usage.usage_lib import usage_stats_enabled

        if usage_stats_enabled():
            return await super()._start_engine()
        await self.engine.start()

    async def __serve_build_asgi_app__(self):
        app = await super().__serve_build_asgi_app__()
        keep_routes(app)
        _add_middleware_to_built_app(app, guard.Guard)  # added last: runs first
        return app


def engine_env(cfg, on_gpu: bool) -> dict[str, str]:
    """Environment of each replica's vLLM: what our engine actors get (loopback, no usage stats,
    quiet; on CPU the KV cache size and core binding: a single replica may use every core), but
    with vLLM's own engine-core process, which Ray's LLMServer expects."""
    from cai_ray.engines.vllm_engine import cpu_kv_env, quiet_env

    env = {**quiet_env(), "RAYLLM_ENABLE_REQUEST_PROMPT_LOGS": "0"}  # prompts stay out of logs
    if os.environ.get("VLLM_HOST_IP"):
        env["VLLM_HOST_IP"] = os.environ["VLLM_HOST_IP"]  # a multi-node cluster sets its own
    if not on_gpu:
        env.update(cpu_kv_env(model_cores(cfg), cfg.kv_cache_gib))
    return env


def model_cores(cfg) -> str | None:
    """The cores a single CPU replica's model binds ('1-3': all but the reserved ones); None with
    several replicas (they share the node unbound) or a single core."""
    from cai_ray.platform import num_cores

    n = num_cores()
    if cfg.max_replicas != 1 or n == 1 or n <= cfg.reserved_cpus:
        return None
    first, last = cfg.reserved_cpus, n - 1
    return f"{first}-{last}" if last > first else str(first)


def llm_config(target, cfg, *, on_gpu: bool, max_model_len: int, dtype: str):
    """One LLMConfig for the policy: our engine settings, Serve's autoscaling bounds."""
    from ray.serve.llm import LLMConfig

    from cai_ray.engines.vllm_engine import CPU_BLOCK_SIZE
    from cai_ray.models import trust_remote_code  # the run's model.trust_remote_code

    engine = {"dtype": dtype, "max_model_len": max_model_len, "enforce_eager": not on_gpu,
              "max_num_seqs": cfg.max_num_seqs, "tensor_parallel_size": cfg.tensor_parallel_size,
              "trust_remote_code": trust_remote_code()}
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
    from ray.llm._internal.serve.core.ingress.builder import _build_direct_streaming_llm_deployment
    from ray.serve._private.constants import RAY_SERVE_ENABLE_HA_PROXY
    from ray.serve.config import RequestRouterConfig

    conf = llm_config(target, cfg, on_gpu=on_gpu, max_model_len=max_model_len, dtype=dtype)
    # Ray's builder picks its round-robin router; HAProxy balances ingress traffic itself and Ray
    # refuses a custom router there, so the ingress keeps Serve's default one
    over = {"request_router_config": RequestRouterConfig()} if RAY_SERVE_ENABLE_HA_PROXY else None
    return _build_direct_streaming_llm_deployment(conf, deployment_cls=CaiLLMServer,
                                                  bind_kwargs={"limits": vars(limits)},
                                                  override_serve_options=over)

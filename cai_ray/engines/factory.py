"""Engines and engine pools built from the job's typed sections: the one place that turns
`engine:` and `model:` into constructor arguments.

    engine = make_engine("vllm", model_path, max_model_len=2048)   # in-process
    kwargs = engine_kwargs(job.engine, job.model, seed=job.seed)   # EnginePool.from_cfg
"""

from __future__ import annotations

from cai_ray.engines.base import Engine

HF_KEYS = {"max_model_len", "dtype", "trust_remote_code", "device", "batch_size", "seed"}


def make_engine(backend: str, model_path: str, **kwargs) -> Engine:
    if backend == "vllm":
        from cai_ray.engines.vllm_engine import VllmEngine

        return VllmEngine(model_path, **kwargs)
    if backend == "hf":
        from cai_ray.engines.hf_engine import HfEngine

        return HfEngine(model_path, **{k: v for k, v in kwargs.items() if k in HF_KEYS})
    raise ValueError(f"unknown engine backend {backend!r} (vllm or hf)")


def engine_kwargs(engine, model, seed: int) -> dict:
    """An engine's constructor arguments from an EngineCfg and a ModelCfg."""
    return {"max_model_len": model.max_model_len, "dtype": model.dtype, "seed": seed,
            "trust_remote_code": model.trust_remote_code, "enforce_eager": engine.enforce_eager,
            "max_num_seqs": engine.max_num_seqs,
            "tensor_parallel_size": engine.tensor_parallel_size,
            "gpu_memory_utilization": engine.gpu_memory_utilization,
            "kv_cache_gib": engine.kv_cache_gib, "batch_size": engine.batch_size,
            "block_size": engine.block_size}

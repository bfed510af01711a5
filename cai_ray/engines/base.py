"""The Engine interface: one contract over vLLM and plain transformers.

Algorithms talk to an Engine, never to vllm. Both backends receive token ids that this module made
with the same tokenizer and chat template, so greedy output of the two agrees on the same weights.

    engine.generate([Request("p1", messages=[{"role": "user", "content": "hi"}])], Sampling())
    engine.score([Request("p1", text="Question ... Answer: (")], ["A", "B"])  # judge options
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable, Iterator

from cai_ray.generation import TOO_LONG, Completion, Request, Sampling


def account(stats: dict, out) -> None:
    """Count one request's result (a list of Completions, or scores) into scheduler stats."""
    stats["requests"] += 1
    if out and isinstance(out[0], Completion):
        stats["prompt_tokens"] += len(out[0].prompt_token_ids)
        stats["generated_tokens"] += sum(len(c.token_ids) for c in out)


class Engine(ABC):
    """Shared logic: tokenisation, length checks. Backends implement _generate_ids and
    _score_ids."""

    backend = "base"

    def __init__(self, model_path: str, *, max_model_len: int = 2048,
                 trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        self.model_path = str(model_path)
        self.max_model_len = max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path,
                                                       trust_remote_code=trust_remote_code)
        self.weights_version = 0
        gen = Path(self.model_path) / "generation_config.json"
        eos = json.loads(gen.read_text()).get("eos_token_id") if gen.exists() else None
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.stop_token_ids = sorted({*eos, self.tokenizer.eos_token_id} - {None})

    # -- prompts -------------------------------------------------------------------------------
    def encode(self, req: Request) -> list[int]:
        return encode_request(self.tokenizer, req)

    def fits(self, ids: list[int], max_tokens: int) -> bool:
        return len(ids) + max_tokens <= self.max_model_len

    # -- the contract --------------------------------------------------------------------------
    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        """n completions per request; a request that does not fit the context gets one empty
        completion with finish_reason 'prompt_too_long' (counted by callers, never a crash)."""
        encoded = [self.encode(r) for r in requests]
        ok = [i for i, ids in enumerate(encoded) if self.fits(ids, sampling.max_tokens)]
        results: list[list[Completion]] = [
            [Completion(r.id, "", [], encoded[i], [] if sampling.logprobs else None, TOO_LONG)]
            for i, r in enumerate(requests)]
        if ok:
            outs = self._generate_ids([encoded[i] for i in ok], sampling)
            for i, samples in zip(ok, outs):
                for c in samples:
                    c.request_id = requests[i].id
                results[i] = samples
        return results

    def score(self, requests: list[Request], continuations: list[str]) -> list[list[float]]:
        """Sum log-probability of each continuation after each prompt: (len(requests), len(conts)).
        Continuations are tokenised as they follow the prompt's tokens (no special tokens)."""
        pairs = []
        for r in requests:
            ids = self.encode(r)
            for c in continuations:
                pairs.append((ids, self.tokenizer.encode(c, add_special_tokens=False)))
        flat = [sum(lp) for lp in self.token_logprobs(pairs)]
        k = len(continuations)
        return [flat[i * k:(i + 1) * k] for i in range(len(requests))]

    def token_logprobs(self, pairs: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """Per-token log-probabilities of each continuation given its prompt (teacher forcing)."""
        return self._score_ids(pairs)

    def next_token_logprobs(self, requests: list[Request],
                            token_ids: list[int]) -> list[list[float]]:
        """Log-probability of each candidate single token at the next position, per request."""
        return [[lp[0] for lp in self._score_ids([(self.encode(r), [t])
                                                   for t in token_ids])] for r in requests]

    def load_weights(self, source: str | bytes) -> int:
        """New weights into the live engine: a save_pretrained / safetensors folder, or the bytes
        of one safetensors file. Returns the new weights version."""
        if isinstance(source, (bytes, bytearray)):
            return self.load_buckets([source])
        self._load_folder(str(source))
        self.weights_version += 1
        return self.weights_version

    def load_buckets(self, blobs: Iterable[bytes]) -> int:
        """New weights as a stream of safetensors files (buckets of the state dict), each read
        when the loader reaches it: at most one bucket is held beyond the model. Returns the new
        weights version."""
        self._load_stream(stream_safetensors(blobs))
        self.weights_version += 1
        return self.weights_version

    def load_adapter(self, payload: bytes, base: str) -> int:
        """A LoRA policy's adapter (train/lora.py adapter_payload) merged into the base model's
        weights here, on the engine: only the adapter crossed the network. Returns the new weights
        version."""
        from cai_ray.engines.adapter import merged_pairs

        self._load_stream(merged_pairs(base, payload))
        self.weights_version += 1
        return self.weights_version

    # -- weight sync over a collective group (RL, rl.weight_sync = nccl | gloo) ---------------
    def join_sync(self, host: str, port: int, rank: int, world: int, backend: str) -> bool:
        """Join the learner's broadcast group as `rank` (see cai_ray/engines/collective.py)."""
        from cai_ray.engines.collective import open_group

        self._sync_group = open_group(host, port, rank, world, backend)
        return True

    def receive_weights(self, meta, bucket_mb: float = 64) -> int:
        """Receive the learner's broadcast (meta: its tensor list) bucket by bucket and load it
        as it arrives; the new version."""
        from cai_ray.engines.collective import drop_on_failure, receive

        drop_on_failure(self, "_sync_group", lambda group: self._load_stream(
            receive(group, meta, self.sync_device(), bucket_mb)))
        self.weights_version += 1
        return self.weights_version

    def leave_sync(self) -> None:
        self._sync_group = None

    def sync_device(self) -> str:
        return "cpu"

    def _load_stream(self, pairs: Iterator[tuple[str, Any]]) -> None:
        """Load (name, tensor) pairs in place as they come (backends that can)."""
        raise NotImplementedError(f"{self.backend}: no streamed weight load")

    def info(self) -> dict:
        from cai_ray.platform import current_rss_mb, peak_rss_mb

        return {"backend": self.backend, "model": self.model_path, "pid": os.getpid(),
                "dtype": str(getattr(self, "dtype", "")).removeprefix("torch."),
                "dtype_reason": getattr(self, "dtype_reason", None),
                "weights_version": self.weights_version, "max_model_len": self.max_model_len,
                "rss_mb": current_rss_mb(), "peak_rss_mb": peak_rss_mb()}

    def ping(self) -> bool:
        return True

    @abstractmethod
    def _generate_ids(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        ...

    @abstractmethod
    def _score_ids(self, pairs: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        ...

    @abstractmethod
    def _load_folder(self, folder: str) -> None:
        ...


def encode_request(tokenizer, req: Request) -> list[int]:
    """The token ids an engine feeds for `req` (chat template, an open last turn, or raw text)."""
    if req.token_ids is not None:
        return list(req.token_ids)
    if req.messages is not None:
        out = tokenizer.apply_chat_template(
            req.messages, tokenize=True, return_dict=False,
            add_generation_prompt=req.add_generation_prompt and not req.continue_final,
            continue_final_message=req.continue_final)
        return list(out["input_ids"] if isinstance(out, dict) else out)
    if req.text is not None:
        return tokenizer.encode(req.text, add_special_tokens=False)
    raise ValueError(f"request {req.id}: give messages, text or token_ids")


def scratch_dir(need_bytes: int) -> str | None:
    """/dev/shm when it is writable and has room for need_bytes (with a 10% margin), else None
    (the system's temporary folder, on disk)."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize > need_bytes * 1.1:
            return shm
    return None


def stream_safetensors(blobs: Iterable[bytes]) -> Iterator[tuple[str, Any]]:
    """(name, tensor) of each safetensors file in turn; a blob is dropped once read."""
    from safetensors.torch import load

    for blob in blobs:
        state = load(bytes(blob))
        del blob
        yield from state.items()


def state_dict_to_bytes(state_dict: dict) -> bytes:
    """A state dict as the bytes of one safetensors file (contiguous CPU tensors)."""
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()})

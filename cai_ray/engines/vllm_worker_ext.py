"""Our methods on vLLM's model workers, registered by name (`worker_extension_cls`), so weight
sync calls `collective_rpc("cai_join", args=...)` with plain arguments: no function is pickled
across vLLM's process boundary and VLLM_ALLOW_INSECURE_SERIALIZATION stays off, whether the engine
core runs in the actor's process (CPU here) or in its own (vLLM's GPU default).

vLLM mixes this class into its Worker: `self` is the worker (model_runner, rank, ...). Only vllm's
workers import this module; it imports nothing of vllm itself.
"""

from __future__ import annotations

EXTENSION = "cai_ray.engines.vllm_worker_ext.WeightSyncExtension"


class WeightSyncExtension:
    def cai_join(self, host: str, port: int, rank: int, world: int, backend: str) -> None:
        """Join the learner's weight-sync group: this worker's rank is the engine's first rank
        plus its own tensor-parallel rank."""
        from cai_ray.engines.collective import open_group

        self._cai_sync = open_group(host, port, rank + getattr(self, "rank", 0), world, backend)

    def cai_receive(self, meta: list, bucket_mb: float) -> None:
        """Receive the broadcast into this worker's device bucket by bucket, reloading as it
        comes; a failure drops the group (the others fail at once, not at the timeout)."""
        from cai_ray.engines.collective import drop_on_failure, receive

        device = "cuda" if _has_cuda_device() else "cpu"
        drop_on_failure(self, "_cai_sync", lambda group: self.cai_reload(
            receive(group, meta, device, bucket_mb)))

    def cai_leave(self) -> None:
        self._cai_sync = None

    def cai_reload(self, pairs) -> None:
        """vLLM's in-place reload from (name, tensor) pairs: it re-runs each layer's post-load
        step as the layer's weights complete. (An iterator of pairs only reaches a worker in the
        actor's own process; across processes weights travel as a folder or the broadcast.)"""
        self.model_runner.reload_weights(weights_iterator=pairs)
        if not _has_cuda_device():
            self.cai_refresh_tied_head()

    def cai_refresh_tied_head(self) -> None:
        """vLLM's in-place reload skips lm_head when it is tied to the embedding
        (tie_word_embeddings: SmolLM2, the tiny model), so on CPU the packed GEMM copy of the head
        keeps the old weights while the embedding gets the new ones. Re-running the head's
        post-load step repacks it."""
        model = self.model_runner.model
        head = getattr(model, "lm_head", None)
        if head is not None and getattr(model.config, "tie_word_embeddings", False):
            head.quant_method.process_weights_after_loading(head)


def _has_cuda_device() -> bool:
    import torch

    return torch.cuda.is_available()

"""The frozen roles of RL as plain classes: the reference policy and the reward source. Ray actors
wrap them (rl/trainer.py); each is testable without Ray."""

from __future__ import annotations

import torch

from cai_ray.rewards import Scored, build_reward
from cai_ray.rl.forward import frozen_logprobs
from cai_ray.rundir.nodeview import on_node, on_node_all


class ReferencePolicy:
    """The SFT model, frozen: log-probs of rollouts for the KL term (LM head at the answer's
    positions only, in chunks)."""

    def __init__(self, model_path: str, threads: int | None = None, chunk: int = 256,
                 share_prompts: bool = True, precision: str = "fp32"):
        """precision: the learner's (fp32 or bf16 autocast), so that the KL to the policy at its
        start is 0, not the two precisions' difference."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cai_ray.models import trust_remote_code
        from cai_ray.train.dist import limit_heap

        if threads:
            torch.set_num_threads(threads)
        limit_heap()
        model_path = on_node(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.float32, use_safetensors=True,
            trust_remote_code=trust_remote_code()).eval()
        tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code())
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.chunk, self.share, self.precision = chunk, share_prompts, precision

    def logprobs(self, prompt_ids: list[list[int]], response, mask):
        from cai_ray.train.dist import compute

        with compute(self.precision, self.model.device):
            return frozen_logprobs(self.model, prompt_ids, response, mask, self.pad_id,
                                   self.chunk, self.share)

    def peak_rss_mb(self) -> float:
        from cai_ray.platform import peak_rss_mb

        return peak_rss_mb()

    def ping(self) -> bool:
        return True


class RewardWorker:
    """A reward source (cai_ray/rewards) built from its spec and parameters."""

    def __init__(self, spec: str, params: dict, threads: int | None = None,
                 plugins: tuple[str, ...] = ()):
        from cai_ray.config.plugins import load_plugins

        load_plugins(list(plugins))  # a plugin's reward source registers in this process too
        if threads:
            torch.set_num_threads(threads)
        self.source = build_reward(spec, **on_node_all(params))  # model paths on this node

    def score(self, batch: list[Scored]) -> list[float]:
        return [float(x) for x in self.source.score(batch)]

    def costs(self) -> dict[str, float]:
        """What scoring has cost so far, where the source counts it (the groupwise judge: pairs
        judged, judge prompts, position bias), else {}."""
        return {k: float(v) for k, v in getattr(self.source, "cost", {}).items()
                if isinstance(v, (int, float))}

    def ping(self) -> bool:
        return True

"""The reward stage's preference model as a reward source (Bai et al. 2022 sec. 4.1), and the
scorer that RL, evaluation and serving share."""

from __future__ import annotations

from cai_ray.errors import InputError
from cai_ray.rewards.registry import Scored, register_reward


@register_reward("model")
class RewardModel:
    """The trained preference model's scalar on (prompt, answer)."""

    def __init__(self, arg: str = "", *, reward_model: str | None = None, **_):
        if not reward_model:
            raise InputError("rl.reward model: no reward model; run the reward stage first or "
                             "set rl.reward_model")
        self.scorer = RewardScorer(reward_model)

    def score(self, batch: list[Scored]) -> list[float]:
        return self.scorer.score([[{"role": "user", "content": s.prompt},
                                   {"role": "assistant", "content": s.response}] for s in batch])


class RewardScorer:
    """Scores conversations with a trained reward model (no DeepSpeed): the RL stage's reward
    actor, `cai-ray eval reward`, `cai-ray serve --score`."""

    def __init__(self, model_path: str, max_len: int = 1024, batch_size: int = 8):
        from transformers import AutoTokenizer

        from cai_ray.models import trust_remote_code
        from cai_ray.train.reward import load_value_model

        self.tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code())
        self.model = load_value_model(model_path).eval()
        self.max_len, self.batch_size = max_len, batch_size
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0

    def score(self, conversations: list[list[dict]]) -> list[float]:
        import torch

        from cai_ray.train.reward import pad_right, render, sequence_rewards

        out = []
        with torch.no_grad():
            for k in range(0, len(conversations), self.batch_size):
                seqs = [render(c, self.tok, self.max_len)
                        for c in conversations[k:k + self.batch_size]]
                ids, mask = pad_right(seqs, self.pad_id)
                out += sequence_rewards(self.model, ids, mask).tolist()
        return out

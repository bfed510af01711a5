"""The frozen roles of PPO as plain classes: the reference policy and the reward."""

from __future__ import annotations

import torch

from cai_ray.algos.losses import token_logprobs
from cai_ray.rl.experience import gather_response, join_sequences


class ReferencePolicy:
    """The SFT model, frozen: log-probs of rollouts for the KL penalty."""

    def __init__(self, model_path: str, threads: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32,
                                                          use_safetensors=True).eval()
        tok = AutoTokenizer.from_pretrained(model_path)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    @torch.no_grad()
    def logprobs(self, prompt_ids: list[list[int]], response, mask):
        ids, att, plens = join_sequences(
            prompt_ids, [r[:int(m.sum())].tolist() for r, m in zip(response, mask)], self.pad_id)
        logits = self.model(input_ids=ids, attention_mask=att).logits
        logits = gather_response(logits, plens, response.shape[1])
        return token_logprobs(logits, response) * mask  # (B, T)


def short_answer(prompt: str, response: str, n_tokens: int, max_tokens: int) -> float:
    """1 for an answer that ends at once, 0 for one that runs to the length limit."""
    return 1.0 - n_tokens / max_tokens


def contains(word: str):
    def fn(prompt: str, response: str, n_tokens: int, max_tokens: int) -> float:
        return 1.0 if word.lower() in response.lower() else 0.0
    return fn


def reward_function(spec: str):
    """'short' or 'contains:WORD': programmatic rewards for tests and ablations."""
    if spec == "short":
        return short_answer
    if spec.startswith("contains:"):
        return contains(spec.split(":", 1)[1])
    raise ValueError(f"unknown reward function {spec!r} (short, contains:WORD)")


class RewardRole:
    """Scores (prompt, response) pairs with the trained reward model or a reward function."""

    def __init__(self, reward_model: str | None, reward_fn: str | None, max_tokens: int,
                 threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.fn = reward_function(reward_fn) if reward_fn else None
        self.max_tokens = max_tokens
        self.scorer = None
        if self.fn is None:
            from cai_ray.train.reward import RewardScorer

            self.scorer = RewardScorer(reward_model)

    def score(self, prompts: list[str], responses: list[str], n_tokens: list[int]) -> list[float]:
        if self.fn:
            return [self.fn(p, r, n, self.max_tokens) for p, r, n in zip(prompts, responses,
                                                                          n_tokens)]
        return self.scorer.score([[{"role": "user", "content": p},
                                   {"role": "assistant", "content": r}]
                                  for p, r in zip(prompts, responses)])

"""The reward (preference) model: a scalar head on a transformer, trained with Bradley-Terry on soft
or hard labels (RewardTask), and the value model the critic and the scorer (rewards/model.py)
share."""

from __future__ import annotations

import torch

from cai_ray.algos.losses import bradley_terry_loss


def load_value_model(model_path: str, dtype=torch.float32):
    """AutoModelForSequenceClassification with one label (a fresh head on a causal LM folder)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from cai_ray.models import trust_remote_code

    cfg = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code())
    cfg.num_labels = 1
    if getattr(cfg, "pad_token_id", None) is None:
        cfg.pad_token_id = cfg.eos_token_id if isinstance(cfg.eos_token_id, int) else 0
    return AutoModelForSequenceClassification.from_pretrained(
        model_path, config=cfg, dtype=dtype, use_safetensors=True,
        trust_remote_code=trust_remote_code())


def token_values(model, input_ids, attention_mask):
    """The scalar head at every position: (B, T). The head reads the backbone's hidden states
    directly, so the score position comes from the attention mask, not from pad-token guessing
    (SmolLM2's pad token is also its end-of-turn token)."""
    from cai_ray.train.lora import unwrap

    model = unwrap(model)
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                      use_cache=False).last_hidden_state  # (B, T, H); no KV cache to build
    head = getattr(model, "score", None) or getattr(model, "classifier")
    return head(hidden).squeeze(-1).float()  # (B, T)


def last_index(attention_mask):
    """Index of the last real token of each right-padded row: (B,)."""
    return attention_mask.sum(-1).long() - 1


def sequence_rewards(model, input_ids, attention_mask):
    values = token_values(model, input_ids, attention_mask)  # (B, T)
    return values.gather(1, last_index(attention_mask).unsqueeze(1)).squeeze(1)  # (B,)


def render(messages: list[dict], tokenizer, max_len: int) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False,
                                        return_dict=False)
    ids = list(out["input_ids"] if isinstance(out, dict) else out)
    return ids[-max_len:]  # keep the end: the answer being judged


def conversation(row: dict, answer: str) -> list[dict]:
    convo = row.get("conversation") or [{"role": "user", "content": row["prompt"]}]
    return list(convo) + [{"role": "assistant", "content": answer}]


def pad_right(seqs: list[list[int]], pad_id: int):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    return ids, mask


class RewardTask:
    """Rows: prompt (or conversation), chosen, rejected, p_chosen (soft label; default 1.0) and
    source (ai or human: the held-out accuracy is reported for each that occurs)."""

    name = "reward"
    lora_task_type = "SEQ_CLS"

    def __init__(self, max_len: int = 512):
        self.max_len = max_len

    def build_model(self, model_path: str):
        return load_value_model(model_path)

    def encode(self, rows: list[dict], tokenizer) -> list[dict]:
        return [{"chosen": render(conversation(r, r["chosen"]), tokenizer, self.max_len),
                 "rejected": render(conversation(r, r["rejected"]), tokenizer, self.max_len),
                 "p": float(r.get("p_chosen", 1.0)),
                 "human": float(r.get("source") == "human")} for r in rows]

    def length(self, item: dict) -> int:
        return max(len(item["chosen"]), len(item["rejected"]))

    def collate(self, items: list[dict], pad_id: int) -> dict:
        ids, mask = pad_right([x["chosen"] for x in items] + [x["rejected"] for x in items], pad_id)
        return {"input_ids": ids, "attention_mask": mask,
                "p": torch.tensor([x["p"] for x in items]),
                "human": torch.tensor([x.get("human", 0.0) for x in items])}

    def step(self, engine, batch: dict):
        dev = engine.device
        r = sequence_rewards(engine.module, batch["input_ids"].to(dev),
                             batch["attention_mask"].to(dev))  # (2B,)
        n = r.shape[0] // 2
        return bradley_terry_loss(r[:n], r[n:], batch["p"].to(dev))

    @torch.no_grad()
    def evaluate(self, engine, batches: list[dict]) -> dict:
        """Loss and accuracy on the held-out pairs; with human pairs among them (the paper's
        mixed preference model), the accuracy on the human and on the AI-labelled ones apart."""
        engine.eval()
        dev = engine.device
        loss, n, right, human = 0.0, 0, [], []
        for b in batches:
            r = sequence_rewards(engine.module, b["input_ids"].to(dev),
                                 b["attention_mask"].to(dev))  # (2B,)
            k = r.shape[0] // 2
            lv, _ = bradley_terry_loss(r[:k], r[k:], b["p"].to(dev))
            loss, n = loss + float(lv) * k, n + k
            right += ((r[:k] > r[k:]).cpu() == (b["p"] > 0.5)).tolist()  # (B,)
            human += (b["human"] > 0).tolist() if "human" in b else [False] * k
        out = {"eval/loss": loss / max(n, 1), "eval/accuracy": sum(right) / max(n, 1)}
        if any(human):
            for name, pick in (("human", True), ("ai", False)):
                xs = [x for x, h in zip(right, human) if h == pick]
                if xs:
                    out[f"eval/accuracy/{name}"] = sum(xs) / len(xs)
                    out[f"eval/pairs/{name}"] = len(xs)
        return out

    def tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

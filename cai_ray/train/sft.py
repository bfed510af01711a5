"""Supervised fine-tuning on chat messages, loss on assistant tokens only (the SL-CAI model)."""

from __future__ import annotations

import torch

from cai_ray.algos.losses import IGNORE, label_positions, selected_sft_loss
from cai_ray.train.lora import unwrap
from cai_ray.train.packing import forward_inputs, pack


def assistant_labels(messages: list[dict], tokenizer, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and labels that keep only assistant tokens.

    Each assistant turn's tokens are the difference between the conversation rendered up to and
    including it and the one rendered up to the turn before it with the generation prompt: the
    template's own text (role headers, the system prompt) is never a target.
    """
    def render(msgs, gen):
        out = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen,
                                            return_dict=False)
        return list(out["input_ids"] if isinstance(out, dict) else out)

    ids = render(messages, False)
    labels = [IGNORE] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render(messages[:i], True))
        end = len(render(messages[:i + 1], False))
        labels[start:end] = ids[start:end]
    return ids[:max_len], labels[:max_len]


def load_policy(model_path: str):
    """A causal LM in fp32 master weights, safetensors only (SFT and DPO start from one)."""
    from transformers import AutoModelForCausalLM

    from cai_ray.models import trust_remote_code

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32,
                                                use_safetensors=True,
                                                trust_remote_code=trust_remote_code())


class SftTask:
    name = "sft"
    lora_task_type = "CAUSAL_LM"

    def __init__(self, max_len: int = 512, packing: bool = False):
        self.max_len, self.packing = max_len, packing

    def build_model(self, model_path: str):
        return load_policy(model_path)

    def encode(self, rows: list[dict], tokenizer) -> list[dict]:
        out = []
        for r in rows:
            ids, labels = assistant_labels(r["messages"], tokenizer, self.max_len)
            if any(x != IGNORE for x in labels):
                out.append({"input_ids": ids, "labels": labels})
        return out

    def collate(self, items: list[dict], pad_id: int) -> dict:
        if self.packing:  # one row, no padding (train/packing.py)
            return pack([x["input_ids"] for x in items], [x["labels"] for x in items], IGNORE)
        width = max(len(x["input_ids"]) for x in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, x in enumerate(items):
            n = len(x["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = (torch.tensor(x["input_ids"]),
                                                      torch.tensor(x["labels"]), 1)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    def step(self, engine, batch: dict):
        """The LM head runs only where the loss counts (assistant tokens): prompts and the
        template's text never pay for the (T x vocab) projection and its softmax."""
        dev = engine.device
        model = unwrap(engine)  # a DeepSpeed engine's, a peft model's or a plain model
        sel, targets = label_positions(batch["labels"].to(dev))  # (B, T) bool, (N,)
        backbone = getattr(model, model.base_model_prefix)
        hidden = backbone(**forward_inputs(batch, dev)).last_hidden_state  # (B, T, H)
        logits = model.get_output_embeddings()(hidden[sel])  # (N, vocab)
        loss, m = selected_sft_loss(logits, targets)
        return loss, {"target_tokens": m["tokens"]}

    @torch.no_grad()
    def evaluate(self, engine, batches: list[dict]) -> dict:
        engine.eval()
        total, n = 0.0, 0.0
        for b in batches:
            loss, m = self.step(engine, b)
            total += float(loss) * m["target_tokens"]
            n += m["target_tokens"]
        return {"eval/loss": total / max(n, 1.0)}

    def tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

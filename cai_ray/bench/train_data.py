"""The rows `cai-ray bench train` trains on: SFT conversations, reward-model pairs, and DPO pairs
(filler pairs, or HH-RLHF harmlessness pairs from ../shared/data), each fitted so that no trainer
truncates anything."""

from __future__ import annotations

FILLER = ("Here is a careful and friendly answer that explains the reasons, the risks and some "
          "safer alternatives in plain words, step by step, without skipping anything important. ")


def sft_rows(n: int, varied: bool = False) -> list[dict]:
    """Answers of 8 fillers (about 256 tokens with the template), or with varied, of 1 to 8
    (75 to 256 tokens with the template: batches with padding, as real SFT data has)."""
    return [{"id": f"s{i}", "messages": [
        {"role": "user", "content": f"Question number {i}: how should I handle this?"},
        {"role": "assistant", "content": FILLER * ((i * 5) % 8 + 1 if varied else 8)}]}
        for i in range(n)]


def rm_rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"Question number {i}: how should I handle this?",
             "chosen": FILLER * 8, "rejected": ("No. " + FILLER) * 7} for i in range(n)]


DPO_DATA = {"filler": "one-line questions, both answers filled to the length",
            "hh-rlhf": "the first HH-RLHF harmlessness pairs that fit the length"}


def fitted(tok, prompt: str, text: str, length: int) -> list[dict]:
    """The conversation with its answer cut so that the whole rendered conversation (system
    prompt, template and all) is at most `length` tokens: no trainer truncates anything, so every
    runner trains on the same tokens (TRL's RewardTrainer drops, not truncates, longer rows)."""
    convo = [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
    room = length - len(tok.apply_chat_template(convo, tokenize=True, return_dict=False)) - 1
    ids = tok.encode(text, add_special_tokens=False)[:room]
    while ids and len(tok.apply_chat_template(
            convo[:1] + [{"role": "assistant", "content": tok.decode(ids)}],
            tokenize=True, return_dict=False)) > length:
        ids = ids[:-4]
    return convo[:1] + [{"role": "assistant", "content": tok.decode(ids)}]


def pair_rows(model: str, n: int, length: int) -> list[dict]:
    """rm_rows with answers fitted to `length` (prompt, chosen, rejected as strings)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    return [{**r, "chosen": fitted(tok, r["prompt"], r["chosen"], length)[-1]["content"],
             "rejected": fitted(tok, r["prompt"], r["rejected"], length)[-1]["content"]}
            for r in rm_rows(n)]


def hh_pair_rows(model: str, n: int, length: int) -> list[dict]:
    """The first n HH-RLHF harmlessness pairs (../shared/data, the conversation before the last
    turn as prompt) whose conversation with either answer fits `length` tokens, so that no trainer
    truncates anything. Real preference data: prompts of several turns, answers of varied length."""
    from transformers import AutoTokenizer

    from cai_ray.judges.quality import DEFAULT_HH, hh_pairs
    from cai_ray.train.reward import conversation

    tok = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    out = []
    for p in hh_pairs(DEFAULT_HH, 20 * n):
        if len(out) == n:
            break
        if p["chosen"].strip() and p["rejected"].strip() and all(
                len(tok.apply_chat_template(conversation(p, a), tokenize=True,
                                            return_dict=False)) <= length
                for a in (p["chosen"], p["rejected"])):
            out.append({"id": p["id"], "conversation": p["conversation"],
                        "chosen": p["chosen"], "rejected": p["rejected"]})
    if len(out) < n:
        raise SystemExit(f"{DEFAULT_HH}: {len(out)} pairs fit {length} tokens, {n} needed")
    return out


def dpo_rows(model: str, n: int, length: int, data: str) -> list[dict]:
    return hh_pair_rows(model, n, length) if data == "hh-rlhf" else pair_rows(model, n, length)


def pair_tokens(model: str, rows: list[dict], length: int) -> int:
    """Tokens of every pair's two sequences (prompt counted twice, as in the rows)."""
    from transformers import AutoTokenizer

    from cai_ray.train.dpo import DpoTask

    tok = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    items = DpoTask(max_len=length).encode(rows, tok)
    return sum(len(x["chosen"]) + len(x["rejected"]) for x in items)

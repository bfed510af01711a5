"""DPO / IPO / conservative DPO on preference pairs, on the shared training core (train/core.py).

Rows: prompt (or conversation), chosen, rejected, p_chosen (soft label; 1.0 when absent). The
reference model's log-probabilities are computed once, before the first step, by the trainer's own
forward pass on its initial weights (the ranks share the rows), and stored beside the data
(DATA_DIR/ref_logps-<data digest>.jsonl): every step then runs one policy forward per pair, and a
restarted run reads them back instead of recomputing them from weights that have moved.

A pair's two sequences share their prompt, and by default it runs once: one row of prompt, chosen
answer, rejected answer, the rejected answer masked from the chosen one and its positions restarting
where the prompt ends (train/packing.py pack_pairs), so the log-probs are those of the two
sequences apart (benchmarks/results/train_findings.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from cai_ray.algos.dpo import preference_loss
from cai_ray.algos.losses import IGNORE, label_positions
from cai_ray.train.logprobs import head_logprobs
from cai_ray.train.lora import unwrap
from cai_ray.train.packing import forward_inputs, pack, pack_pairs, shared_len
from cai_ray.train.reward import conversation, pad_right


def ref_path(data_dir: str | Path, precision: str = "fp32") -> Path:
    """DATA_DIR/ref_logps-<digest of the data>[-bf16].jsonl: other data, or a policy computing in
    another precision, never reads these numbers."""
    import hashlib

    h = hashlib.sha256()
    for split in ("train", "eval"):
        f = Path(data_dir) / f"{split}.jsonl"
        h.update(f.read_bytes() if f.exists() else b"")
    tag = "" if precision == "fp32" else f"-{precision}"
    return Path(data_dir) / f"ref_logps-{h.hexdigest()[:16]}{tag}.jsonl"


def _render(messages: list[dict], tokenizer, gen: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen,
                                        return_dict=False)
    return list(out["input_ids"] if isinstance(out, dict) else out)


def encode_answer(row: dict, answer: str, tokenizer, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids of prompt + answer and labels on the answer's tokens only. Too long: the prompt
    loses its start first (the answer is what is scored), then the answer its end."""
    prompt = _render(conversation(row, answer)[:-1], tokenizer, True)
    full = _render(conversation(row, answer), tokenizer, False)
    answer_ids = full[len(prompt):]
    keep_prompt = max(max_len - len(answer_ids), min(len(prompt), max_len // 2))
    prompt = prompt[len(prompt) - keep_prompt:] if keep_prompt < len(prompt) else prompt
    ids = (prompt + answer_ids)[:max_len]
    labels = ([IGNORE] * len(prompt) + answer_ids)[:max_len]
    return ids, labels


def answer_tokens(labels: list[int]) -> int:
    """How many tokens of the answer are scored (its labels that are not IGNORE)."""
    return sum(t != IGNORE for t in labels)


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    """Right-padded (B, T) of label rows (token rows and their mask: reward.pad_right)."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s)
    return out


def scored_positions(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                            torch.Tensor, int]:
    """Where each scored token is predicted from, for a padded batch (S rows), a packed one
    (train/packing.py pack: S sequences in one row) or a prompt-sharing one (pack_pairs, which
    lists them itself): rows (N,), columns (N,), target tokens (N,), sequence of each (N,), S."""
    if "targets" in batch:
        rows, cols = batch["pred"]
        return rows, cols, batch["targets"], batch["seq"], batch["n_seqs"]
    sel, targets = label_positions(batch["labels"])  # (B, T) bool, (N,)
    rows, cols = sel.nonzero(as_tuple=True)  # row-major, as sel selects
    if "seq" in batch:  # packed
        return rows, cols, targets, batch["seq"][cols], int(batch["seq"][-1]) + 1
    return rows, cols, targets, rows, batch["labels"].shape[0]


def sequence_logprobs(model, batch: dict, dev, chunk: int = 256):
    """Sum of log p(label) over each sequence's labelled tokens: (S,). The LM head runs only at
    the positions that predict a labelled token (train/logprobs.py)."""
    m = unwrap(model)
    backbone, head = getattr(m, m.base_model_prefix), m.get_output_embeddings()
    attn = getattr(m.config, "_attn_implementation", None) or "sdpa"
    hidden = backbone(**forward_inputs(batch, dev, attn, m.dtype)).last_hidden_state  # (B, T, H)
    rows, cols, targets, seqs, n = scored_positions(batch)
    logp, _ = head_logprobs(head, hidden[rows.to(dev), cols.to(dev)], targets,
                            chunk=chunk)  # (N,)
    return torch.zeros(n, dtype=logp.dtype, device=logp.device).index_add(0, seqs.to(dev), logp)


class DpoTask:
    name = "dpo"
    lora_task_type = "CAUSAL_LM"

    def __init__(self, max_len: int = 512, beta: float = 0.1, loss_type: str = "cdpo",
                 label_smoothing: float = 0.0, soft_labels: bool | None = None,
                 packing: bool = False, share_prompt: bool = True, ipo_per_token: bool = True):
        self.max_len, self.beta, self.loss_type, self.packing = max_len, beta, loss_type, packing
        self.ipo_per_token = ipo_per_token
        self.share_prompt = share_prompt
        self.label_smoothing, self.soft_labels = label_smoothing, soft_labels

    def build_model(self, model_path: str):
        from cai_ray.train.sft import load_policy

        return load_policy(model_path)

    def encode(self, rows: list[dict], tokenizer) -> list[dict]:
        out = []
        for r in rows:
            c, cl = encode_answer(r, r["chosen"], tokenizer, self.max_len)
            j, jl = encode_answer(r, r["rejected"], tokenizer, self.max_len)
            out.append({"chosen": c, "chosen_labels": cl, "rejected": j, "rejected_labels": jl,
                        "p": float(r.get("p_chosen", 1.0)), "ref": r.get("ref_logps")})
        return out

    def length(self, item: dict) -> int:
        """The row a pair becomes: both answers after one prompt, or the longer sequence."""
        c, r = item["chosen"], item["rejected"]
        if self.share_prompt:
            return len(c) + len(r) - shared_len(c, r, item["chosen_labels"],
                                                item["rejected_labels"], IGNORE)
        return max(len(c), len(r))

    def collate(self, items: list[dict], pad_id: int) -> dict:
        ref = [x["ref"] or [0.0, 0.0] for x in items]
        if self.share_prompt:  # a pair's prompt runs once for both answers (train/packing.py)
            out = pack_pairs([(x["chosen"], x["chosen_labels"], x["rejected"],
                               x["rejected_labels"]) for x in items], IGNORE, pad_id,
                             one_row=self.packing)
        else:
            seqs = [x["chosen"] for x in items] + [x["rejected"] for x in items]  # (2B,)
            labels = [x["chosen_labels"] for x in items] + [x["rejected_labels"] for x in items]
            if self.packing:  # the 2B sequences in one row, no padding (train/packing.py)
                out = pack(seqs, labels, IGNORE)
            else:
                ids, mask = pad_right(seqs, pad_id)
                out = {"input_ids": ids, "attention_mask": mask, "labels": pad(labels, IGNORE)}
        lengths = [[answer_tokens(x["chosen_labels"]), answer_tokens(x["rejected_labels"])]
                   for x in items]
        return {**out, "p": torch.tensor([x["p"] for x in items]),
                "ref": torch.tensor(ref, dtype=torch.float32),  # (B, 2): chosen, rejected
                "lengths": torch.tensor(lengths, dtype=torch.long)}  # (B, 2): answer tokens

    def policy_logprobs(self, engine, batch: dict):
        dev = engine.device
        lp = sequence_logprobs(engine, batch, dev)  # (2B,)
        n = lp.shape[0] // 2
        return lp[:n], lp[n:]

    def step(self, engine, batch: dict):
        pi_c, pi_r = self.policy_logprobs(engine, batch)
        ref = batch["ref"].to(pi_c.device)
        return preference_loss(pi_c, pi_r, ref[:, 0], ref[:, 1], batch["p"], beta=self.beta,
                               loss_type=self.loss_type, label_smoothing=self.label_smoothing,
                               soft_labels=self.soft_labels, lengths=batch["lengths"],
                               ipo_per_token=self.ipo_per_token)

    @torch.no_grad()
    def evaluate(self, engine, batches: list[dict]) -> dict:
        engine.eval()
        tot: dict[str, float] = {}
        n = 0
        for b in batches:
            loss, m = self.step(engine, b)
            k = b["p"].shape[0]
            for key, v in {"loss": float(loss), **m}.items():
                tot[key] = tot.get(key, 0.0) + v * k
            n += k
        return {f"eval/{k}": v / max(n, 1) for k, v in tot.items()}

    def tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    # -- the reference, once -----------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, engine, splits: dict[str, list[dict]], data_dir: str, micro: int,
                pad_id: int) -> dict:
        """Reference log-probs of every row, from the model as it is before the first step. Read
        from DATA_DIR/ref_logps-*.jsonl when a run before this one wrote them; else computed (rank r
        takes batches r, r + world, ...; every rank runs as many forwards, which ZeRO-3 needs),
        gathered, and written by rank 0."""
        import time

        import torch.distributed as dist

        t0 = time.time()
        import torch

        device = getattr(getattr(engine, "device", None), "type", "cpu")
        bf16 = torch.is_autocast_enabled(device)  # train/dist.compute
        path = ref_path(data_dir, "bf16" if bf16 else "fp32")
        if not path.exists():
            rank = dist.get_rank() if dist.is_initialized() else 0
            world = dist.get_world_size() if dist.is_initialized() else 1
            jobs = [(s, k) for s, items in splits.items() for k in range(0, len(items), micro)]
            mine = jobs[rank::world]
            rounds = -(-len(jobs) // world)
            engine.eval()
            got = []
            for i in range(rounds):
                split, k = mine[i] if i < len(mine) else jobs[0]  # a repeat keeps ZeRO-3 in step
                chunk = splits[split][k:k + micro]
                c, r = self.policy_logprobs(engine, self.collate(chunk, pad_id))
                if i < len(mine):
                    got += [(split, k + j, float(c[j]), float(r[j])) for j in range(len(chunk))]
            if world > 1:
                parts = [None] * world
                dist.all_gather_object(parts, got)
                got = [x for p in parts for x in p]
            if rank == 0:
                tmp = path.with_suffix(".tmp")
                with open(tmp, "w") as fh:
                    for split, i, c, r in sorted(got):
                        fh.write(json.dumps({"split": split, "i": i, "chosen": c,
                                             "rejected": r}) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            if dist.is_initialized():
                dist.barrier()
        seen = 0
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            splits[rec["split"]][rec["i"]]["ref"] = [rec["chosen"], rec["rejected"]]
            seen += 1
        if seen != sum(len(v) for v in splits.values()):
            raise RuntimeError(f"{path}: {seen} reference rows for "
                               f"{sum(len(v) for v in splits.values())} pairs")
        return {"ref/logps_chosen": sum(x["ref"][0] for x in splits["train"]) /
                max(1, len(splits["train"])), "timing/reference_s": time.time() - t0}

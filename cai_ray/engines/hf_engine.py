"""The transformers backend: plain `generate` and teacher-forced scoring, batched with padding.

Used as the reference the vLLM backend must agree with, as a fallback where vLLM is missing, and as
the baseline in benchmarks.
"""

from __future__ import annotations

import torch

from cai_ray.engines.base import Engine
from cai_ray.generation import Completion, Sampling

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HfEngine(Engine):
    backend = "hf"

    def __init__(self, model_path: str, *, max_model_len: int = 2048, dtype: str = "float32",
                 trust_remote_code: bool = False, device: str | None = None,
                 batch_size: int = 16, seed: int = 0):
        super().__init__(model_path, max_model_len=max_model_len,
                         trust_remote_code=trust_remote_code)
        from transformers import AutoModelForCausalLM

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        from cai_ray.platform import engine_dtype

        name, self.dtype_reason = engine_dtype(dtype)
        self.dtype = DTYPES[name]
        self.batch_size = batch_size
        self.seed = seed
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=self.dtype, use_safetensors=True,
            trust_remote_code=trust_remote_code).to(self.device).eval()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.stop_token_ids[0] if self.stop_token_ids else 0

    def _left_pad(self, prompts: list[list[int]]):
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        return ids.to(self.device), mask.to(self.device)  # (batch, width)

    @torch.no_grad()
    def _generate_ids(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        out: list[list[Completion]] = []
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            out.extend(self._generate_batch(chunk, sampling))
        return out

    def _generate_batch(self, chunk: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        ids, mask = self._left_pad(chunk)
        greedy = sampling.temperature == 0
        gen = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=sampling.max_tokens,
            do_sample=not greedy, temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p, top_k=None if greedy else 0,
            num_return_sequences=sampling.n, eos_token_id=self.stop_token_ids or None,
            pad_token_id=self.pad_id, output_logits=sampling.logprobs,
            return_dict_in_generate=True)
        new = gen.sequences[:, ids.shape[1]:]  # (batch * n, new_len)
        logps = None
        if sampling.logprobs:
            logits = torch.stack(gen.logits, 1).float()  # (batch * n, new_len, vocab)
            logps = torch.log_softmax(logits, -1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        results = []
        for b, prompt in enumerate(chunk):
            samples = []
            for j in range(sampling.n):
                row = b * sampling.n + j
                toks, reason = self._trim(new[row].tolist(), sampling.max_tokens)
                text = self.tokenizer.decode(toks, skip_special_tokens=True)
                text, reason = _apply_stop(text, sampling.stop, reason)
                lp = logps[row, :len(toks)].tolist() if logps is not None else None
                samples.append(Completion("", text, toks, prompt, lp, reason, j))
            results.append(samples)
        return results

    def _trim(self, toks: list[int], max_tokens: int) -> tuple[list[int], str]:
        for k, t in enumerate(toks):
            if t in self.stop_token_ids:
                return toks[:k + 1], "stop"  # keep the EOS token, as vLLM does
        return toks, "length" if len(toks) >= max_tokens else "stop"

    @torch.no_grad()
    def _score_ids(self, pairs: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        out = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            seqs = [p + c for p, c in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s)] = 1
            logits = self.model(input_ids=ids.to(self.device),
                                attention_mask=mask.to(self.device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1)  # (batch, width - 1, vocab)
            tgt = ids[:, 1:].to(self.device)
            tok_lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (batch, width - 1)
            for i, (p, c) in enumerate(chunk):
                out.append(tok_lp[i, len(p) - 1:len(p) - 1 + len(c)].tolist())
        return out

    @torch.no_grad()
    def next_token_logprobs(self, requests, token_ids: list[int]) -> list[list[float]]:
        """One forward pass per prompt (batched, left-padded) and the candidates read off the last
        position's log-softmax: (len(requests), len(token_ids))."""
        prompts, out = [self.encode(r) for r in requests], []
        for k in range(0, len(prompts), self.batch_size):
            ids, mask = self._left_pad(prompts[k:k + self.batch_size])  # (b, width)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # positions as if unpadded
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            lp = torch.log_softmax(logits[:, -1].float(), -1)  # (b, vocab)
            out += lp[:, token_ids].tolist()
        return out

    def sync_device(self) -> str:
        return str(self.device)

    def _load_state(self, state: dict, source: str = "weight sync") -> None:
        self._load_stream(iter(state.items()), source)

    @torch.no_grad()
    def _load_stream(self, pairs, source: str = "weight sync") -> None:
        """Copy each (name, tensor) into the live parameter as it arrives."""
        own = self.model.state_dict()
        for name, tensor in pairs:
            if name not in own:
                raise ValueError(f"{source}: a weight the model does not have: {name}")
            own[name].copy_(tensor)

    def _load_folder(self, folder: str) -> None:
        from pathlib import Path

        from safetensors.torch import load_file

        state = {}
        for f in sorted(Path(folder).glob("*.safetensors")):
            state.update(load_file(str(f)))
        if not state:
            raise FileNotFoundError(f"{folder}: no *.safetensors files")
        self._load_state(state, source=folder)


def _apply_stop(text: str, stops: list[str], reason: str) -> tuple[str, str]:
    cut = [text.find(s) for s in stops if s and s in text]
    if cut:
        return text[:min(cut)], "stop"
    return text, reason

"""Token log-probabilities of a causal LM where they are needed, and nowhere else.

The LM head and its log-softmax run only on the hidden states of the positions that predict a
scored token (an answer's). When the (N x vocab) fp32 logits of all of them fit in
`whole_mb` they are computed at once and kept for the backward pass, as SFT's loss does. Above
that, `chunk` positions at a time, each
chunk checkpointed, so its (chunk x vocab) logits exist only while that chunk is computed, forward
and backward (the head then runs twice): never a (batch x length x vocab) tensor. Entropy comes
from the same chunks.

    logp, ent = head_logprobs(head, hidden, targets, chunk=256, entropy=True)
    # hidden: (N, H) at the predicting positions; targets: (N,); logp, ent: (N,)
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def backbone_and_head(model):
    """(backbone, LM head) of a transformers causal LM (a DeepSpeed engine's module, a peft model
    or a plain model)."""
    from cai_ray.train.lora import unwrap

    model = unwrap(model)
    return getattr(model, model.base_model_prefix), model.get_output_embeddings()


def _chunk_logprobs(head, softcap: float | None, entropy: str, h: Tensor,
                    targets: Tensor) -> tuple[Tensor, Tensor]:
    """entropy: "" (none), "value" (no gradient: two (n x vocab) tensors fewer kept for the
    backward pass) or "grad" (an entropy bonus in the loss)."""
    logits = head(h).float()  # (n, V)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (n,)
    if not entropy:
        return logp, torch.zeros_like(logp)
    with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
        ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


WHOLE_MB = 512.0  # logits up to this size (fp32) are computed in one piece, not checkpointed


def head_logprobs(head, hidden: Tensor, targets: Tensor, *, chunk: int = 256,
                  entropy: bool = False, entropy_grad: bool = False,
                  softcap: float | None = None,
                  whole_mb: float = WHOLE_MB) -> tuple[Tensor, Tensor | None]:
    """log p(targets) from the hidden states that predict them, and the entropy there when asked
    (with a gradient only if entropy_grad): (N,) tensors."""
    targets = targets.to(hidden.device)
    mode = ("grad" if entropy_grad else "value") if entropy else ""
    ckpt = torch.is_grad_enabled() and hidden.requires_grad
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    if ckpt and hidden.shape[0] * vocab * 4 <= whole_mb * 2**20:
        chunk, ckpt = max(hidden.shape[0], 1), False  # one piece, kept for the backward pass
    lps, ents = [], []
    for k in range(0, hidden.shape[0], chunk):
        args = (head, softcap, mode, hidden[k:k + chunk], targets[k:k + chunk])
        if ckpt:
            lp, ent = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(*args)
        lps.append(lp)
        ents.append(ent)
    if not lps:
        empty = hidden.new_zeros(0)
        return empty, (empty if entropy else None)
    return torch.cat(lps), (torch.cat(ents) if entropy else None)

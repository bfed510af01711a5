"""Forward passes over rollouts, shared by the learner and the reference role: log-probs (and
entropy) of the response tokens, and the critic's values before each of them.

The samples of one prompt share it: the backbone runs each distinct prompt once, its KV cache is
expanded to every answer of that prompt, and the answers run on top of it (positions continuing
each prompt's own length). With 4 answers of ~60 tokens to a ~45-token prompt this skips about a
third of the tokens, in the forward and the backward pass alike, and their activations. Gradients
flow through the expanded cache into the prompt's pass. Models whose cache is not a plain dynamic
one (sliding windows, recurrent layers) take the joined path: prompt + answer per row.

Shapes: B rollouts; T response tokens (right-padded, `mask` (B, T)); G distinct prompts; H hidden.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cai_ray.rl.experience import (
    join_sequences,
    pad_right,
    response_lists,
    response_selector,
    scatter_tokens,
)
from cai_ray.train.logprobs import backbone_and_head, head_logprobs
from cai_ray.train.lora import unwrap


def _device(model) -> torch.device:
    return next(getattr(model, "module", model).parameters()).device


def _joined_hidden(backbone, prompt_ids, response, mask, pad_id) -> Tensor:
    dev = next(backbone.parameters()).device
    ids, att, plens = join_sequences(prompt_ids, response_lists(response, mask), pad_id)
    sel = response_selector(plens, mask, ids.shape[1]).to(dev)
    hidden = backbone(input_ids=ids.to(dev), attention_mask=att.to(dev)).last_hidden_state
    return hidden[sel]  # (N, H)


def _shared_hidden(backbone, prompt_ids, response, mask, pad_id) -> Tensor | None:
    """Hidden states that predict each response token, each distinct prompt run once. None when
    the model's cache cannot be shared this way."""
    from transformers import DynamicCache

    dev = next(backbone.parameters()).device
    distinct: dict[tuple, int] = {}
    owner = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompt_ids])
    prompts = [list(p) for p in distinct]
    p_ids, p_att = pad_right(prompts, pad_id)  # (G, P)
    plens = p_att.sum(-1).long()  # (G,)
    T = response.shape[1]
    r_ids = response.masked_fill(~mask.bool(), pad_id)
    # one embedding lookup for prompts and answers: its backward makes one dense (vocab x H)
    # gradient per micro-batch instead of two
    emb = backbone.get_input_embeddings()(torch.cat([p_ids.flatten(), r_ids.flatten()]).to(dev))
    p_emb, r_emb = emb[:p_ids.numel()].view(*p_ids.shape, -1), emb[p_ids.numel():].view(
        *r_ids.shape, -1)
    out = backbone(inputs_embeds=p_emb, attention_mask=p_att.long().to(dev),
                   past_key_values=DynamicCache(), use_cache=True)
    cache = out.past_key_values
    if type(cache) is not DynamicCache or any(getattr(layer, "is_sliding", False) or
                                              not hasattr(layer, "keys") for layer in cache.layers):
        return None
    last = out.last_hidden_state[torch.arange(len(prompts)), (plens - 1).to(dev)]  # (G, H)
    cache.batch_select_indices(owner.to(dev))  # every answer gets its prompt's keys and values
    att = torch.cat([p_att[owner], mask], dim=1).long()  # (B, P + T): holes where prompts pad
    pos = plens[owner].unsqueeze(1) + torch.arange(T)[None]  # (B, T): each prompt's own length
    hidden = backbone(inputs_embeds=r_emb, attention_mask=att.to(dev),
                      position_ids=pos.to(dev), past_key_values=cache,
                      use_cache=True).last_hidden_state  # (B, T, H)
    # token 0 is predicted by the prompt's last position, token t by answer position t - 1
    pred = torch.cat([last[owner.to(dev)].unsqueeze(1), hidden[:, :-1]], dim=1)  # (B, T, H)
    return pred[mask.bool().to(dev)]  # (N, H)


def predictor_hidden(model, prompt_ids: list[list[int]], response: Tensor, mask: Tensor,
                     pad_id: int, share_prompts: bool = True) -> Tensor:
    """The last hidden state at every position that predicts a response token, (N, H) in the
    mask's row-major order. share_prompts: run each distinct prompt once (see the module doc)."""
    m = unwrap(model)
    backbone = getattr(m, m.base_model_prefix)
    if share_prompts and len({tuple(p) for p in prompt_ids}) < len(prompt_ids):
        h = _shared_hidden(backbone, prompt_ids, response, mask, pad_id)
        if h is not None:
            return h
    return _joined_hidden(backbone, prompt_ids, response, mask, pad_id)


def rollout_logprobs(model, prompt_ids: list[list[int]], response: Tensor, mask: Tensor,
                     pad_id: int, *, chunk: int = 256, entropy: bool = False,
                     entropy_grad: bool = False,
                     share_prompts: bool = True) -> tuple[Tensor, Tensor | None]:
    """log p(response token t | prompt, tokens < t): (B, T), 0 on padding; entropy (B, T) too when
    asked. The LM head runs only at the answer's positions, in chunks (train/logprobs.py)."""
    h = predictor_hidden(model, prompt_ids, response, mask, pad_id, share_prompts)
    _, head = backbone_and_head(model)
    dev = h.device
    cfg = getattr(unwrap(model), "config", None)
    lp, ent = head_logprobs(head, h, response[mask.bool()].to(dev), chunk=chunk, entropy=entropy,
                            entropy_grad=entropy_grad,
                            softcap=getattr(cfg, "final_logit_softcapping", None))
    m = mask.to(dev)
    return scatter_tokens(lp, m), (scatter_tokens(ent, m) if entropy else None)


def rollout_values(value_model, prompt_ids: list[list[int]], response: Tensor, mask: Tensor,
                   pad_id: int, share_prompts: bool = True) -> Tensor:
    """The critic's value at each position that predicts a response token: (B, T)."""
    model = getattr(value_model, "module", value_model)
    h = predictor_hidden(model, prompt_ids, response, mask, pad_id, share_prompts)
    head = getattr(model, "score", None) or getattr(model, "classifier")
    return scatter_tokens(head(h).squeeze(-1).float(), mask.to(h.device))


@torch.no_grad()
def frozen_logprobs(model, prompt_ids, response, mask, pad_id, chunk: int = 256,
                    share_prompts: bool = True) -> Tensor:
    return rollout_logprobs(model, prompt_ids, response, mask, pad_id, chunk=chunk,
                            share_prompts=share_prompts)[0]


def joined_logprobs(model, prompt_ids, response, mask, pad_id) -> Tensor:
    """The plain path (prompt + answer per row, full logits): the reference the shared path must
    equal (tests)."""
    ids, att, plens = join_sequences(prompt_ids, response_lists(response, mask), pad_id)
    logits = model(input_ids=ids, attention_mask=att).logits.float()
    sel = response_selector(plens, mask, ids.shape[1])
    lp = torch.log_softmax(logits[sel], -1).gather(-1, response[mask.bool()].unsqueeze(-1))
    return scatter_tokens(lp.squeeze(-1), mask)

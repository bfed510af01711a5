"""train/logprobs.py: the one-piece path (logits kept for the backward pass) and the chunked,
checkpointed one give the same log-probs, entropies and gradients, and each is taken when it
should be."""

import pytest
import torch

from cai_ray.train import logprobs


def _run(whole_mb, entropy_grad=False):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    lp, ent = logprobs.head_logprobs(head, hidden, targets, chunk=8, entropy=True,
                                     entropy_grad=entropy_grad, whole_mb=whole_mb)
    want = torch.log_softmax(head(hidden.detach()), -1).gather(-1, targets[:, None])[:, 0]
    assert torch.allclose(lp.detach(), want, atol=1e-6)
    (lp.sum() + (ent.sum() if entropy_grad else 0)).backward()
    return lp.detach(), ent.detach(), hidden.grad.clone(), head.weight.grad.clone()


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_one_piece_equals_chunked_checkpointed(entropy_grad):
    whole = _run(1.0, entropy_grad)   # 37 x 50 x 4 bytes fit in 1 MB: one piece
    chunked = _run(0.0, entropy_grad)  # nothing fits: 8 rows at a time, checkpointed
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_path_follows_the_size(monkeypatch):
    calls = []
    real = logprobs.checkpoint
    monkeypatch.setattr(logprobs, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    _run(1.0)
    assert calls == []
    _run(0.0)
    assert len(calls) == 5  # ceil(37 / 8) checkpointed chunks

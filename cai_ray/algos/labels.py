"""AI-feedback label arithmetic (Bai et al. 2022 sec. 4.1), pure Python.

The judge sees (A) and (B) and we read the log-probabilities of the two option tokens. A soft label
is the normalised probability that the first answer is better; both presentation orders are averaged
to cancel position bias; principles are ensembled by averaging; chain-of-thought labels are clamped
to [0.4, 0.6] because reasoning makes the judge over-confident.
"""

from __future__ import annotations

import math
from statistics import mean

COT_CLAMP = (0.4, 0.6)  # Bai et al. 2022 sec. 4.1: CoT probabilities clamped to 40-60%


def option_prob(logp_a: float, logp_b: float) -> float:
    """P(A) from the log-probabilities of the two option tokens, normalised over the pair."""
    m = max(logp_a, logp_b)
    ea, eb = math.exp(logp_a - m), math.exp(logp_b - m)
    return ea / (ea + eb)


def order_average(p_first_as_a: float, p_first_as_b: float) -> float:
    """P(first answer better), averaged over both orders.

    p_first_as_a: P(A) when the first answer was shown as (A);
    p_first_as_b: P(B) when the first answer was shown as (B).
    """
    return 0.5 * (p_first_as_a + p_first_as_b)


def disagrees(p_first_as_a: float, p_first_as_b: float) -> bool:
    """The two orders pick different answers (a sign of position bias)."""
    return (p_first_as_a > 0.5) != (p_first_as_b > 0.5)


def ensemble(probs: list[float]) -> float:
    """Average over principles."""
    if not probs:
        raise ValueError("no principle probabilities to ensemble")
    return mean(probs)


def clamp(p: float, lo: float = COT_CLAMP[0], hi: float = COT_CLAMP[1]) -> float:
    return min(hi, max(lo, p))


def calibration(preds: list[float], truths: list[bool], edges=(0.5, 0.6, 0.7, 0.8, 0.9, 1.0)):
    """Accuracy by confidence bucket: confidence = max(p, 1 - p); a prediction is right when the
    side it favours (p > 0.5: the first answer) is the true one. Returns rows per bucket."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = [(p, t) for p, t in zip(preds, truths)
               if lo <= max(p, 1 - p) < hi or (hi == edges[-1] and max(p, 1 - p) == hi)]
        acc = mean([(p > 0.5) == t for p, t in sel]) if sel else None
        conf = mean([max(p, 1 - p) for p, _ in sel]) if sel else None
        rows.append({"bucket": f"{lo:.1f}-{hi:.1f}", "n": len(sel), "accuracy": acc,
                     "confidence": conf})
    return rows

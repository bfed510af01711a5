"""Ratings and intervals for evaluation, pure numpy (no ray, vllm or deepspeed).

Bradley-Terry strengths from pairwise comparisons with soft outcomes (the judge's P(first is
better) counts as a fractional win), Elo on the chess scale, bootstrap 95% intervals that resample
prompts (every comparison made on one prompt moves together), Wilson intervals for rates, paired
bootstrap intervals for the difference of two rates on the same prompts, and the expected
calibration error of probabilistic labels.

A comparison is (unit, i, j, s): on prompt `unit`, player i met player j and i's score is s in
[0, 1] (1: i won, 0.5: a tie or a judge that cannot tell).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

ELO_SCALE = 400.0 / math.log(10.0)
"""Elo points per unit of log-strength: a 400-point gap is 10:1 odds."""
Z95 = 1.959963984540054


def bradley_terry(n_players: int, comparisons, prior: float = 0.5, iters: int = 2000,
                  tol: float = 1e-10) -> np.ndarray:
    """Log-strengths (n_players,) by the MM algorithm (Hunter 2004), mean 0. `comparisons`: iterable
    of (i, j, s) or (unit, i, j, s). `prior`: virtual tie games added to every pair of players
    (each side scores prior/2), so a player who won every comparison still gets a finite rating;
    0 gives the plain maximum-likelihood fit (which needs every player to win and lose some)."""
    wins = np.zeros((n_players, n_players))  # wins[i, j]: i's total score against j
    for c in comparisons:
        i, j, s = c[-3:]
        wins[i, j] += s
        wins[j, i] += 1.0 - s
    if prior:
        off = ~np.eye(n_players, dtype=bool)
        wins[off] += prior / 2.0
    games = wins + wins.T  # (P, P) games between each pair
    w = wins.sum(1)  # (P,) each player's total score
    pi = np.ones(n_players)
    for _ in range(iters):
        denom = (games / (pi[:, None] + pi[None, :])).sum(1)
        new = np.where(denom > 0, w / np.where(denom > 0, denom, 1.0), pi)
        new = np.maximum(new, 1e-300)
        new /= math.exp(np.log(new).mean())
        if np.max(np.abs(np.log(new) - np.log(pi))) < tol:
            pi = new
            break
        pi = new
    theta = np.log(pi)
    return theta - theta.mean()


def _games(n_players: int, comparisons, prior: float) -> np.ndarray:
    """(P, P) games played between each pair, the prior's virtual ones included."""
    games = np.zeros((n_players, n_players))
    for c in comparisons:
        i, j = c[-3], c[-2]
        games[i, j] += 1.0
        games[j, i] += 1.0
    if prior:
        games[~np.eye(n_players, dtype=bool)] += prior
    return games


def bradley_terry_se(theta: np.ndarray, comparisons, prior: float = 0.5) -> np.ndarray:
    """Standard errors (P,) of mean-centred log-strengths: the observed Fisher information is the
    Laplacian with weights n_ij p_ij (1 - p_ij); its pseudo-inverse is the covariance under the
    sum-to-zero constraint."""
    theta = np.asarray(theta, dtype=float)
    n = len(theta)
    p = 1.0 / (1.0 + np.exp(theta[None, :] - theta[:, None]))  # (P, P) P(i beats j)
    w = _games(n, comparisons, prior) * p * (1.0 - p)
    info = np.diag(w.sum(1)) - w
    return np.sqrt(np.clip(np.diag(np.linalg.pinv(info)), 0.0, None))


def group_scores(n_players: int, comparisons, prior: float = 0.5) -> dict:
    """Bradley-Terry scores of the answers to one prompt (log-strengths, mean 0) with 95% Wald
    intervals: {"score", "se", "low", "high"} as lists (P,)."""
    theta = bradley_terry(n_players, comparisons, prior)
    se = bradley_terry_se(theta, comparisons, prior)
    return {"score": theta.tolist(), "se": se.tolist(), "low": (theta - Z95 * se).tolist(),
            "high": (theta + Z95 * se).tolist()}


def elo(theta: np.ndarray, anchor: int = 0, at: float = 1000.0) -> np.ndarray:
    """Log-strengths -> Elo, with player `anchor` at `at` points."""
    return at + ELO_SCALE * (np.asarray(theta) - theta[anchor])


def bootstrap_elo(n_players: int, comparisons: list[tuple], *, anchor: int = 0,
                  n_boot: int = 1000, seed: int = 0, prior: float = 0.5) -> dict:
    """Elo of every player and its bootstrap 95% percentile interval, resampling units (prompts)
    with replacement. Returns {"elo": (P,), "low": (P,), "high": (P,)} as lists."""
    units: dict = defaultdict(list)
    for u, i, j, s in comparisons:
        units[u].append((i, j, s))
    keys = sorted(units, key=str)
    point = elo(bradley_terry(n_players, comparisons, prior), anchor)
    if not keys:
        return {"elo": point.tolist(), "low": point.tolist(), "high": point.tolist()}
    rng = np.random.default_rng(seed)
    draws = np.empty((n_boot, n_players))
    for b in range(n_boot):
        pick = rng.integers(0, len(keys), len(keys))
        comps = [c for k in pick for c in units[keys[k]]]
        draws[b] = elo(bradley_terry(n_players, comps, prior), anchor)
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    return {"elo": point.tolist(), "low": low.tolist(), "high": high.tolist()}


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a rate k/n (sensible at 0 and n, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # exact at the ends (k = 0 or n), where rounding could leave p just outside the interval
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def rate(flags: list[bool]) -> dict:
    """{"rate", "low", "high", "k", "n"} of a list of yes/no outcomes (Wilson interval)."""
    n, k = len(flags), int(sum(bool(f) for f in flags))
    low, high = wilson(k, n)
    return {"rate": k / n if n else None, "low": low, "high": high, "k": k, "n": n}


def mean_interval(xs: list[float], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean and bootstrap 95% percentile interval (soft win rates, mean lengths)."""
    x = np.asarray(xs, dtype=float)
    if x.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n_boot, x.size))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(x.mean()), "low": float(low), "high": float(high), "n": int(x.size)}


def paired_difference(a: list[bool], b: list[bool], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """rate(a) - rate(b) for outcomes on the same items (a[k], b[k] on item k), with a paired
    bootstrap 95% interval: the items are resampled, each keeping both outcomes."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    out = mean_interval(d.tolist(), n_boot=n_boot, seed=seed)
    return {"difference": out["mean"], "low": out["low"], "high": out["high"], "n": out["n"],
            "excludes_zero": out["n"] > 0 and (out["low"] > 0 or out["high"] < 0)}


def expected_calibration_error(preds: list[float], truths: list[bool],
                               edges=(0.5, 0.6, 0.7, 0.8, 0.9, 1.0)) -> float | None:
    """ECE over confidence buckets: sum over buckets of (share of items) * |accuracy - mean
    confidence|, where confidence = max(p, 1-p) and a prediction is right when the side it favours
    (p > 0.5: the first) is the true one; p == 0.5 favours neither and counts as wrong."""
    if not preds:
        return None
    conf = np.maximum(np.asarray(preds), 1.0 - np.asarray(preds))
    right = np.array([(p > 0.5) == t and p != 0.5 for p, t in zip(preds, truths)], dtype=float)
    total = 0.0
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = k == len(edges) - 2
        sel = (conf >= lo) & ((conf <= hi) if last else (conf < hi))
        if sel.any():
            total += sel.mean() * abs(right[sel].mean() - conf[sel].mean())
    return float(total)

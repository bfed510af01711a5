"""Hand-computed Bradley-Terry / Elo fits, bootstrap and Wilson intervals, calibration error
(cai_ray/algos/ratings.py)."""

import math

import pytest

from cai_ray.algos import ratings as R


def test_two_players_three_wins_in_four_is_log3_apart():
    # A (0) beats B (1) 3 times of 4: the MLE odds are 3:1, so Elo(A) - Elo(B) = 400 log10 3
    comps = [(0, 1, 1.0)] * 3 + [(0, 1, 0.0)]
    theta = R.bradley_terry(2, comps, prior=0.0)
    assert theta[0] - theta[1] == pytest.approx(math.log(3.0), abs=1e-8)
    e = R.elo(theta, anchor=1)
    assert e[1] == 1000.0
    assert e[0] - e[1] == pytest.approx(400 * math.log10(3.0), abs=1e-6)  # 190.85


def test_soft_outcomes_at_the_model_probabilities_recover_the_strengths():
    # strengths 4:2:1; each pair met once with the score the model predicts:
    # P(A>B) = 4/6, P(B>C) = 2/3, P(A>C) = 4/5. Expected score = observed score, so 4:2:1 is the MLE
    comps = [(0, 1, 4 / 6), (1, 2, 2 / 3), (0, 2, 4 / 5)]
    e = R.elo(R.bradley_terry(3, comps, prior=0.0), anchor=2)
    assert e[0] - e[2] == pytest.approx(400 * math.log10(4), abs=1e-5)  # 240.82
    assert e[1] - e[2] == pytest.approx(400 * math.log10(2), abs=1e-5)  # 120.41


def test_prior_keeps_an_unbeaten_player_finite():
    # A won all 4; prior 0.5 adds a 0.25 / 0.25 tie: odds (4.25 / 0.25) = 17
    theta = R.bradley_terry(2, [(0, 1, 1.0)] * 4, prior=0.5)
    assert theta[0] - theta[1] == pytest.approx(math.log(17.0), abs=1e-8)


def test_units_are_accepted_and_ignored_by_the_fit():
    a = R.bradley_terry(2, [("p1", 0, 1, 0.75), ("p2", 0, 1, 0.25), ("p3", 0, 1, 1.0)], prior=0)
    b = R.bradley_terry(2, [(0, 1, 0.75), (0, 1, 0.25), (0, 1, 1.0)], prior=0)
    assert a == pytest.approx(b)
    assert a[0] - a[1] == pytest.approx(math.log(2.0 / 1.0), abs=1e-8)  # 2 of 3 points


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_prompts():
    def tournament(n):  # A beats B on 3 of every 4 prompts
        return [(f"p{k}", 0, 1, 1.0 if k % 4 else 0.0) for k in range(n)]

    small = R.bootstrap_elo(2, tournament(8), anchor=1, n_boot=400, seed=1)
    large = R.bootstrap_elo(2, tournament(80), anchor=1, n_boot=400, seed=1)
    for res in (small, large):
        assert res["low"][0] <= res["elo"][0] <= res["high"][0]
        assert res["low"][1] == res["high"][1] == 1000.0  # the anchor does not move
    assert large["high"][0] - large["low"][0] < small["high"][0] - small["low"][0]
    assert R.bootstrap_elo(2, tournament(8), anchor=1, n_boot=400, seed=1) == small  # seeded


def test_bootstrap_of_identical_prompts_has_no_width():
    res = R.bootstrap_elo(2, [(f"p{k}", 0, 1, 0.5) for k in range(6)], n_boot=50)
    assert res["low"] == pytest.approx(res["elo"]) and res["high"] == pytest.approx(res["elo"])
    assert res["elo"][0] == pytest.approx(res["elo"][1])


def test_wilson_known_values():
    assert R.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert R.wilson(0, 10) == pytest.approx((0.0, 3.8415 / 13.8415), abs=1e-4)  # z^2 / (n + z^2)
    assert R.wilson(0, 0) == (0.0, 1.0)
    for n in range(1, 60):  # the rate is inside its interval, also at 0 and n (no rounding slip)
        for k in range(n + 1):
            low, high = R.wilson(k, n)
            assert low <= k / n <= high
    r = R.rate([True, False, False, True])
    assert (r["rate"], r["k"], r["n"]) == (0.5, 2, 4)


def test_paired_difference():
    res = R.paired_difference([True] * 10, [False] * 10, n_boot=200)
    assert (res["difference"], res["low"], res["high"], res["excludes_zero"]) == (1, 1, 1, True)
    same = R.paired_difference([True, False] * 5, [True, False] * 5, n_boot=200)
    assert same["difference"] == 0 and not same["excludes_zero"]
    mixed = R.paired_difference([1, 1, 0, 0, 1, 0], [0, 1, 1, 0, 0, 0], n_boot=500)
    assert mixed["difference"] == pytest.approx(1 / 6)
    assert mixed["low"] < 0 < mixed["high"] and not mixed["excludes_zero"]
    with pytest.raises(ValueError):
        R.paired_difference([True], [True, False])


def test_expected_calibration_error_by_hand():
    # bucket 0.9-1.0: p=0.95 twice, one right -> |0.5 - 0.95| = 0.45, weight 2/4
    # bucket 0.6-0.7: p=0.35 (favours second, truth second: right) and 0.65 right -> |1 - .65|
    preds, truths = [0.95, 0.95, 0.35, 0.65], [True, False, False, True]
    assert R.expected_calibration_error(preds, truths) == pytest.approx(
        0.5 * 0.45 + 0.5 * 0.35)
    assert R.expected_calibration_error([], []) is None


# -- groupwise ranking: Bradley-Terry scores with intervals, against hand-computed tournaments --

def test_two_answers_four_games_three_quarters_won():
    """P(A beats B) = 0.75 -> theta_A - theta_B = log 3, split +-log(3)/2 (mean 0). Fisher
    information of the difference: n p (1 - p) = 4 * 0.1875 = 0.75; theta_A = d / 2, so
    var(theta_A) = 1 / (4 * 0.75) = 1/3."""
    import math

    g = R.group_scores(2, [(0, 1, 0.75), (1, 0, 0.25), (0, 1, 0.75), (1, 0, 0.25)], prior=0.0)
    assert g["score"] == pytest.approx([math.log(3) / 2, -math.log(3) / 2], abs=1e-6)
    assert g["se"] == pytest.approx([math.sqrt(1 / 3)] * 2, abs=1e-6)
    assert g["low"][0] == pytest.approx(math.log(3) / 2 - 1.959964 * math.sqrt(1 / 3), abs=1e-5)


def test_three_answers_whose_judged_scores_are_the_model_s_own():
    """Strengths 2 : 1 : 1/2 (theta = log 2, 0, -log 2): P(A>B) = 2/3, P(B>C) = 2/3, P(A>C) =
    4/5. A judge whose soft verdicts are exactly these (each pair in both orders) satisfies the
    likelihood equations at that theta, which is therefore the fit. The information is the
    Laplacian with weights w_AB = w_BC = 2 * 2/9 = 4/9 and w_AC = 2 * 4/25 = 8/25; its sum-zero
    eigen-directions are u = (1, 0, -1)/sqrt2 (eigenvalue w_AB + 2 w_AC) and v = (1, -2, 1)/sqrt6
    (eigenvalue 3 w_AB), so the covariance is u u'/lam_u + v v'/lam_v."""
    import math

    comps = [(0, 1, 2 / 3), (1, 0, 1 / 3), (1, 2, 2 / 3), (2, 1, 1 / 3), (0, 2, 0.8),
             (2, 0, 0.2)]
    g = R.group_scores(3, comps, prior=0.0)
    assert g["score"] == pytest.approx([math.log(2), 0.0, -math.log(2)], abs=1e-6)
    lam_u, lam_v = 4 / 9 + 16 / 25, 4 / 3
    var_a = 0.5 / lam_u + (1 / 6) / lam_v
    var_b = (4 / 6) / lam_v
    assert g["se"] == pytest.approx([math.sqrt(var_a), math.sqrt(var_b), math.sqrt(var_a)],
                                    abs=1e-6)


def test_a_clean_sweep_stays_finite_with_the_prior():
    g = R.group_scores(3, [(0, 1, 1.0), (0, 2, 1.0), (1, 2, 1.0)] * 2, prior=0.5)
    assert g["score"][0] > g["score"][1] > g["score"][2]
    assert all(math.isfinite(x) for x in g["se"] + g["low"] + g["high"])

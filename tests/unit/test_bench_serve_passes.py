"""`cai-ray bench serve --passes N`: a level's row is its median pass, and a count below 1 is
refused before any server starts."""

import pytest

from cai_ray.bench.serve import main, median_pass


def _pass(tps: float, ttft: float, errors: int = 0) -> dict:
    return {"output_tokens_per_s": tps, "ttft_p50_s": ttft, "errors": errors}


def test_the_row_is_the_median_pass_with_its_own_latencies_and_every_pass_listed():
    row = median_pass([_pass(700.0, 0.3), _pass(650.0, 0.5, errors=1), _pass(760.0, 0.2)])
    assert row["output_tokens_per_s"] == 700.0 and row["ttft_p50_s"] == 0.3
    assert row["passes_output_tokens_per_s"] == [700.0, 650.0, 760.0]
    assert row["errors"] == 1  # an error in any pass shows


def test_an_even_count_takes_the_lower_middle_and_one_pass_is_itself():
    assert median_pass([_pass(2.0, 0), _pass(1.0, 0)])["output_tokens_per_s"] == 1.0
    assert median_pass([_pass(5.0, 0.1)])["output_tokens_per_s"] == 5.0


@pytest.mark.parametrize("flag", ["--passes", "--rounds"])
def test_a_count_below_one_is_refused_with_exit_2(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main([flag, "0", "--client-priority", "normal"])
    assert exc.value.code == 2 and f"{flag} must be at least 1" in capsys.readouterr().err


def test_reserving_every_core_is_refused_with_exit_2(capsys):
    from cai_ray.platform import num_cores

    with pytest.raises(SystemExit) as exc:
        main(["--reserved-cpus", str(num_cores()), "--client-priority", "normal"])
    assert exc.value.code == 2 and "--reserved-cpus must be 0-" in capsys.readouterr().err

"""Open-loop loads and repeated scenarios (issue 18, first part): rate and Poisson arrivals
checked against their distributions (fixed seeds), sends that keep their schedule against
a server that answers at once (a stub, named so), the intervals over repetitions and on
speedups checked by simulation, the model cards' preset, and the API's rules."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from scipy import stats as sps

from qeval.api.evalrun import MODEL_CARD_SHAPES, Performance, Scenario, ScenarioKind
from qeval.api.evalrun_status import Percentiles, PerformancePoint, Repetition
from qeval.results.performance import mean_interval, measurable, ratio_interval, speedups
from qeval.serving.client import ClientSettings, arrival_offsets, run_arrivals
from qeval.stages.benchmark import CLIENT_LAG_LIMIT, measure
from tests.test_api import cel
from tests.test_serving import Stub

TRIALS = 4000


def test_a_constant_rate_spaces_requests_evenly():
    offsets = arrival_offsets(ScenarioKind.RATE, 4.0, 9, seed=1)
    assert np.allclose(offsets, np.arange(9) * 0.25)


def test_poisson_arrivals_have_exponential_gaps_and_poisson_counts():
    rate, n = 5.0, 20000
    offsets = arrival_offsets(ScenarioKind.POISSON, rate, n, seed=7)
    gaps = np.diff(offsets)
    assert offsets[0] == 0 and np.all(gaps > 0)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert sps.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 0.01
    counts = np.histogram(offsets, bins=np.arange(0, offsets[-1], 1.0))[0]
    assert counts.mean() == pytest.approx(rate, rel=0.03)
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.1)  # Poisson: var = mean
    # seeded: the same arrivals for every model (paired runs), others for another seed
    assert np.array_equal(offsets, arrival_offsets(ScenarioKind.POISSON, rate, n, seed=7))
    assert not np.array_equal(offsets, arrival_offsets(ScenarioKind.POISSON, rate, n, seed=8))


def test_an_open_loop_sends_on_schedule_whatever_is_in_flight():
    """A server that takes 0.3 s a request, 10 requests at 20 per second: a closed loop
    would wait; the open loop sends each at its time (lag well under the client limit)."""
    offsets = list(arrival_offsets(ScenarioKind.RATE, 20.0, 10, seed=0))
    with Stub(delay=0.3) as stub:
        run = asyncio.run(run_arrivals(stub.url, "m", ["p"] * 10, 2, offsets, ClientSettings()))
    assert all(r.ok for r in run.results)
    lags = [r.lag for r in run.results]
    assert all(lag is not None and lag < CLIENT_LAG_LIMIT for lag in lags), lags
    assert run.wall_seconds < 0.45 + 0.3 + 0.3  # the last sent at 0.45 s, not after 3 s


# --- intervals over repetitions, by simulation -----------------------------------------


def test_the_mean_interval_covers_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(TRIALS):
        _, low, high = mean_interval(list(rng.normal(100.0, 5.0, 3)))
        covered += low <= 100.0 <= high
    assert 0.93 <= covered / TRIALS <= 0.97, covered / TRIALS


@pytest.mark.parametrize(("cv_a", "cv_b"), [(0.05, 0.05), (0.02, 0.08)])
def test_the_ratio_interval_covers_95_percent_of_the_time(cv_a, cv_b):
    """Three repetitions a side, throughputs with 2-8 % run-to-run noise, true ratio 1.3."""
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(TRIALS):
        a = rng.normal(130.0, 130.0 * cv_a, 3)
        b = rng.normal(100.0, 100.0 * cv_b, 3)
        _, low, high = ratio_interval(list(a), list(b))
        covered += low <= 1.3 <= high
    assert 0.93 <= covered / TRIALS <= 0.97, covered / TRIALS


def test_a_ratio_whose_interval_holds_one_is_no_measurable_difference():
    assert measurable(*ratio_interval([100, 104, 98], [101, 99, 103])[1:]) is False
    assert measurable(*ratio_interval([150, 152, 149], [100, 101, 99])[1:]) is True
    assert ratio_interval([150], [100])[1:] == (None, None)
    assert measurable(None, None) is None


def _point(model: str, tps: list[float]) -> PerformancePoint:
    p50 = Percentiles(p50=1.0, p90=1.0, p99=1.0)
    reps = [
        Repetition(requests_per_second=t / 100, output_tokens_per_second=t, latency_seconds=100 / t)
        for t in tps
    ]
    mean = float(np.mean(tps))
    return PerformancePoint(
        model=model, scenario="s", backend="hf", requests=8, latency_seconds=100 / mean,
        output_tokens_per_second=mean, requests_per_second=mean / 100, ttft_seconds=p50,
        e2e_seconds=p50, repetitions=reps,
    )  # fmt: skip


def test_speedups_carry_their_intervals():
    (s,) = speedups([_point("b", [100, 102, 98]), _point("c", [150, 149, 152])], "b")
    assert s.output_throughput == pytest.approx(1.5033, abs=1e-3)
    assert s.output_throughput_ci_low < s.output_throughput < s.output_throughput_ci_high
    assert s.output_throughput_ci_low > 1.0 and s.latency_ci_low > 1.0
    (same,) = speedups([_point("b", [100, 102, 98]), _point("c", [101, 97, 103])], "b")
    assert same.output_throughput_ci_low < 1.0 < same.output_throughput_ci_high


# --- the stage's repetitions ----------------------------------------------------------------


def test_every_scenario_runs_repeats_times_with_its_interval(tmp_path):
    small = {"prompt_tokens": 4, "output_tokens": 2}
    perf = Performance(
        scenarios=[
            Scenario(name="sync", kind=ScenarioKind.SYNCHRONOUS, requests=3, **small),
            Scenario(name="poisson", kind=ScenarioKind.POISSON, rate=20.0, requests=6, **small),
        ],
        repeats=3,
        warmup_requests=0,
    )
    log = tmp_path / "requests.jsonl"
    with Stub(delay=0.01) as stub:
        points = measure(stub.url, "m", "hf", "fp32", perf, None, 5, log)
    sync, poisson = points
    assert len(sync.repetitions) == 3 and sync.requests == 9
    assert (
        sync.requests_per_second_ci_low
        <= sync.requests_per_second
        <= sync.requests_per_second_ci_high
    )
    assert sync.send_lag_seconds is None and poisson.send_lag_seconds is not None
    assert poisson.rate == 20.0 and not poisson.client_limited and poisson.requests == 18
    rows = log.read_text().splitlines()
    assert len(rows) == 9 + 18


def test_the_model_cards_preset_is_seven_shapes_single_stream_and_at_maximum_throughput():
    runs = Performance(preset="model-cards").runs()
    assert len(runs) == 14 and len(MODEL_CARD_SHAPES) == 7
    shapes = {(s.prompt_tokens, s.output_tokens) for s in runs}
    assert shapes == {
        (256, 1024),
        (768, 128),
        (1024, 1024),
        (1024, 128),
        (256, 128),
        (512, 256),
        (4096, 512),
    }
    assert {s.kind for s in runs} == {ScenarioKind.SYNCHRONOUS, ScenarioKind.THROUGHPUT}
    assert [s.name for s in Performance().runs()] == [
        "synchronous",
        "concurrent-4",
        "concurrent-16",
        "throughput",
    ]
    assert Performance.model_validate(Performance(preset="model-cards").dump()).runs() == runs


def test_the_rate_and_preset_rules_agree_in_cel_and_python():
    from qeval.api.evalrun import PERFORMANCE_RULES, SCENARIO_RULES

    rate_rule = next(r for r in SCENARIO_RULES if "rate" in r.cel)
    for kind in ScenarioKind:
        for rate in (None, 2.0):
            wire = {"name": "s", "kind": str(kind), **({"rate": rate} if rate else {})}
            obj = Scenario.model_construct(name="s", kind=kind, rate=rate)
            assert cel(rate_rule.cel, wire) == rate_rule.check(obj), wire
    preset_rule = next(r for r in PERFORMANCE_RULES if "preset" in r.cel)
    scenario = {"name": "s", "kind": "synchronous"}
    for preset in (None, "model-cards"):
        for scenarios in (None, [scenario]):
            wire = {k: v for k, v in {"preset": preset, "scenarios": scenarios}.items() if v}
            obj = Performance.model_construct(
                preset=preset, scenarios=[Scenario(**scenario)] if scenarios else None
            )
            assert cel(preset_rule.cel, wire) == preset_rule.check(obj), wire
    with pytest.raises(ValueError, match="needs rate"):
        Scenario(name="s", kind=ScenarioKind.POISSON)
    with pytest.raises(ValueError, match="not both"):
        Performance(preset="model-cards", scenarios=[Scenario(**scenario)])


def test_the_report_gives_each_speedup_its_interval_and_says_when_there_is_no_difference():
    from qeval.report.render import speedup_text

    (faster,) = speedups([_point("b", [100, 102, 98]), _point("c", [150, 149, 152])], "b")
    (same,) = speedups([_point("b", [100, 102, 98]), _point("c", [101, 97, 103])], "b")
    assert speedup_text(faster).startswith("1.50x [1.4") and "no measurable" not in speedup_text(
        faster
    )
    assert speedup_text(same).endswith("(no measurable difference)")
    once = speedups([_point("b", [100]), _point("c", [150])], "b")[0]
    assert speedup_text(once) == "1.50x" and speedup_text(None) == ""


# --- SLOs and goodput --------------------------------------------------------------------------


def test_tpot_is_inference_perfs_and_a_request_meets_an_slo_on_every_target():
    from qeval.serving.client import RequestResult

    r = RequestResult(True, ttft=0.2, itl=[0.1, 0.1, 0.1], e2e=0.5, output_tokens=4)
    assert r.tpot == pytest.approx(0.1)  # (0.5 - 0.2) / (4 - 1)
    assert RequestResult(True, ttft=0.2, e2e=0.2, output_tokens=1).tpot is None
    assert r.meets(0.25, 0.12, None) and r.meets(None, None, 0.5)
    assert not r.meets(0.1, None, None) and not r.meets(None, 0.05, None)
    assert not RequestResult(False, error="HTTP 500").meets(None, None, None)


def test_each_scenario_reports_its_slo_attainment_and_goodput():
    from qeval.api.evalrun import Slo

    small = {"prompt_tokens": 4, "output_tokens": 2}
    sync = Scenario(name="sync", kind=ScenarioKind.SYNCHRONOUS, requests=4, **small)

    def run(slo: Slo) -> PerformancePoint:
        perf = Performance(scenarios=[sync], repeats=2, warmup_requests=0, slo=slo)
        with Stub(delay=0.05) as stub:  # every request takes 50 ms or a little more
            (p,) = measure(stub.url, "m", "hf", "fp32", perf, None, 5)
        return p

    easy, hard = run(Slo(e2e_seconds=5.0)), run(Slo(ttft_seconds=0.01))
    assert easy.slo_attainment == 1.0 and hard.slo_attainment == 0.0
    assert easy.goodput_requests_per_second == pytest.approx(easy.requests_per_second, rel=0.05)
    assert hard.goodput_requests_per_second == 0.0
    assert easy.tpot_seconds is not None and easy.tpot_seconds.p50 >= 0
    with pytest.raises(ValueError, match="at least one target"):
        Slo()
    from qeval.api.evalrun import SLO_RULES

    (rule,) = SLO_RULES
    for fields in ({}, {"ttft_seconds": 1.0}, {"tpot_seconds": 0.1}, {"e2e_seconds": 9.0}):
        wire = {k.replace("_s", "S"): v for k, v in fields.items()}
        assert cel(rule.cel, wire) == rule.check(Slo.model_construct(**fields)), wire


def test_the_report_shows_slo_attainment_and_goodput_where_an_slo_was_set():
    from qeval.api.evalrun_status import EvalRunStatus
    from qeval.report.model import Run
    from qeval.report.render import serving_table

    p = _point("b", [100, 102, 98]).model_copy(
        update={"slo_attainment": 0.875, "goodput_requests_per_second": 0.9}
    )
    table = serving_table(Run(name="r", baseline="b", baseline_scheme=None, threshold=0.95,
                              status=EvalRunStatus(performance=[p])))  # fmt: skip
    assert table is not None and table.headers[-2:] == ["SLO met", "goodput req/s"]
    assert table.rows[0][-2:] == ["87.5 %", "0.9"]

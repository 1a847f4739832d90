"""Load predictors: behaviour on simple series and backtests on the simulator's traces."""

from __future__ import annotations

import math

import numpy as np
import pytest
from moeplane.api.enums import Predictor
from moeplane.planner.predictors import (
    ArimaPredictor,
    ConstantPredictor,
    EmaPredictor,
    HoltPredictor,
    KalmanPredictor,
    PredictorError,
    arima_available,
    backtest,
    make_predictor,
)
from moeplane.planner.sim.traces import LengthDist, bursty_trace, diurnal_trace, poisson_trace

pytestmark = pytest.mark.unit

LENGTHS = LengthDist(1000, 0.5)


def _minute_rates(trace) -> list[float]:
    return [x.arrival_rate_per_s for x in trace.interval_loads(60.0, 5.0)]


def test_updates_return_new_values_and_leave_the_old_untouched() -> None:
    for kind in (Predictor.CONSTANT, Predictor.EMA, Predictor.HOLT, Predictor.KALMAN):
        p0 = make_predictor(kind)
        p1 = p0.update(10.0)
        p2 = p1.update(20.0)
        assert p0.observations == 0 and p1.observations == 1 and p2.observations == 2
        assert p1.forecast(1) == pytest.approx(10.0)


def test_constant_and_ema_levels() -> None:
    assert ConstantPredictor().update(3.0).update(7.0).forecast(5) == 7.0
    ema = EmaPredictor(alpha=0.5)
    for y in (0.0, 10.0, 10.0, 10.0):
        ema = ema.update(y)
    assert ema.forecast(1) == pytest.approx(8.75)


@pytest.mark.parametrize("predictor", [HoltPredictor(), KalmanPredictor()])
def test_trend_models_follow_a_ramp_that_level_models_lag(predictor) -> None:
    ramp = [100.0 + 10.0 * i for i in range(40)]
    trend = backtest(predictor, ramp, horizon=3)
    level = backtest(ConstantPredictor(), ramp, horizon=3)
    assert level.mae == pytest.approx(30.0)
    assert trend.mae < 0.5 * level.mae  # damped Holt gives up part of the trend on purpose


def test_forecasts_never_go_negative() -> None:
    falling = [100.0 - 30.0 * i for i in range(4)] + [0.0, 0.0]
    for kind in (Predictor.CONSTANT, Predictor.EMA, Predictor.HOLT, Predictor.KALMAN):
        p = make_predictor(kind)
        for y in falling:
            p = p.update(max(y, 0.0))
        assert p.forecast(10) >= 0.0


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(PredictorError, match="alpha must be in"):
        EmaPredictor(alpha=0.0)
    with pytest.raises(PredictorError, match="damping"):
        HoltPredictor(damping=1.5)
    with pytest.raises(PredictorError, match="measurement_noise must be positive"):
        KalmanPredictor(measurement_noise=0.0)
    with pytest.raises(PredictorError, match="finite"):
        ConstantPredictor().update(math.nan)
    with pytest.raises(PredictorError, match="horizon"):
        backtest(ConstantPredictor(), [1.0, 2.0, 3.0, 4.0], horizon=0)


def test_backtests_on_the_simulator_traces() -> None:
    """Every predictor is scored on every synthetic trace; the scores say what each is for."""
    poisson = _minute_rates(poisson_trace(200.0, 3600, LENGTHS, LENGTHS, seed=1))
    bursty = _minute_rates(bursty_trace(150.0, 260.0, 120.0, 240.0, 3600, LENGTHS, LENGTHS, seed=2))
    diurnal = _minute_rates(diurnal_trace(200.0, 0.6, 3600, 3600, LENGTHS, LENGTHS, seed=3))
    kinds = [Predictor.CONSTANT, Predictor.EMA, Predictor.HOLT, Predictor.KALMAN]
    score = {
        (name, k): backtest(make_predictor(k), series, horizon=h)
        for name, series, h in (("poisson", poisson, 1), ("bursty", bursty, 1), ("diurnal", diurnal, 3))
        for k in kinds
    }
    # Stationary Poisson: per-minute counts of ~12,000 requests; every model is within 3%, and
    # smoothing beats repeating the last value.
    for k in kinds:
        assert score["poisson", k].mape < 0.03
    assert score["poisson", Predictor.EMA].mae < score["poisson", Predictor.CONSTANT].mae
    # Diurnal, 3 minutes ahead: the trend models beat the level models clearly.
    for trend in (Predictor.HOLT, Predictor.KALMAN):
        for level in (Predictor.CONSTANT, Predictor.EMA):
            assert score["diurnal", trend].mae < 0.8 * score["diurnal", level].mae
    # Bursty on/off is not predictable from its past: nothing does much better than 'last value'.
    best = min(score["bursty", k].mape for k in kinds)
    assert best > 0.5 * score["bursty", Predictor.CONSTANT].mape
    assert all(np.isfinite(b.rmse) for b in score.values())


@pytest.mark.skipif(not arima_available(), reason="statsmodels is not installed (ARIMA is optional)")
def test_arima_backtest_on_a_ramp() -> None:
    ramp = [100.0 + 10.0 * i + (3.0 if i % 2 else -3.0) for i in range(30)]
    assert backtest(ArimaPredictor(window=20), ramp, horizon=1, warmup=10).mape < 0.05


@pytest.mark.skipif(arima_available(), reason="statsmodels is installed")
def test_arima_without_statsmodels_says_how_to_fix_it() -> None:
    with pytest.raises(PredictorError, match="needs statsmodels"):
        make_predictor(Predictor.ARIMA)

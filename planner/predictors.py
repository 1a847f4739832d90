"""Load predictors: forecast the next intervals of a series (arrival rate, ISL, OSL).

Each predictor is an immutable value: `update(y)` returns a new predictor that has seen `y`,
`forecast(steps)` the value expected `steps` intervals ahead. Immutability lets the planner fork
its state for what-if runs and replay. Forecasts never go below zero (they are rates and lengths).

- constant: the last value.
- EMA: exponentially weighted level.
- Holt: level plus linear trend (double exponential smoothing), with a damped trend so long
  horizons do not run away.
- Kalman: local linear trend state [level, slope] with process and measurement noise scaled to
  the series' own magnitude, so one setting works for 10 req/s and 10,000 req/s.
- ARIMA(1,1,1) via statsmodels, only when statsmodels is importable (`arima_available()`).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, Self

from moeplane.api.enums import Predictor


class PredictorError(ValueError):
    """A predictor that cannot be built: names the parameter and its value."""


class LoadPredictor(Protocol):
    @property
    def observations(self) -> int: ...

    def update(self, y: float) -> Self: ...

    def forecast(self, steps: int = 1) -> float: ...


def _check_unit(name: str, value: float) -> None:
    if not 0 < value <= 1:
        raise PredictorError(f"{name} must be in (0, 1], got {value}")


def _check_y(y: float) -> float:
    if not math.isfinite(y):
        raise PredictorError(f"observations must be finite, got {y}")
    return y


@dataclass(frozen=True)
class ConstantPredictor:
    last: float = 0.0
    observations: int = 0

    def update(self, y: float) -> ConstantPredictor:
        return ConstantPredictor(_check_y(y), self.observations + 1)

    def forecast(self, steps: int = 1) -> float:
        return max(0.0, self.last)


@dataclass(frozen=True)
class EmaPredictor:
    alpha: float = 0.5
    level: float = 0.0
    observations: int = 0

    def __post_init__(self) -> None:
        _check_unit("alpha", self.alpha)

    def update(self, y: float) -> EmaPredictor:
        y = _check_y(y)
        level = y if self.observations == 0 else self.alpha * y + (1 - self.alpha) * self.level
        return replace(self, level=level, observations=self.observations + 1)

    def forecast(self, steps: int = 1) -> float:
        return max(0.0, self.level)


@dataclass(frozen=True)
class HoltPredictor:
    alpha: float = 0.5
    beta: float = 0.3
    damping: float = 0.9  # phi: the trend's weight decays by this per step ahead
    level: float = 0.0
    trend: float = 0.0
    observations: int = 0

    def __post_init__(self) -> None:
        _check_unit("alpha", self.alpha)
        _check_unit("beta", self.beta)
        _check_unit("damping", self.damping)

    def update(self, y: float) -> HoltPredictor:
        y = _check_y(y)
        if self.observations == 0:
            return replace(self, level=y, trend=0.0, observations=1)
        if self.observations == 1:
            return replace(self, level=y, trend=y - self.level, observations=2)
        phi = self.damping
        level = self.alpha * y + (1 - self.alpha) * (self.level + phi * self.trend)
        trend = self.beta * (level - self.level) + (1 - self.beta) * phi * self.trend
        return replace(self, level=level, trend=trend, observations=self.observations + 1)

    def forecast(self, steps: int = 1) -> float:
        phi = self.damping
        ahead = sum(phi**i for i in range(1, steps + 1))
        return max(0.0, self.level + ahead * self.trend)


@dataclass(frozen=True)
class KalmanPredictor:
    """Local linear trend: level' = level + slope + w1, slope' = slope + w2, y = level + v."""

    level_noise: float = 0.05  # std of w1, as a fraction of the series' scale
    slope_noise: float = 0.01  # std of w2, same scale
    measurement_noise: float = 0.05  # std of v, same scale
    level: float = 0.0
    slope: float = 0.0
    p: tuple[float, float, float] = (1.0, 0.0, 1.0)  # covariance [[p0, p1], [p1, p2]]
    scale: float = 0.0  # running magnitude of the series
    observations: int = 0

    def __post_init__(self) -> None:
        for name in ("level_noise", "slope_noise", "measurement_noise"):
            if getattr(self, name) <= 0:
                raise PredictorError(f"{name} must be positive, got {getattr(self, name)}")

    def update(self, y: float) -> KalmanPredictor:
        y = _check_y(y)
        if self.observations == 0:
            s = max(abs(y), 1e-9)
            return replace(self, level=y, slope=0.0, p=(s * s, 0.0, (0.1 * s) ** 2), scale=s, observations=1)
        scale = 0.9 * self.scale + 0.1 * abs(y)
        s2 = max(scale, 1e-9) ** 2
        q0, q2 = (self.level_noise**2) * s2, (self.slope_noise**2) * s2
        r = (self.measurement_noise**2) * s2
        # Predict: x = F x, P = F P F' + Q with F = [[1, 1], [0, 1]].
        level, slope = self.level + self.slope, self.slope
        p0, p1, p2 = self.p
        p0, p1, p2 = p0 + 2 * p1 + p2 + q0, p1 + p2, p2 + q2
        # Update with H = [1, 0].
        innovation_var = p0 + r
        k0, k1 = p0 / innovation_var, p1 / innovation_var
        residual = y - level
        level, slope = level + k0 * residual, slope + k1 * residual
        p0, p1, p2 = (1 - k0) * p0, (1 - k0) * p1, p2 - k1 * p1
        return replace(
            self, level=level, slope=slope, p=(p0, p1, p2), scale=scale, observations=self.observations + 1
        )

    def forecast(self, steps: int = 1) -> float:
        return max(0.0, self.level + steps * self.slope)


def arima_available() -> bool:
    return importlib.util.find_spec("statsmodels") is not None


@dataclass(frozen=True)
class ArimaPredictor:
    """ARIMA(1,1,1) refitted on the last `window` observations (needs statsmodels)."""

    window: int = 60
    history: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not arima_available():
            raise PredictorError("predictor arima needs statsmodels; install it or pick holt or kalman")
        if self.window < 8:
            raise PredictorError(f"window must be at least 8, got {self.window}")

    @property
    def observations(self) -> int:
        return len(self.history)

    def update(self, y: float) -> ArimaPredictor:
        return replace(self, history=(*self.history, _check_y(y))[-self.window :])

    def forecast(self, steps: int = 1) -> float:
        if len(self.history) < 8:
            return max(0.0, self.history[-1]) if self.history else 0.0
        import warnings

        from statsmodels.tsa.arima.model import ARIMA

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = ARIMA(list(self.history), order=(1, 1, 1)).fit()
            return max(0.0, float(fit.forecast(steps)[-1]))


def make_predictor(kind: Predictor | str) -> LoadPredictor:
    """A fresh predictor of this kind with default parameters."""
    kind = Predictor(kind)
    if kind is Predictor.CONSTANT:
        return ConstantPredictor()
    if kind is Predictor.EMA:
        return EmaPredictor()
    if kind is Predictor.HOLT:
        return HoltPredictor()
    if kind is Predictor.KALMAN:
        return KalmanPredictor()
    return ArimaPredictor()


@dataclass(frozen=True)
class Backtest:
    """One-step-ahead (or `horizon`-ahead) forecast errors of a predictor over a series."""

    predictor: str
    horizon: int
    points: int
    mae: float
    rmse: float
    mape: float  # mean absolute error over mean absolute value


def backtest(
    predictor: LoadPredictor, series: Sequence[float], *, horizon: int = 1, warmup: int = 3
) -> Backtest:
    """Walk the series; after each of the first n observations forecast observation n + horizon."""
    if horizon < 1:
        raise PredictorError(f"horizon must be at least 1, got {horizon}")
    errors: list[float] = []
    actuals: list[float] = []
    state = predictor
    for i, y in enumerate(series):
        state = state.update(y)
        target = i + horizon
        if i + 1 >= warmup and target < len(series):
            errors.append(state.forecast(horizon) - series[target])
            actuals.append(abs(series[target]))
    if not errors:
        raise PredictorError(
            f"series of {len(series)} points is too short for warmup {warmup} and horizon {horizon}"
        )
    n = len(errors)
    mae = sum(abs(e) for e in errors) / n
    mean_actual = sum(actuals) / n
    return Backtest(
        predictor=type(predictor).__name__,
        horizon=horizon,
        points=n,
        mae=mae,
        rmse=math.sqrt(sum(e * e for e in errors) / n),
        mape=mae / mean_actual if mean_actual else math.inf,
    )

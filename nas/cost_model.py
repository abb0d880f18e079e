"""A learned cost model: J/sample and latency predicted from a candidate, per hardware (numpy, scikit-learn).

Inference energy depends on the architecture, the compression and the served form (ARCHITECTURE decisions
4 and 12), so a study's own readings teach what an unbuilt candidate will cost on the same hardware. One
:class:`CostModel` is fitted per hardware fingerprint and meter (readings of different meters or devices are
not comparable) on a study's COMPLETE trials (:mod:`nas.cost_study` reads them from the database).

* **Inputs** (:class:`CostInputs`): the candidate, the measurement's batch size and sequence length, and a
  profile of its served form (:mod:`nas.cost_inputs`): FLOPs per row, ATen operators per forward pass and
  tensor elements written per row.
* **Features** (:data:`FEATURE_NAMES`): the logarithms of those three and of the batch size, sequence length,
  width and FFN size; the served depth; whether the attention and FFN weights run as int8, and the activation
  bits. The attention kind, sparsity and low-rank factors act through the profile (a strided attention issues
  ten times the operators of a softmax one; structured pruning shrinks the FLOPs). A one-hot feature per kind
  made held-out errors worse at 40 trials (docs/cost_model.md).
* **Targets** (:data:`TARGETS`): the logarithm of J/sample and of p50 latency (per batch), so that errors are
  relative and the model is a log-linear law plus a smooth correction.
* **Model**: a Gaussian process (scikit-learn) on standardised features with a linear (dot-product) kernel
  plus an RBF kernel plus white noise, fitted twice: readings whose leave-one-out residual is an outlier
  (:data:`OUTLIER_Z`, e.g. a latency taken while other work shared the CPU) are left out of the second fit.
  Its predictive standard deviation in log space gives every prediction an interval: ``low`` and ``high``
  are the ``1 - confidence`` and ``confidence`` quantiles (10% and 90% by default).
* **Infeasible with high confidence** (:func:`predicted_broken`): a :func:`predictable` study constraint that
  fails for every predicted value between ``low`` and ``high`` (the 10% quantile already breaks
  ``energy_per_sample_j < 0.002``): the candidate meets it with probability below ``1 - confidence``. A
  search skips building such candidates (``fidelity.predict_skip``, :mod:`nas.runner.cost_gate`).
"""

from __future__ import annotations

import itertools
import math
import statistics
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.linalg import solve_triangular
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, DotProduct, WhiteKernel
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from nas.candidate_parts import storage_bits
from nas.config import Candidate
from nas.errors import NASError
from nas.feasibility import BEFORE_TRAINING_NAMES, judgeable
from nas.where import compile_where, names_read

__all__ = ["TARGETS", "MIN_TRIALS", "DEFAULT_CONFIDENCE", "FEATURE_NAMES", "CostModelError", "CostInputs",
           "CostObservation", "CostPrediction", "CostModel", "HeldOut", "CrossValidation", "features",
           "cross_validate", "INPUT_NAMES", "predictable", "BrokenConstraint", "predicted_broken", "infeasible_reason",
           "predicted_infeasible"]

#: What the model predicts: the trial values of these names (:meth:`nas.records.TrialResult.objectives`).
TARGETS: tuple[str, ...] = ("energy_per_sample_j", "latency_p50_ms")
#: The fewest trials of one hardware a model is fitted on: fewer cannot hold out anything meaningful.
MIN_TRIALS = 8
#: ``low`` is the ``1 - confidence`` quantile of a prediction, ``high`` the ``confidence`` quantile.
DEFAULT_CONFIDENCE = 0.9


class CostModelError(NASError):
    """A cost model cannot be fitted (too few trials) or asked (a candidate it cannot read)."""


@dataclass(frozen=True)
class CostInputs:
    """What the cost model reads of one candidate as it will be measured.

    Attributes:
        candidate: The candidate.
        flops_per_sample: Forward FLOPs of one row as served (pruned, inference layers only).
        batch_size: The measurement's batch size.
        seq_len: The measurement's sequence length (tokens per row).
        aten_ops: ATen operators one forward pass of the served form dispatches.
        elements_per_sample: Tensor elements that forward pass writes, per row.
    """

    candidate: Candidate
    flops_per_sample: float
    batch_size: int
    seq_len: int
    aten_ops: int
    elements_per_sample: float


def features(x: CostInputs) -> list[float]:
    """The feature vector of ``x``, in the order of :data:`FEATURE_NAMES`.

    Raises:
        CostModelError: A profile value or the shape is not positive.
    """
    c = x.candidate
    profile = (x.flops_per_sample, x.aten_ops, x.elements_per_sample, x.batch_size, x.seq_len)
    if not all(v > 0 for v in profile):
        raise CostModelError("FLOPs, operators, elements, batch size and sequence length must be positive",
                             field="inputs", value=profile, fix="profile the served model (nas.cost_inputs)")
    q = c.quant
    return [*(math.log(v) for v in profile), math.log(c.d_model), math.log(c.d_ffn), float(len(c.kept_layers)),
            float(storage_bits(q.attention_bits) == 8), float(storage_bits(q.ffn_bits) == 8),
            float(q.activation_bits == 8), float(q.activation_bits < 8)]


#: The names of :func:`features`' values, in order.
FEATURE_NAMES: tuple[str, ...] = (
    "log_flops_per_sample", "log_aten_ops", "log_elements_per_sample", "log_batch_size", "log_seq_len",
    "log_d_model", "log_d_ffn", "served_layers", "attention_int8", "ffn_int8", "activation_int8",
    "activation_lowbit",
)


@dataclass(frozen=True)
class CostObservation:
    """One measured trial: its inputs and its measured value of each target (``None`` where not measured)."""

    inputs: CostInputs
    measured: Mapping[str, float | None]
    trial: int | None = None


@dataclass(frozen=True)
class CostPrediction:
    """A predicted value with its interval.

    Attributes:
        metric: The predicted trial value (one of :data:`TARGETS`).
        median: The predicted median (the exponential of the predicted log).
        low: The ``1 - confidence`` quantile.
        high: The ``confidence`` quantile.
        confidence: See ``low`` and ``high``.
        log_std: The predictive standard deviation of the log value.
    """

    metric: str
    median: float
    low: float
    high: float
    confidence: float
    log_std: float

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return {"metric": self.metric, "median": self.median, "low": self.low, "high": self.high,
                "confidence": self.confidence, "log_std": self.log_std}


#: A reading whose leave-one-out residual is this many robust standard deviations (1.4826 x MAD) from the
#: median residual is left out of the fit: a measurement disturbed by other work on the device.
OUTLIER_Z = 4.0


def _regressor() -> Pipeline:
    kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * DotProduct(1.0, (1e-3, 1e3))
              + ConstantKernel(1.0, (1e-3, 1e3)) * RBF(4.0, (1e-1, 1e3)) + WhiteKernel(0.01, (1e-6, 1.0)))
    gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2, random_state=0)
    return make_pipeline(StandardScaler(), gp)


def _fit_gp(x: np.ndarray, y: np.ndarray) -> Pipeline:
    with warnings.catch_warnings():  # a bound reached by the optimiser is not worth a warning per fit
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _regressor().fit(x, y)


def _loo_residuals(reg: Pipeline) -> np.ndarray:
    """Each training point's leave-one-out residual, in closed form: ``[K^-1 y]_i / [K^-1]_ii``."""
    gp = reg[-1]
    inv_l = solve_triangular(gp.L_, np.eye(gp.L_.shape[0]), lower=True)
    return np.asarray(np.ravel(gp.alpha_) / (inv_l ** 2).sum(axis=0), dtype=float)


def _robust_fit(x: np.ndarray, y: np.ndarray, min_trials: int) -> tuple[Pipeline, np.ndarray]:
    """Fit, leave out the readings whose leave-one-out residual is an outlier (:data:`OUTLIER_Z`), refit.

    Returns the regressor and the mask of the rows it kept.
    """
    reg = _fit_gp(x, y)
    loo = _loo_residuals(reg)
    centre = float(np.median(loo))
    scale = 1.4826 * float(np.median(np.abs(loo - centre)))
    keep = np.abs(loo - centre) <= OUTLIER_Z * scale if scale > 0 else np.ones(len(y), dtype=bool)
    if keep.all() or keep.sum() < min_trials:
        return reg, np.ones(len(y), dtype=bool)
    return _fit_gp(x[keep], y[keep]), keep


@dataclass(frozen=True)
class CostModel:
    """Fitted regressors of log J/sample and log latency for one hardware fingerprint and meter.

    Attributes:
        hardware: The hardware fingerprint of every reading it was fitted on.
        meter: Their meter (an ``estimate`` predicts an estimate).
        is_estimate: Whether that meter's readings are estimates.
        n_trials: Trials it was fitted on, per target.
        trials: The trial numbers it was given (those known).
        outliers: Per target, the trials left out as outliers (:data:`OUTLIER_Z`).
    """

    hardware: str
    meter: str
    is_estimate: bool
    n_trials: Mapping[str, int]
    trials: tuple[int, ...] = ()
    outliers: Mapping[str, tuple[int | None, ...]] = field(default_factory=dict)
    _fitted: Mapping[str, Pipeline] = field(default_factory=dict, repr=False)

    @classmethod
    def fit(cls, observations: Sequence[CostObservation], *, hardware: str, meter: str, is_estimate: bool,
            min_trials: int = MIN_TRIALS) -> CostModel:
        """Fit one regressor per target on the observations that measured it, outliers left out.

        Raises:
            CostModelError: Fewer than ``min_trials`` observations measured some target.
        """
        fitted, counts, outliers = {}, {}, {}
        for target in TARGETS:
            rows = [o for o in observations if _positive(o.measured.get(target))]
            if len(rows) < min_trials:
                raise CostModelError(
                    f"{len(rows)} measured trial(s) of {target} on {hardware!r} (meter {meter}); the cost model "
                    f"needs at least {min_trials}", fix=f"run {min_trials - len(rows)} or more trials on this "
                    "hardware first, or pick hardware that has them (--hardware)")
            x = np.array([features(o.inputs) for o in rows])
            y = np.log(np.array([float(o.measured[target]) for o in rows]))  # type: ignore[arg-type]
            fitted[target], keep = _robust_fit(x, y, min_trials)
            counts[target] = int(keep.sum())
            outliers[target] = tuple(o.trial for o, k in zip(rows, keep, strict=True) if not k)
        numbers = tuple(sorted(o.trial for o in observations if o.trial is not None))
        return cls(hardware=hardware, meter=meter, is_estimate=is_estimate, n_trials=counts, trials=numbers,
                   outliers=outliers, _fitted=fitted)

    def predict(self, inputs: CostInputs, *, confidence: float = DEFAULT_CONFIDENCE) -> dict[str, CostPrediction]:
        """Each target's prediction for ``inputs``, with its ``confidence`` interval."""
        return self.predict_many([inputs], confidence=confidence)[0]

    def predict_many(self, inputs: Sequence[CostInputs], *,
                     confidence: float = DEFAULT_CONFIDENCE) -> list[dict[str, CostPrediction]]:
        """:meth:`predict` for many inputs at once."""
        if not 0.5 <= confidence < 1.0:
            raise CostModelError("confidence must be in [0.5, 1)", field="confidence", value=confidence,
                                 fix="use e.g. 0.9 (the interval from the 10% to the 90% quantile)")
        if not inputs:
            return []
        x = np.array([features(i) for i in inputs])
        z = NormalDist().inv_cdf(confidence)
        out: list[dict[str, CostPrediction]] = [{} for _ in inputs]
        for target, reg in self._fitted.items():
            mean, std = reg[-1].predict(reg[:-1].transform(x), return_std=True)
            for row, m, s in zip(out, mean, std, strict=True):
                row[target] = CostPrediction(metric=target, median=math.exp(m), low=math.exp(m - z * s),
                                             high=math.exp(m + z * s), confidence=confidence, log_std=float(s))
        return out

    def describe(self) -> str:
        """One line: what it was fitted on."""
        counts = ", ".join(f"{n} {t}" for t, n in self.n_trials.items())
        tag = " (ESTIMATE)" if self.is_estimate else ""
        left = "; ".join(f"{t} of trial(s) {', '.join(str(n) for n in trials)}"
                         for t, trials in self.outliers.items() if trials)
        return (f"cost model of {self.hardware!r}, meter {self.meter}{tag}, fitted on {counts} trial reading(s)"
                + (f"; left out as outliers: {left}" if left else ""))


def _positive(v: float | None) -> bool:
    return v is not None and math.isfinite(v) and v > 0


@dataclass(frozen=True)
class HeldOut:
    """One trial predicted by a model that did not see it: the measured value beside the prediction."""

    trial: int | None
    metric: str
    measured: float
    predicted: CostPrediction

    @property
    def abs_pct_error(self) -> float:
        """``|predicted median - measured| / measured``."""
        return abs(self.predicted.median - self.measured) / self.measured

    @property
    def inside(self) -> bool:
        """Whether the measured value lies in the prediction's interval."""
        return self.predicted.low <= self.measured <= self.predicted.high

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, with the error."""
        return {"trial": self.trial, "metric": self.metric, "measured": self.measured,
                "predicted": self.predicted.median, "low": self.predicted.low, "high": self.predicted.high,
                "abs_pct_error": self.abs_pct_error}


def _summary(rows: Sequence[HeldOut], baseline: Sequence[float]) -> dict[str, Any]:
    errs = [r.abs_pct_error for r in rows]
    if not errs:
        return {"n": 0}
    return {"n": len(errs), "median_abs_pct_error": statistics.median(errs),
            "mean_abs_pct_error": statistics.fmean(errs), "p90_abs_pct_error": float(np.percentile(errs, 90)),
            "interval_coverage": statistics.fmean(float(r.inside) for r in rows),
            "baseline_median_abs_pct_error": statistics.median(baseline) if baseline else None}


@dataclass(frozen=True)
class CrossValidation:
    """k-fold held-out predictions of one hardware's trials, and their errors per target.

    ``summary[target]``: ``n``, ``median_abs_pct_error`` (MdAPE, the acceptance number),
    ``mean_abs_pct_error``, ``p90_abs_pct_error``, ``interval_coverage`` (how often the measured value fell
    in the prediction's interval) and ``baseline_median_abs_pct_error`` (each held-out trial predicted by the
    training folds' median: what no model gets).
    """

    hardware: str
    meter: str
    is_estimate: bool
    folds: int
    confidence: float
    held_out: tuple[HeldOut, ...]
    summary: Mapping[str, Mapping[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the held-out rows included)."""
        return {"hardware": self.hardware, "meter": self.meter, "is_estimate": self.is_estimate,
                "folds": self.folds, "confidence": self.confidence,
                "summary": {k: dict(v) for k, v in self.summary.items()},
                "held_out": [h.to_dict() for h in self.held_out]}

    def describe(self) -> str:
        """One line per target: its held-out MdAPE, and the meter (an estimate labelled)."""
        tag = "ESTIMATE" if self.is_estimate else "measured"
        lines = []
        for target, s in self.summary.items():
            if not s.get("n"):
                continue
            lines.append(f"{self.hardware} ({self.meter}, {tag}) {target}: held-out MdAPE "
                         f"{s['median_abs_pct_error']:.1%} over {s['n']} trials ({self.folds}-fold; mean "
                         f"{s['mean_abs_pct_error']:.1%}, {1 - self.confidence:.0%}-{self.confidence:.0%} interval coverage "
                         f"{s['interval_coverage']:.0%}; median-only baseline {s['baseline_median_abs_pct_error']:.1%})")
        return "\n".join(lines)


def cross_validate(observations: Sequence[CostObservation], *, hardware: str, meter: str, is_estimate: bool,
                   folds: int = 5, seed: int = 0, confidence: float = DEFAULT_CONFIDENCE,
                   min_trials: int = MIN_TRIALS) -> CrossValidation:
    """Predict every observation with a model fitted on the other folds (``folds`` >= n: leave-one-out).

    Raises:
        CostModelError: Fewer than ``min_trials`` observations, or fewer than 2 folds.
    """
    n = len(observations)
    if n < min_trials or folds < 2:
        raise CostModelError(f"{n} trial(s) on {hardware!r} for {folds}-fold cross-validation; it needs at least "
                             f"{min_trials} trials and 2 folds", fix="run more trials on this hardware first")
    order = np.random.default_rng(seed).permutation(n)
    held: list[HeldOut] = []
    baseline: dict[str, list[float]] = {t: [] for t in TARGETS}
    for fold in np.array_split(order, min(folds, n)):
        test = set(int(i) for i in fold)
        train = [o for i, o in enumerate(observations) if i not in test]
        model = CostModel.fit(train, hardware=hardware, meter=meter, is_estimate=is_estimate,
                              min_trials=min(min_trials, len(train)))
        tested = [observations[i] for i in sorted(test)]
        for obs, pred in zip(tested, model.predict_many([o.inputs for o in tested], confidence=confidence),
                             strict=True):
            for target in TARGETS:
                value = obs.measured.get(target)
                if not _positive(value):
                    continue
                held.append(HeldOut(obs.trial, target, float(value), pred[target]))  # type: ignore[arg-type]
                med = statistics.median(float(o.measured[target]) for o in train  # type: ignore[arg-type]
                                        if _positive(o.measured.get(target)))
                baseline[target].append(abs(med - float(value)) / float(value))  # type: ignore[arg-type]
    held.sort(key=lambda h: (h.metric, h.trial if h.trial is not None else -1))
    summary = {t: _summary([h for h in held if h.metric == t], baseline[t]) for t in TARGETS}
    return CrossValidation(hardware=hardware, meter=meter, is_estimate=is_estimate, folds=min(folds, n),
                           confidence=confidence, held_out=tuple(held), summary=summary)


def _grid(prediction: CostPrediction) -> tuple[float, float, float]:
    return prediction.low, prediction.median, prediction.high


#: What the model knows of a candidate besides its predictions: the names a judged constraint may also read.
INPUT_NAMES: frozenset[str] = frozenset({*Candidate().flat(), "flops_per_sample", "meter", "is_estimate",
                                         "hardware"})


def predictable(constraint: str) -> bool:
    """Whether the cost model can judge ``constraint``: see :func:`predicted_broken`.

    Raises:
        ConfigError: ``constraint`` does not parse.
    """
    names = names_read(constraint)
    return judgeable(constraint) and bool(names & set(TARGETS)) and names <= INPUT_NAMES | set(TARGETS)


@dataclass(frozen=True)
class BrokenConstraint:
    """A study constraint predicted broken with high confidence.

    Attributes:
        constraint: The constraint's text.
        shown: It with the predictions it read, e.g. ``'energy_per_sample_j < 0.002' (predicted
            energy_per_sample_j 0.004 (0.003 to 0.006))``.
    """

    constraint: str
    shown: str


def predicted_broken(model: CostModel, inputs: CostInputs, constraints: Iterable[str], *,
                     confidence: float = DEFAULT_CONFIDENCE) -> list[BrokenConstraint]:
    """The constraints ``inputs``' candidate breaks with high confidence, in order.

    A constraint is judged when it is :func:`predictable`: every name it reads is known before training
    (:mod:`nas.feasibility`), at least one of them is predicted (:data:`TARGETS`), and the others are the
    candidate's fields, its FLOPs, or the model's meter and hardware; one that also reads a measured value the
    model does not predict (throughput, p95 latency) is not judged. It is broken when it fails at every
    combination of ``low``, ``median`` and ``high`` of the values it reads: even the ``1 - confidence``
    quantile breaks it.

    Raises:
        ConfigError: A constraint does not parse.
    """
    judged = [c for c in constraints if predictable(c)]
    if not judged:
        return []
    preds = model.predict(inputs, confidence=confidence)
    values: dict[str, Any] = {**inputs.candidate.flat(), "flops_per_sample": inputs.flops_per_sample,
                              "meter": model.meter, "is_estimate": model.is_estimate, "hardware": model.hardware}
    broken = []
    for text in judged:
        check = compile_where(text, BEFORE_TRAINING_NAMES)
        predicted = sorted(check.names & set(preds))
        corners = itertools.product(*(_grid(preds[n]) for n in predicted))
        if not any(check({**values, **dict(zip(predicted, c, strict=True))}) for c in corners):
            shown = ", ".join(f"{n} {preds[n].median:.4g} ({preds[n].low:.4g} to {preds[n].high:.4g})"
                              for n in predicted)
            broken.append(BrokenConstraint(text, f"{text!r} (predicted {shown})"))
    return broken


def infeasible_reason(model: CostModel, broken: Sequence[BrokenConstraint], *,
                      confidence: float = DEFAULT_CONFIDENCE) -> str:
    """``predicted infeasible with 90% confidence by the cost model of HW (meter M, ESTIMATE): breaks ...``."""
    tag = ", ESTIMATE" if model.is_estimate else ""
    return (f"predicted infeasible with {confidence:.0%} confidence by the cost model of {model.hardware} "
            f"(meter {model.meter}{tag}): breaks {'; '.join(b.shown for b in broken)}")


def predicted_infeasible(model: CostModel, inputs: CostInputs, constraints: Iterable[str], *,
                         confidence: float = DEFAULT_CONFIDENCE) -> str | None:
    """Why ``inputs``' candidate breaks a constraint with high confidence (:func:`predicted_broken`), or ``None``.

    Raises:
        ConfigError: A constraint does not parse.
    """
    broken = predicted_broken(model, inputs, constraints, confidence=confidence)
    return infeasible_reason(model, broken, confidence=confidence) if broken else None

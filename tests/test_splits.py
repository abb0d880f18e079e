"""Train trains, dev selects, test reports: test metrics from evaluation to the stored record.

Storage, CLI, dashboard and card sides are tested in their own modules; this one covers
:func:`evaluators.metrics.evaluate` and the :class:`nas.records.EvalMetrics` record.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from evaluators.metrics import accuracy_and_macro_f1, evaluate, predict
from evaluators.tasks import load_task
from evaluators.train import build_for_task
from nas.config import Candidate
from nas.records import EvalMetrics, TrialResult

TINY = Candidate(n_layers=1, d_model=32, n_heads=2, d_ffn=64, max_len=32, dropout=0.0)


def test_evaluate_reports_test_beside_dev_only_when_asked() -> None:
    task = load_task("builtin:sentiment", n_train=64, n_dev=40, n_test=50, max_len=32)
    torch.manual_seed(0)
    model = build_for_task(TINY, task, seed=0)
    dev_only = evaluate(model, task, batch_size=16)
    assert dev_only.test_accuracy is None and dev_only.test_macro_f1 is None and dev_only.n_test_examples is None
    assert dev_only.majority_accuracy == task.chance_accuracy  # the dev majority-class rate, always recorded
    both = evaluate(model, task, batch_size=16, test=True)
    assert (both.accuracy, both.macro_f1, both.n_examples) == (dev_only.accuracy, dev_only.macro_f1, 40)
    preds = predict(model, task.test_ids, task.test_mask, 16)
    expected = accuracy_and_macro_f1(preds.numpy(), task.test_y.numpy(), task.num_labels)
    assert (both.test_accuracy, both.test_macro_f1) == pytest.approx(expected)
    assert both.n_test_examples == 50 and both.majority_accuracy == task.chance_accuracy


def test_eval_metrics_round_trip_and_old_records_read_back() -> None:
    m = EvalMetrics(accuracy=0.8, macro_f1=0.79, n_examples=100, test_accuracy=0.75, test_macro_f1=0.74,
                    n_test_examples=100, majority_accuracy=0.5)
    result = TrialResult(candidate=Candidate(), task="builtin:sentiment", status="COMPLETE", metrics=m)
    d = json.loads(json.dumps(result.to_dict()))
    assert (d["test_accuracy"], d["test_macro_f1"], d["majority_accuracy"]) == (0.75, 0.74, 0.5)
    assert TrialResult.from_dict(d) == result
    assert result.reported() == {"test_accuracy": 0.75, "test_macro_f1": 0.74, "majority_accuracy": 0.5}
    assert "test_accuracy" not in result.objectives()  # never an objective: nothing may select on test
    # a result_json written before test splits existed has no test fields: they read back as None
    old = {**d, "metrics": {"accuracy": 0.8, "macro_f1": 0.79, "n_examples": 100}}
    for k in ("test_accuracy", "test_macro_f1", "majority_accuracy"):
        old.pop(k)
    back = TrialResult.from_dict(old)
    assert back.metrics == dataclasses.replace(m, test_accuracy=None, test_macro_f1=None, n_test_examples=None,
                                               majority_accuracy=None)
    assert back.reported() == {"test_accuracy": None, "test_macro_f1": None, "majority_accuracy": None}

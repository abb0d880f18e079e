"""Held-out accuracy and macro-F1 (computed here with NumPy; no scikit-learn).

Macro-F1 averages the per-class F1 over the classes that occur in the labels or the predictions (the
convention of ``sklearn.metrics.f1_score(average="macro")``); a class with no true and no predicted
example is left out rather than counted as 0 or 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nas.records import EvalMetrics

if TYPE_CHECKING:
    import torch
    from torch import nn

    from evaluators.tasks import TaskData

__all__ = ["accuracy_and_macro_f1", "evaluate", "predict", "trim_batch"]

log = logging.getLogger(__name__)


def accuracy_and_macro_f1(predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray,
                          num_labels: int | None = None) -> tuple[float, float]:
    """Accuracy and macro-F1 of integer predictions against integer labels.

    Args:
        predictions: Predicted class ids.
        labels: True class ids, same length.
        num_labels: Number of classes (defaults to ``max(id) + 1``).

    Returns:
        ``(accuracy, macro_f1)``, both in [0, 1]; ``(0.0, 0.0)`` for empty inputs.
    """
    p = np.asarray(predictions, dtype=np.int64).ravel()
    y = np.asarray(labels, dtype=np.int64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"predictions ({p.shape[0]}) and labels ({y.shape[0]}) differ in length")
    if y.size == 0:
        return 0.0, 0.0
    c = int(num_labels) if num_labels is not None else int(max(p.max(), y.max())) + 1
    conf = np.bincount(y * c + p, minlength=c * c).reshape(c, c)  # rows: true, cols: predicted
    tp = np.diag(conf).astype(np.float64)
    support = conf.sum(axis=1).astype(np.float64)
    predicted = conf.sum(axis=0).astype(np.float64)
    present = (support + predicted) > 0
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    accuracy = float(tp.sum() / y.size)
    macro_f1 = float(f1[present].mean()) if present.any() else 0.0
    return accuracy, macro_f1


def trim_batch(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing columns that are padding in every row.

    Every attention kind of :mod:`nas.models` masks padded keys (Linformer zeroes them and uses the first
    T columns of its projections), so the outputs on real tokens are unchanged and the step is cheaper.
    """
    lengths = mask.sum(dim=1)
    t = int(lengths.max().item()) if lengths.numel() else ids.shape[1]
    t = max(t, 1)
    return ids[:, :t], mask[:, :t]


def predict(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 128,
            *, device: Any = None) -> torch.Tensor:
    """Arg-max class ids of ``model`` on ``(ids, mask)``, in batches, without gradients.

    The model's training/eval mode is restored afterwards.
    """
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for i in range(0, ids.shape[0], batch_size):
                b_ids, b_mask = trim_batch(ids[i : i + batch_size], mask[i : i + batch_size])
                logits = model(b_ids.to(device), attention_mask=b_mask.to(device)).logits
                out.append(logits.argmax(dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def evaluate(model: nn.Module, task: TaskData, batch_size: int = 128, *, device: Any = None,
             test: bool = False) -> EvalMetrics:
    """Accuracy and macro-F1 of ``model`` on the task's dev split, and on its test split when asked.

    Dev selects (rungs, sampler, front); test only reports. So the rung evaluations during training
    leave ``test`` False, and a trial evaluates on test once, after training.

    Args:
        model: Returns an object with ``.logits`` (B, num_labels) from ``model(ids, attention_mask=...)``.
        task: The task; its dev (and test) tensors are used.
        batch_size: Evaluation batch size.
        device: Where to run; defaults to the model's device.
        test: Also evaluate on the test split (``test_accuracy``, ``test_macro_f1``); a task without
            test examples leaves them ``None``.

    Returns:
        :class:`~nas.records.EvalMetrics`, with the dev majority-class rate in ``majority_accuracy``.
    """
    preds = predict(model, task.dev_ids, task.dev_mask, batch_size, device=device)
    acc, f1 = accuracy_and_macro_f1(preds.numpy(), task.dev_y.numpy(), task.num_labels)
    log.debug("evaluated %s: accuracy %.4f macro-F1 %.4f on %d", task.name, acc, f1, task.n_dev)
    majority = task.chance_accuracy if task.n_dev else None
    if not test or task.n_test == 0:
        return EvalMetrics(accuracy=acc, macro_f1=f1, n_examples=task.n_dev, majority_accuracy=majority)
    t_preds = predict(model, task.test_ids, task.test_mask, batch_size, device=device)
    t_acc, t_f1 = accuracy_and_macro_f1(t_preds.numpy(), task.test_y.numpy(), task.num_labels)
    log.debug("evaluated %s on test: accuracy %.4f macro-F1 %.4f on %d", task.name, t_acc, t_f1, task.n_test)
    return EvalMetrics(accuracy=acc, macro_f1=f1, n_examples=task.n_dev, test_accuracy=t_acc,
                       test_macro_f1=t_f1, n_test_examples=task.n_test, majority_accuracy=majority)

"""``nas predict-cost`` and the predicted-vs-measured rows of ``nas show`` (layer L4).

Registered by :mod:`nas.cli`. The model is :mod:`nas.cost_model`, fitted on a study's trials by
:mod:`nas.cost_study` (docs/cost_model.md). Bad input raises :class:`~nas.errors.NASError`, which
:func:`nas.cli.main` prints as one line with exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = ["predict_cost", "print_cost_check"]

out = Console()


def predict_cost(
    candidate: Annotated[Path, typer.Argument(metavar="CANDIDATE", help="Candidate YAML (see examples/candidate.yaml).")],
    study: Annotated[str, typer.Option(help="The study whose trials the model is fitted on.")],
    db: Annotated[str, typer.Option("--db", envvar="NAS_DB", help="Database URL or SQLite path (env NAS_DB).")] = "nas.db",
    hardware: Annotated[str | None, typer.Option(help="Hardware fingerprint (required when the study has several).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Measurement batch size (default: the study's).")] = None,
    seq_len: Annotated[int | None, typer.Option(min=1, help="Measurement sequence length (default: the study's).")] = None,
    confidence: Annotated[float, typer.Option(min=0.5, max=0.999, help="Quantile of the interval's bounds: 0.9 "
                                                  "shows the 10% and 90% quantiles.")] = 0.9,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Predict a candidate's J/sample and latency from a study's trials on the same hardware, without running it.

    A Gaussian process is fitted on the study's COMPLETE trials of one hardware fingerprint and meter (at
    least 8). The answer gives each prediction's interval, the model's held-out error on the study (5-fold
    median absolute percentage error), and whether the candidate breaks a study constraint with high
    confidence. Energy from an estimate meter is an estimate (docs/cost_model.md).
    """
    from nas.config import load_candidate
    from nas.cost_study import predict_candidate
    from nas.runner.api import open_store

    cand = load_candidate(candidate)
    store = open_store(db, create=False, read_only=True)
    pred = predict_candidate(store, study, cand, hardware=hardware, batch_size=batch_size, seq_len=seq_len,
                             confidence=confidence, held_out=True)
    if as_json:
        sys.stdout.write(json.dumps(pred.to_dict(), indent=2) + "\n")
        return
    from nas.cli.render import cost_prediction_table

    out.print(cost_prediction_table(pred))


def print_cost_check(console: Console, store: Any, study: str, number: int) -> None:
    """``nas show STUDY TRIAL``: the trial's J/sample and latency beside a model of the study's other trials."""
    from nas.cli.render import cost_check_table
    from nas.cost_model import CostModelError
    from nas.cost_study import trial_check

    try:
        check = trial_check(store, study, number)
    except CostModelError as e:
        console.print(f"predicted vs measured: not shown ({e})", style="dim", highlight=False, markup=False,
                      soft_wrap=True)
        return
    if check is not None:
        console.print(cost_check_table(check))

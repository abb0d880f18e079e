"""``nas remeasure STUDY``: measure a finished study's stored models again on this machine (layer L4).

Registered by :mod:`nas.cli`. Bad input raises :class:`~nas.errors.NASError`, which :func:`nas.cli.main`
prints as one line with exit code 2.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["remeasure_command", "parse_trials", "report_table"]

out = Console()
err = Console(stderr=True)


def parse_trials(text: str | None) -> list[int] | None:
    """``"3,5,8"`` as trial numbers (None for None).

    Raises:
        ConfigError: Not a comma-separated list of non-negative integers.
    """
    from nas.errors import ConfigError

    if text is None:
        return None
    try:
        numbers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        numbers = []
    if not numbers or any(n < 0 for n in numbers):
        raise ConfigError("--trials takes trial numbers separated by commas", field="--trials", value=text,
                          fix="e.g. --trials 3,5,8 (numbers from `nas pareto STUDY`), or --front")
    return numbers


def _j(inf: Any) -> str:
    if inf is None or inf.energy_per_sample_j is None:
        return "-"
    return f"{inf.energy_per_sample_j:.3g}" + (" (estimate)" if inf.is_estimate else "")


def report_table(report: Any) -> Table:
    """One row per reading taken here, beside the trial's own; skipped trials are listed under the table."""
    t = Table(title=f"Re-measured {report.study!r} on {report.hardware}", title_justify="left")
    for name in ("#", "own J/sample", "own p50 ms", "form", "here J/sample", "here p50 ms", "meter here"):
        t.add_column(name, justify="left" if name in ("form", "meter here") else "right")
    for trial in report.trials:
        own = trial.own
        own_cells = [_j(own), f"{own.latency_p50_ms:.3g}" if own else "-"]
        for r in trial.readings:
            t.add_row(str(trial.number), *own_cells, r.serving_form, _j(r), f"{r.latency_p50_ms:.3g}", r.meter)
    spent = report.measure_energy_j
    lines = [f"{report.measured} trial(s) measured here" + (f"; measuring drew {spent:.3g} J" if spent is not None
                                                            else "") + ". Own = the search's machine."]
    lines += [f"trial {x.number} skipped: {escape(x.skipped)}" for x in report.trials if x.skipped]
    lines.append(f"Both fronts: nas pareto {report.study} (one machine: --hardware '{escape(report.hardware)}')")
    t.caption = "\n".join(lines)
    return t


def remeasure_command(
    study: Annotated[str, typer.Argument(help="Study name.")],
    db: Annotated[str, typer.Option("--db", envvar="NAS_DB", help="Database URL or SQLite path (env NAS_DB).")
                  ] = "nas.db",
    front: Annotated[bool, typer.Option("--front", help="Re-measure the front members (the default).")] = False,
    trials: Annotated[str | None, typer.Option(help="Re-measure these trials instead, e.g. 3,5,8.")] = None,
    device: Annotated[str, typer.Option(help="Where to measure here: auto, cpu, cuda or cuda:N.")] = "auto",
    serving_form: Annotated[list[str] | None, typer.Option(
        "--serving-form", help="A serving form to measure (repeat for several; the first is this machine's "
        "primary): eager, compiled, cuda_graph or onnxruntime. Default: the study's measure.serving_form.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Measure a finished study's stored models again on this machine, under its hardware fingerprint.

    `nas pareto` and the dashboard then show each machine's front side by side. Nothing is trained; the study's measurement protocol is reused. Trials whose weights the study's
    storage.retention did not keep are reported and skipped. Running it twice adds nothing.
    """
    from nas.errors import ConfigError
    from nas.runner.remeasure import remeasure

    if front and trials is not None:
        raise ConfigError("--front and --trials both choose the trials", field="--trials", value=trials,
                          fix="pass one of them")
    numbers = parse_trials(trials)
    if as_json:
        report = remeasure(study, db=db, trials=numbers, device=device, forms=serving_form)
        _print_json(report)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]nas remeasure[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task(study, total=None)

        def step(done: int, total: int, number: int) -> None:
            bar.update(task, completed=done, total=total, description=f"{study}: trial {number} done")

        report = remeasure(study, db=db, trials=numbers, device=device, forms=serving_form, progress=step)
    out.print(report_table(report))


def _print_json(report: Any) -> None:
    import json

    doc = {"study": report.study, "hardware": report.hardware, "forms": list(report.forms),
           "measure_energy_j": report.measure_energy_j,
           "trials": [{"number": t.number, "skipped": t.skipped, "own": t.own.to_dict() if t.own else None,
                       "readings": [r.to_dict() for r in t.readings]} for t in report.trials]}
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")

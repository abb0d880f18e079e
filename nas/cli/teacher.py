"""``nas teacher ...``: fine-tune a Hugging Face teacher on a task, with a progress bar (layer L4).

Registered by :mod:`nas.cli` as the ``teacher`` sub-command. Bad input raises :class:`~nas.errors.NASError`,
which :func:`nas.cli.main` prints as one line with exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from nas.vocab import METER

__all__ = ["teacher_app", "trial_teacher"]

teacher_app = typer.Typer(help="Teachers: fine-tune a Hugging Face folder on a task (cached).", no_args_is_help=True)

out = Console()
err = Console(stderr=True)

if TYPE_CHECKING:
    MeterName = str
else:
    MeterName = METER.literal()


def trial_teacher(teacher: str | None, fine_tune_steps: int | None) -> Any:
    """``nas trial``'s teacher: the ``--teacher`` string, or a spec that fine-tunes it ``fine_tune_steps`` steps.

    Raises:
        ConfigError: ``--fine-tune-steps`` without a Hugging Face ``--teacher`` folder.
    """
    from nas.errors import ConfigError
    from nas.spec import FineTuneSpec, TeacherSpec

    if fine_tune_steps is None:
        return teacher
    if not teacher or teacher.strip().lower() in ("auto", "none"):
        raise ConfigError("--fine-tune-steps fine-tunes a Hugging Face --teacher folder", field="--fine-tune-steps",
                          value=fine_tune_steps, fix="pass --teacher DIR, or drop --fine-tune-steps")
    return TeacherSpec(path=teacher, fine_tune=FineTuneSpec(steps=fine_tune_steps))


@teacher_app.command("fit")
def fit(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="A local Hugging Face folder (model and tokenizer), "
                                           "with or without a classification head.")],
    task: Annotated[str, typer.Option(help="builtin:NAME or a TSV/CSV/JSONL file or folder.")],
    steps: Annotated[int, typer.Option(min=1, help="Fine-tuning steps.")] = 1000,
    lr: Annotated[float, typer.Option(min=1e-9, help="Peak learning rate (AdamW).")] = 5e-5,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size.")] = 32,
    max_examples: Annotated[int | None, typer.Option(min=1, help="Use only the first N training rows.")] = None,
    max_len: Annotated[int, typer.Option(min=2, help="Tokens per row (the students' max_len).")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the task and the batch order.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    meter: Annotated[MeterName, typer.Option(help="Energy meter of the fine-tuning; only auto falls back quietly.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Fine-tune DIR on a task and cache it; a second run with the same inputs reuses the cache.

    The cache key covers the model files' content, the task, the settings and the seed.

    The cached folder is a teacher: pass it as --teacher, or as a study's teacher.
    """
    from evaluators.hf_teacher import check_hf_folder
    from evaluators.lane import MeasurementLane
    from evaluators.meters import make_meter
    from evaluators.serving import device_key
    from evaluators.tasks import load_task
    from evaluators.teacher_fit import fit_teacher
    from evaluators.train import resolve_device
    from nas.config import MeasureConfig, validate
    from nas.errors import ConfigError
    from nas.spec import FineTuneSpec

    settings = validate(FineTuneSpec, {"steps": steps, "lr": lr, "batch_size": batch_size,
                                       "max_examples": max_examples}, source="nas teacher fit")
    shape = check_hf_folder(folder, field="DIR")
    if max_len > shape.max_positions:
        raise ConfigError(f"longer than the teacher's {shape.max_positions} positions", field="--max-len",
                          value=max_len, fix=f"pass --max-len {shape.max_positions} or less")
    data = load_task(task, seed=seed, max_len=max_len)
    dev = str(resolve_device(device))
    energy = make_meter(meter, MeasureConfig(meter=meter), device=dev)
    lane = MeasurementLane(device_key(dev))  # a measurement elsewhere on this device waits for a step boundary
    lane.enter_shared()
    try:
        with _Bar(err, quiet=as_json) as bar:
            def step(done: int, total: int) -> None:
                lane.step_boundary()
                bar(done, total)

            fitted = fit_teacher(folder, data, settings, seed=seed, device=dev, meter=energy, progress=step)
    finally:
        lane.close()
        energy.close()
    if as_json:
        sys.stdout.write(json.dumps({"folder": str(fitted.folder), "name": fitted.name, "cached": fitted.cached,
                                     "dev_accuracy": fitted.dev_accuracy, "meta": fitted.meta}, indent=2) + "\n")
        return
    out.print(_describe(fitted), highlight=False, soft_wrap=True)


def _describe(fitted: Any) -> str:
    """What the fitting did (or, on a cache hit, what the cached fitting had cost), energy with its meter."""
    from nas.cli.render import _energy

    meta = fitted.meta
    acc = f"{fitted.dev_accuracy:.4f}" if fitted.dev_accuracy is not None else "-"
    if fitted.cached:
        head = f"reused the cached fine-tuned teacher (no training): {escape(str(fitted.folder))}"
        cost = (f"fitted earlier in {meta.get('steps')} steps, {meta.get('wall_s', 0.0):.1f} s, "
                + _energy(meta.get("energy_j"), meta.get("meter"), meta.get("is_estimate")))
    else:
        tr = fitted.training
        head = f"fine-tuned {escape(fitted.source)} on {escape(str(meta.get('task')))}: {escape(str(fitted.folder))}"
        cost = f"{tr.steps} steps in {tr.wall_s:.1f} s, " + _energy(tr.energy_j, tr.meter, tr.is_estimate)
    return "\n".join([head, f"dev accuracy {acc}", cost,
                      f"use it as: --teacher {escape(str(fitted.folder))} (or as a study's teacher)"])


class _Bar:
    """A rich progress bar over the fine-tuning steps (nothing drawn when ``quiet``)."""

    def __init__(self, console: Console, *, quiet: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = None if quiet else Progress(
            TextColumn("[bold]fine-tune"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True)
        self.task = self.bar.add_task("fine-tune", total=None) if self.bar is not None else None

    def __enter__(self) -> _Bar:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` steps."""
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=done, total=total)

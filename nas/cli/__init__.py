"""The ``nas`` command line (layer L4: may import anything; nothing imports it).

Wrong input exits 2 with a one-line message, never a traceback: every :class:`NASError` is caught in
:func:`main`. Heavy imports happen inside each command so ``nas --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from dashboards.limits import LaunchLimits
from nas.cli.cost import predict_cost, print_cost_check
from nas.cli.remeasure import remeasure_command
from nas.cli.teacher import teacher_app, trial_teacher
from nas.errors import NASError
from nas.vocab import EXPORT_CHOICE, METER

app = typer.Typer(
    name="nas",
    help="Energy-aware neural architecture search for Transformers: accuracy plus measured joules.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
storage_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
app.add_typer(storage_app, name="storage")
app.add_typer(teacher_app, name="teacher")
app.command("remeasure")(remeasure_command)
app.command("predict-cost")(predict_cost)

out = Console()
err = Console(stderr=True)

DEFAULT_DB = "nas.db"
DbOpt = Annotated[
    str,
    typer.Option("--db", envvar="NAS_DB", help="Database URL or SQLite path (env NAS_DB)."),
]
SearchDbOpt = Annotated[
    str | None,
    typer.Option("--db", envvar="NAS_DB", show_default=False,
                 help="Database URL or SQLite path (env NAS_DB). Default: the spec's storage.url, else nas.db."),
]


# Choices come from nas.vocab (typer reads a Literal; mypy sees the plain str the option holds).
if TYPE_CHECKING:
    MeterName = str
    FormatName = str
else:
    MeterName = METER.literal()
    FormatName = EXPORT_CHOICE.literal()


def _print_json(obj: Any) -> None:
    # plain stdout, no rich markup, so it pipes into jq
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def default_candidate() -> Any:
    """The candidate ``nas trial`` uses without a CANDIDATE file (the same as examples/candidate.yaml)."""
    from evaluators.tasks import DEFAULT_MAX_LEN
    from nas.config import Candidate

    return Candidate(max_len=DEFAULT_MAX_LEN)


# --------------------------------------------------------------------------------------------- trial
@app.command()
def trial(
    candidate: Annotated[Path | None, typer.Argument(
        metavar="CANDIDATE", help="Candidate YAML (see examples/candidate.yaml). Omit for the default candidate: 2 layers, "
             "d_model 64, 4 heads, FFN 128, softmax, max_len 64, uncompressed.")] = None,
    task: Annotated[str, typer.Option(help="builtin:NAME or a TSV/CSV/JSONL file or folder.")] = "builtin:sentiment",
    teacher: Annotated[str | None, typer.Option(help="Local HF folder, or 'auto' to train and cache one. A folder "
                                                "whose head does not fit the task is fine-tuned first (cached).")] = None,
    fine_tune_steps: Annotated[int | None, typer.Option(min=1, help="Fine-tune the --teacher folder for this many "
                                                        "steps first (cached), even when its head fits.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 300,
    seconds: Annotated[float | None, typer.Option(min=0.1, help="Training wall-time budget (s).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch size.")] = 32,
    lr: Annotated[float, typer.Option(min=1e-7, help="Peak learning rate (AdamW).")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed for data, init and order.")] = 0,
    meter: Annotated[MeterName, typer.Option(help="Energy meter; only auto falls back quietly.")] = "auto",
    measure_batch: Annotated[int, typer.Option(min=1, help="Batch size of the energy measurement.")] = 32,
    measure_seq: Annotated[int, typer.Option(min=1, help="Sequence length of the energy measurement.")] = 64,
    window_s: Annotated[float, typer.Option(min=0.05, help="Seconds per measurement window.")] = 1.0,
    windows: Annotated[int, typer.Option(min=1, help="Number of measurement windows.")] = 3,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    save_weights: Annotated[Path | None, typer.Option(help="Write the trained weights here (safetensors).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the TrialResult as JSON.")] = False,
) -> None:
    """Train, compress and measure one candidate, and print its record."""
    from nas.config import MeasureConfig, TrainConfig, load_candidate

    cand = load_candidate(candidate) if candidate is not None else default_candidate()
    train_cfg = TrainConfig(steps=steps, max_seconds=seconds, batch_size=batch_size, lr=lr, seed=seed, device=device)
    measure_cfg = MeasureConfig(meter=meter, batch_size=measure_batch, seq_len=measure_seq,
                                window_s=window_s, n_windows=windows)
    from nas.runner.checks import check_trial_inputs

    check_trial_inputs(cand, task=task, teacher=teacher, weights_out=save_weights, seed=seed,
                       measure_seq=measure_seq)
    from evaluators.pipeline import run_trial

    teach = trial_teacher(teacher, fine_tune_steps)
    if not as_json:
        err.print(f"[bold]nas trial[/]: {cand.n_layers}x d{cand.d_model} h{cand.n_heads} "
                  f"{cand.attention.kind}, {cand.quant.label}, sparsity {cand.sparsity.kind} on {task}",
                  soft_wrap=True)
    if as_json:
        result = run_trial(cand, task, train_cfg=train_cfg, measure_cfg=measure_cfg, teacher=teach,
                           weights_out=save_weights)
    else:
        from nas.runner.progress import TrialProgress

        with TrialProgress(err) as bar:
            result = run_trial(cand, task, train_cfg=train_cfg, measure_cfg=measure_cfg, teacher=teach,
                               weights_out=save_weights, progress=bar)
    if as_json:
        _print_json(result.to_dict())
        return
    from nas.cli.render import trial_table

    out.print(trial_table(result))


# -------------------------------------------------------------------------------------------- search
@app.command()
def search(
    spec: Annotated[Path | None, typer.Argument(help="Study YAML. Omit for the built-in default study.")] = None,
    resume: Annotated[str | None, typer.Option(help="Resume the named study from the database.")] = None,
    db: SearchDbOpt = None,
    ray_address: Annotated[str | None, typer.Option(help="Join an existing Ray cluster (e.g. 127.0.0.1:6379).")] = None,
    trials: Annotated[int | None, typer.Option(min=1, help="Override the spec's trial budget.")] = None,
    name: Annotated[str | None, typer.Option(help="Override the study name.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress display.")] = False,
) -> None:
    """Launch (or resume) a search; prints the Pareto front at the end.

    Every input is checked before anything is written. The database is --db (or NAS_DB), else the
    spec's storage.url, else nas.db.
    """
    from nas.runner.api import search as run_search

    summary = run_search(spec, resume=resume, db=db, ray_address=ray_address, trials=trials, name=name,
                         progress=not quiet)
    from nas.cli.render import front_table, teacher_line

    if summary.teacher is not None:
        out.print(teacher_line(summary.teacher), highlight=False, markup=False, soft_wrap=True)
    out.print(front_table(summary.front, summary.objectives, title=f"Pareto front of {summary.study!r}",
                          teacher=summary.teacher))
    out.print(summary.describe())


@app.command()
def studies(db: DbOpt = DEFAULT_DB, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the studies in the database."""
    from nas.runner.api import open_store

    store = open_store(db, create=False, read_only=True)
    infos = store.list_studies()
    if as_json:
        from nas.cli.render import to_jsonable

        _print_json([{**to_jsonable(i), "total_energy_j": i.total_energy_j} for i in infos])
        return
    from nas.cli.render import studies_table

    out.print(studies_table(infos))


@app.command()
def pareto(
    study: Annotated[str, typer.Argument(help="Study name.")],
    db: DbOpt = DEFAULT_DB,
    where: Annotated[str | None, typer.Option(help='Filter, e.g. "energy_per_sample_j < 0.002 and weight_bits <= 8".')] = None,
    hardware: Annotated[str | None, typer.Option(help="Only this hardware fingerprint (default: every one, separately).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV output.")] = False,
    include_trivial: Annotated[bool, typer.Option(
        "--include-trivial", help="Let trials at or below the dev majority-class rate onto the front.")] = False,
) -> None:
    """Pareto-optimal trials of a study, per hardware fingerprint (test accuracy beside dev).

    A study with a measured teacher shows it above the table, and each member's ratios to it.
    """
    from nas.cli.render import kept_out_note
    from nas.runner.api import pareto as query

    front = query(study, db=db, where=where, hardware=hardware, include_trivial=include_trivial)
    note = kept_out_note(front.kept_out)
    if as_json:
        from nas.cli.render import view_to_dict

        _print_json([view_to_dict(t, front.teacher) for t in front.trials])
    elif as_csv:
        from nas.cli.render import front_csv

        sys.stdout.write(front_csv(front.trials, front.teacher))
    else:
        from nas.cli.render import front_table, teacher_line

        if front.teacher is not None:
            out.print(teacher_line(front.teacher), highlight=False, markup=False, soft_wrap=True)
        machines = front.by_hardware if len(front.by_hardware) > 1 else {"": front.trials}
        for hw, views in machines.items():  # side by side: one table per machine
            out.print(front_table(views, front.objectives, title=f"Pareto front of {study!r}"
                                  + (f" on {hw}" if hw else ""), teacher=front.teacher))
    if note:  # on stderr with --json/--csv, so stdout stays machine-readable
        (err if as_json or as_csv else out).print(note, highlight=False, soft_wrap=True)


@app.command()
def show(
    study: Annotated[str, typer.Argument(help="Study name.")],
    trial_number: Annotated[int | None, typer.Argument(
        metavar="[TRIAL]", help="Trial number. Omit for the study: status, cost, teacher and fidelity.")] = None,
    db: DbOpt = DEFAULT_DB,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One trial, or without TRIAL the study: its status, cost, teacher, fidelity and log folders.

    A trial: candidate, metrics, energy readings with meter and provenance, the teacher's ratios. The
    study: trials, search cost, teacher, how well its early rungs rank candidates (Fidelity), and where
    its TensorBoard logs and W&B runs are (docs/tracking.md).
    """
    from nas.runner.api import open_store

    store = open_store(db, create=False, read_only=True)
    if trial_number is None:
        _show_study(store, study, as_json)
        return
    view = store.trial(study, trial_number)
    teacher = store.teacher_reference(study)
    if as_json:
        from nas.cli.render import view_to_dict

        _print_json(view_to_dict(view, teacher))
        return
    from nas.cli.render import trial_view

    out.print(trial_view(view, teacher, store.readings(study, trial_number)))
    print_cost_check(out, store, study, trial_number)


def _show_study(store: Any, study: str, as_json: bool) -> None:
    from nas.runner.api import stored_spec
    from nas.runner.tracking import study_logs
    from storage import study_fidelity

    info = store.get_study(study)
    fidelity = study_fidelity(info, store.trials(study))
    teacher = store.teacher_reference(study)
    try:
        logs = study_logs(stored_spec(store, study), store.url)
    except NASError:  # a spec this build cannot read: the study is still shown, without its log folders
        logs = None
    if as_json:
        from nas.cli.render import to_jsonable

        _print_json({**to_jsonable(info), "total_energy_j": info.total_energy_j,
                     "teacher": teacher.point() if teacher is not None else None, "fidelity": fidelity.to_dict(),
                     "logs": logs.to_dict() if logs is not None else None})
        return
    from nas.cli.render import study_view

    out.print(study_view(info, fidelity, teacher, logs), highlight=False, soft_wrap=True)


# -------------------------------------------------------------------------------------- export/predict
@app.command()
def export(
    study: Annotated[str, typer.Argument(help="Study name.")],
    trial_number: Annotated[int, typer.Argument(metavar="TRIAL", help="Trial number.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    fmt: Annotated[FormatName, typer.Option("--format", help="A format, or all of them.")] = "all",
    db: DbOpt = DEFAULT_DB,
    retrain: Annotated[int | None, typer.Option(min=1, help="Train this many more steps, then re-measure.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite a non-empty --out.")] = False,
) -> None:
    """Export a stored trial (ONNX, TorchScript, HF folder) with a parity check and a model card."""
    from nas.export import export_trial

    report = export_trial(study, trial_number, out_dir, fmt=fmt, db=db, retrain_steps=retrain, force=force)
    out.print(report.describe())


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="An exported folder (nas export --format hf or all).")],
    texts: Annotated[list[str], typer.Argument(help="One or more texts.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Classify texts with an exported model."""
    from nas.export import load

    model = load(model_dir)
    preds = model.predict(texts)
    if as_json:
        _print_json(preds)
        return
    for text, p in zip(texts, preds, strict=False):
        out.print(f"{p['label']}\t{p['score']:.3f}\t{text}")


# --------------------------------------------------------------------------------------------- serve
@app.command()
def serve(
    db: DbOpt = DEFAULT_DB,
    host: Annotated[str, typer.Option(help="Bind address. Anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    token: Annotated[str | None, typer.Option(envvar="NAS_TOKEN", help="API token, 16+ printable ASCII characters (env NAS_TOKEN).")] = None,
    artefacts: Annotated[Path, typer.Option(help="Folder for exports served over HTTP.")] = Path("nas_artefacts"),
    allowed_host: Annotated[list[str] | None, typer.Option(help="Also answer to this Host name (repeatable); off loopback, without any, every Host is served.")] = None,
    max_launches: Annotated[int, typer.Option(min=1, help="Searches launched over HTTP running at once.")] = LaunchLimits.max_running,
    max_trial_concurrency: Annotated[int, typer.Option(min=1, help="Cap on a launched spec's resources.max_concurrent.")] = LaunchLimits.max_concurrent,
    max_cpus_per_trial: Annotated[float, typer.Option(min=0.01, help="Cap on a launched spec's resources.cpus_per_trial and torch_threads.")] = LaunchLimits.max_cpus_per_trial,
    max_gpus_per_trial: Annotated[float, typer.Option(min=0, help="Cap on a launched spec's resources.gpus_per_trial.")] = LaunchLimits.max_gpus_per_trial,
    max_trials: Annotated[int, typer.Option(min=1, help="Cap on a launched spec's budget.trials.")] = LaunchLimits.max_trials,
) -> None:
    """HTTP API and dashboard over the same database."""
    from dashboards.server import run

    limits = LaunchLimits(max_running=max_launches, max_concurrent=max_trial_concurrency,
                          max_cpus_per_trial=max_cpus_per_trial, max_gpus_per_trial=max_gpus_per_trial,
                          max_trials=max_trials)
    run(db=db, host=host, port=port, token=token, artefacts=artefacts, allowed_hosts=allowed_host or [],
        limits=limits)


@storage_app.command("upgrade")
def storage_upgrade(db: DbOpt = DEFAULT_DB) -> None:
    """Create or migrate the database schema to the newest version."""
    from storage import Store

    Store.upgrade(db)
    out.print(f"{db}: schema is up to date")


@app.command()
def tasks() -> None:
    """List the built-in tasks."""
    from evaluators.tasks import BUILTIN_TASKS

    about = {
        "longmatch": "long-range key matching over 64 tokens (binary; chance 50%): small local windows "
                     "stay near chance",
        "sentiment": "synthetic sentiment with negation (binary; chance 50%): word order matters",
    }
    for name in BUILTIN_TASKS:
        out.print(f"[bold]builtin:{name}[/]  {about.get(name, '')}")
    out.print("Files: a TSV/CSV/JSONL file or a folder with train.* (dev.* and test.* optional), columns text "
              "and label; a missing dev or test split is held out of train.")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(message: str) -> NoReturn:
    # one line, never rich-markup-interpreted: messages quote user input (brackets included)
    err.print(f"[red]error:[/] {escape(_one_line(message))}", highlight=False, soft_wrap=True)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; every bad input is one line on stderr and exit code 2."""
    os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")
    try:
        app(args=argv, prog_name="nas", standalone_mode=False)
    except NASError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        err.print("interrupted")
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except OSError as e:
        if e.filename is None:
            raise
        _fail(f"{e.filename}: {e.strerror or e}. Fix: check the path and its permissions")
    except Exception as e:
        # click usage errors (typer vendors its own click, so match by shape, not by class)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _fail(f"{e.format_message().replace('Value error, ', '')}{hint}")
        if type(e).__name__ == "Abort":
            raise SystemExit(1) from None
        raise

"""A search's logs beside the database: TensorBoard event files (always) and W&B runs (when the spec asks).

Ray Tune's results folder is :func:`ray_results_dir`, inside the study's artefacts folder
(:func:`artefacts_dir`): ``ray_results/nas-STUDY/trial_NNNNN/`` per trial (named after the trial's number,
as ``nas show STUDY NNNNN``), with TensorBoard event files in it. Ray also writes its experiment state
there (pickles, JSON, CSV, checkpoints). The database holds every result, so after a search
:func:`prune_ray_results` keeps what the study's ``storage.retention`` says:

* ``front`` or ``all``: every trial's TensorBoard event files (``events.out.tfevents.*``), nothing else;
* ``none``: nothing: the folder is removed.

A driver killed before it could prune leaves Ray's files; the next search of the study prunes them first.

W&B (``tracking.wandb``) runs through Ray's ``WandbLoggerCallback``: one run per trial, grouped by study,
written under ``WANDB_DIR`` if it is set, else under the study's artefacts folder (``wandb/`` in either).
W&B runs are kept whatever the retention: an offline run is what ``wandb sync`` uploads later.

Neither Ray nor W&B is imported with this module: ``nas show`` uses its paths.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas._optional import try_import
from nas.errors import ConfigError
from nas.runner.protocol import TrialConfig
from nas.spec import StudySpec, WandbSpec

__all__ = ["RAY_RESULTS", "TENSORBOARD_FILES", "StudyLogs", "artefacts_dir", "ray_results_dir", "wandb_dir",
           "prune_ray_results", "trial_dirname", "check_tracking", "tracking_callbacks", "study_logs"]

#: Ray Tune's results folder, inside the study's artefacts folder.
RAY_RESULTS = "ray_results"
#: The TensorBoard event files that :func:`prune_ray_results` keeps.
TENSORBOARD_FILES = "events.out.tfevents.*"
#: Tune result keys that hold JSON blobs or tracebacks (the database has them): not sent to W&B.
#: Seconds the queue of a W&B logging actor is given to exit before it is killed.
_ACTOR_EXIT_S = 10
_NOT_FOR_WANDB = ["trial_result_json", "rung_json", "objectives_json", "traceback", "error"]


def artefacts_dir(spec: StudySpec, db_url: str) -> str:
    """Where trial weights go: ``storage.artefacts_dir``, else ``nas_artefacts/`` beside a SQLite file."""
    if spec.storage.artefacts_dir:
        base = spec.storage.artefacts_dir
    elif db_url.startswith("sqlite") and ":memory:" not in db_url:
        path = db_url.split("///", 1)[-1]
        base = os.path.join(os.path.dirname(os.path.abspath(path)), "nas_artefacts")
    else:
        base = os.path.join(os.getcwd(), "nas_artefacts")
    return os.path.join(base, spec.name)


def ray_results_dir(art_dir: str) -> str:
    """Ray Tune's ``storage_path`` for the study whose artefacts folder is ``art_dir``."""
    return os.path.join(art_dir, RAY_RESULTS)


def wandb_dir(art_dir: str) -> str:
    """The folder W&B writes its ``wandb/`` run folders into: ``WANDB_DIR``, else ``art_dir``."""
    return os.environ.get("WANDB_DIR") or art_dir


def prune_ray_results(folder: str, retention: str) -> None:
    """Keep what ``retention`` says of Ray's results folder: its TensorBoard event files, or (``none``) nothing."""
    root = Path(folder)
    if not root.is_dir():
        return
    if retention == "none":
        shutil.rmtree(root, ignore_errors=True)
        return
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # files before their folder
        with contextlib.suppress(OSError):  # never in the way of the error that ended a search
            if path.is_symlink() or path.is_file():
                if not fnmatch.fnmatch(path.name, TENSORBOARD_FILES):
                    path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()  # only when nothing was kept


def trial_dirname(trial: Any) -> str:
    """Tune's folder and display name of a trial: ``trial_00003`` for the study's trial 3."""
    return f"trial_{TrialConfig.from_tune(trial.config).number:05d}"


def check_tracking(spec: StudySpec) -> None:
    """W&B, when the spec asks for it, can run here: installed, and logged in for ``mode: online``.

    Raises:
        MissingExtraError: ``tracking.wandb`` is given and wandb is not installed.
        ConfigError: ``mode: online`` with no W&B API key (``wandb login``, ``WANDB_API_KEY``).
    """
    wb = spec.tracking.wandb
    if wb is None:
        return
    with try_import("wandb", needed_by="the spec's tracking.wandb") as extra:
        import wandb
    extra.check()
    if wb.mode == "online" and not wandb.login(prompt=False, verify=False):
        raise ConfigError("W&B's online mode needs an API key, and none is set here", field="tracking.wandb.mode",
                          value=wb.mode, fix="run `wandb login` or set WANDB_API_KEY, or use mode: offline "
                          "(runs written to disk only)")


def tracking_callbacks(spec: StudySpec, art_dir: str) -> list[Any]:
    """The Ray Tune callbacks of the spec's ``tracking`` (TensorBoard is Ray's own, always on)."""
    return [] if spec.tracking.wandb is None else [_wandb_callback(spec.tracking.wandb, spec.name, art_dir)]


def _wandb_callback(wb: WandbSpec, study: str, art_dir: str) -> Any:
    """Ray's ``WandbLoggerCallback``, which looks up no API key in offline mode (nothing is sent).

    Ray kills each trial's logging actor, and its queue's actor, once the trial's run is finished, so
    what W&B leaves in the temp folder of a killed process would stay in the machine's: media and
    artifact staging folders, wandb-core's socket folder. Here the logging actors start with a temp
    folder of their own, removed at the end of the search, and each queue is asked to exit before it
    is killed (it imports W&B too, to read the queued items) so that it removes its own.
    """
    import ray
    from ray.air.integrations.wandb import WandbLoggerCallback
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = wandb_dir(art_dir)
    scratch = os.path.join(folder, ".tmp")

    class StudyWandbCallback(WandbLoggerCallback):  # type: ignore[misc]
        def setup(self, *args: Any, **kwargs: Any) -> None:
            if self.kwargs.get("mode") != "offline":
                super().setup(*args, **kwargs)  # type: ignore[no-untyped-call]
            os.makedirs(scratch, exist_ok=True)
            env = {"TMPDIR": scratch, **{k: v for k, v in os.environ.items() if k == "WANDB_API_KEY"}}
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            # Ray's options for its logging actors, with the environment (where Ray passes the API key only)
            self._remote_logger_class = ray.remote(  # type: ignore[call-overload]  # the stub lacks node affinity
                num_cpus=0, scheduling_strategy=here, max_restarts=-1, max_task_retries=-1,
                runtime_env={"env_vars": env})(self._logger_actor_cls)

        def _cleanup_logging_actor(self, trial: Any) -> None:
            self._trial_queues[trial].shutdown(grace_period_s=_ACTOR_EXIT_S)
            super()._cleanup_logging_actor(trial)

        def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
            super().on_experiment_end(trials, **info)
            shutil.rmtree(scratch, ignore_errors=True)

    return StudyWandbCallback(project=wb.project, group=study, excludes=list(_NOT_FOR_WANDB), mode=wb.mode,
                              dir=folder)


@dataclass(frozen=True)
class StudyLogs:
    """Where a study's logs are, for ``nas show``: TensorBoard's folder and W&B's, each ``None`` if absent.

    Attributes:
        tensorboard: Ray's results folder, when it holds TensorBoard event files.
        n_event_files: How many event files it holds.
        wandb: W&B's ``wandb/`` folder, when the spec asks for W&B and the folder exists.
    """

    tensorboard: str | None
    n_event_files: int
    wandb: str | None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return {"tensorboard": self.tensorboard, "n_event_files": self.n_event_files, "wandb": self.wandb}


def study_logs(spec: StudySpec, db_url: str) -> StudyLogs:
    """Where the study's TensorBoard event files and W&B runs are (W&B's as ``WANDB_DIR`` resolves now)."""
    art_dir = artefacts_dir(spec, db_url)
    results = Path(ray_results_dir(art_dir))
    n_events = sum(1 for _ in results.rglob(TENSORBOARD_FILES)) if results.is_dir() else 0
    runs = Path(wandb_dir(art_dir)) / "wandb"
    return StudyLogs(tensorboard=str(results) if n_events else None, n_event_files=n_events,
                     wandb=str(runs) if spec.tracking.wandb is not None and runs.is_dir() else None)

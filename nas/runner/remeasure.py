"""``nas remeasure``: measure a finished study's stored models again on this machine.

A front found on one machine says little about another: kernels, memory and clocks reorder candidates.
Inference energy depends only on the trained model and where it runs (ARCHITECTURE decision 4), so the
stored weights are measured again here, with the study's own protocol (meter, batch, sequence length,
windows) and the serving forms asked for, and the readings are stored under this machine's hardware
fingerprint beside the trial's own (:meth:`storage.Store.add_remeasurement`). ``nas pareto --hardware``
and the dashboard then show each machine's front side by side.

Nothing is trained. A trial whose weights the study's ``storage.retention`` did not keep cannot be
re-measured and is reported with the reason; a form a trial already has a reading of on this machine is
not measured again, so running the command twice measures nothing and adds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evaluators.forms import form_unavailable
from evaluators.remeasure import remeasure_model, this_hardware
from nas.config import MeasureConfig, validate
from nas.errors import ConfigError, ExportError
from nas.export.source import TrialSource, load_weights, open_trial
from nas.records import InferenceEnergy
from nas.spec import StudySpec
from storage import Store

__all__ = ["Remeasured", "RemeasureReport", "remeasure", "measure_config", "measure_stored"]

log = logging.getLogger(__name__)

#: ``progress(done, total, trial_number)`` after each trial.
Progress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class Remeasured:
    """One trial's outcome.

    Attributes:
        number: The trial number.
        readings: The readings taken and stored now (the primary form first); empty when skipped.
        skipped: Why nothing was measured (already measured here, or no weights kept); None when measured.
        own: The trial's own reading, from the machine the search ran on.
    """

    number: int
    readings: tuple[InferenceEnergy, ...]
    skipped: str | None
    own: InferenceEnergy | None


@dataclass(frozen=True)
class RemeasureReport:
    """What ``nas remeasure`` did: the machine, and each trial's outcome in number order."""

    study: str
    hardware: str
    forms: tuple[str, ...]
    trials: tuple[Remeasured, ...]

    @property
    def measured(self) -> int:
        """How many trials got new readings."""
        return sum(1 for t in self.trials if t.readings)

    @property
    def measure_energy_j(self) -> float | None:
        """What the measurements drew, by their own meter (None when any is unknown or nothing was measured)."""
        parts = [r.protocol_energy_j for t in self.trials for r in t.readings]
        if not parts or any(p is None for p in parts):
            return None
        return float(sum(p for p in parts if p is not None))


def measure_config(spec: StudySpec, forms: Sequence[str] | None, device: str) -> MeasureConfig:
    """The study's measurement protocol with ``forms`` (default: the study's own), checked for this device.

    Raises:
        ConfigError: A form that cannot be measured on ``device`` here, before anything is measured.
    """
    cfg = spec.measure
    if forms:
        cfg = validate(MeasureConfig, {**cfg.model_dump(), "serving_form": list(forms), "primary_form": None},
                       source="--serving-form")
    for form in cfg.forms:
        why = form_unavailable(form, device)
        if why is not None:
            raise ConfigError(f"serving form {form!r} cannot be measured on {device} here: {why}",
                              field="--serving-form", value=form, fix="pick a form this machine runs, e.g. eager")
    return cfg


def _numbers(store: Store, study: str, trials: Sequence[int] | None) -> list[int]:
    """The trials to re-measure: those asked for, else every front member (on any machine), in order.

    Raises:
        ConfigError: A trial asked for is missing or not COMPLETE (said before anything is measured).
    """
    if not trials:
        return sorted({t.number for t in store.front(study)})
    states = {t.number: t.state for t in store.trials(study)}
    bad = [f"{n} ({states.get(n, 'missing')})" for n in sorted(set(trials)) if states.get(n) != "COMPLETE"]
    if bad:
        raise ConfigError(f"only COMPLETE trials can be re-measured; not: {', '.join(bad)}", field="--trials",
                          fix=f"pick COMPLETE trials, e.g. from `nas pareto {study}`")
    return sorted(set(trials))


def measure_stored(src: TrialSource, cfg: MeasureConfig, device: str, *,
                   threads: int | None = None) -> tuple[InferenceEnergy, ...]:
    """A stored trial's weights measured here with ``cfg`` on ``device``: one reading per form, primary first.

    ``threads``: torch's intra-op threads, the study's ``resources.torch_threads`` (as its trials ran).

    Raises:
        ExportError: The trial kept no weights, or they do not load.
        MeterUnavailableError: ``cfg.meter`` cannot read this device.
    """
    if src.weights is None:
        raise ExportError(f"trial {src.view.number} has no weights to measure: {src.weights_problem}",
                          fix="keep weights (storage.retention: front or all)")
    saved = load_weights(src.weights, src.candidate)
    return remeasure_model(saved.model, src.candidate, cfg, device=device, vocab_size=saved.tokenizer.vocab_size,
                           threads=threads)


def _one(store: Store, study: str, number: int, db: str, cfg: MeasureConfig, device: str,
         hardware: str, threads: int) -> Remeasured:
    src = open_trial(study, number, db)  # ExportError: not COMPLETE
    own = src.view.result.inference if src.view.result else None
    forms = [f for f in cfg.forms if f not in store.measured_forms(study, number, hardware)]
    if not forms:
        return Remeasured(number, (), f"already measured on {hardware} ({', '.join(cfg.forms)})", own)
    if src.weights is None:
        return Remeasured(number, (), f"no weights to measure: {src.weights_problem}", own)
    readings = measure_stored(src, cfg.model_copy(update={"serving_form": forms, "primary_form": None}), device,
                              threads=threads)
    added = set(store.add_remeasurement(study, number, readings))
    return Remeasured(number, tuple(r for r in readings if r.serving_form in added), None, own)


def remeasure(study: str, *, db: str, trials: Sequence[int] | None = None, device: str = "auto",
              forms: Sequence[str] | None = None, progress: Progress | None = None) -> RemeasureReport:
    """Measure a study's stored models again on this machine and store the readings.

    Args:
        study: The study name.
        db: Its database (URL or SQLite path).
        trials: Trial numbers; by default the members of the study's fronts.
        device: Where to measure here (``auto``, ``cpu``, ``cuda`` or ``cuda:N``).
        forms: Serving forms to measure (default: the study's ``measure.serving_form``).
        progress: Called after each trial.

    Raises:
        StorageError: Unknown database or study.
        ConfigError: A serving form this machine cannot run, a trial asked for that is not COMPLETE, or a
            stored spec this build cannot read.
        ExportError: A trial's weights do not load.
    """
    store = Store.open(db, create=False)
    try:
        info = store.get_study(study)
        try:
            spec = StudySpec.model_validate_json(info.spec_json)
        except ValueError as e:
            raise ConfigError(f"the stored spec of study {study!r} cannot be read by this build: {e}",
                              field="spec_json", fix="re-measure with the energy-nas version that ran the search") from e
        cfg = measure_config(spec, forms, device)
        numbers = _numbers(store, study, trials)
        hardware = this_hardware(device)
        done = []
        for i, number in enumerate(numbers, 1):
            done.append(_one(store, study, number, db, cfg, device, hardware, spec.resources.torch_threads))
            log.info("trial %d: %s", number, done[-1].skipped or f"{len(done[-1].readings)} reading(s) stored")
            if progress is not None:
                progress(i, len(numbers), number)
    finally:
        store.close()
    return RemeasureReport(study=study, hardware=hardware, forms=cfg.forms, trials=tuple(done))

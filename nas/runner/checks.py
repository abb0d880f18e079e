"""Every check a search can fail, run before anything is written (no study row, no database file).

:func:`check_search_inputs` is called by :func:`nas.runner.api.search` after the spec is resolved and
before the database is opened for writing. It checks, cheapest first: the database URL, the constraints,
the search space (the preset plus overrides, and that every value of every knob builds a valid
candidate), the teacher, the artefacts folder, the Ray address, and finally the task, which is loaded
once here, in the driver process, so that a wrong path or a malformed file fails in seconds instead of
failing every trial. Each error is one :class:`~nas.errors.ConfigError` naming the field and the fix.
"""

from __future__ import annotations

import json
import os
import socket
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from evaluators.forms import form_unavailable
from evaluators.hf_teacher import check_hf_folder
from evaluators.tasks import BUILTIN_TASKS, load_task
from evaluators.teacher import is_saved_teacher
from nas.config import AttentionConfig, Candidate, DistillConfig, PruneConfig, QuantConfig
from nas.errors import ConfigError, DataError, NASError, SearchError
from nas.feasibility import MeasureFirst
from nas.runner.cost_gate import skip_constraints
from nas.runner.samplers import GP_MAX_OBJECTIVES
from nas.spec import StudySpec
from nas.vocab import SPARSITY_KIND
from nas.where import compile_where
from search_spaces import ReplayTrial, SearchSpace, load_space, suggest
from storage import FILTER_NAMES, normalize_url
from storage.engine import check_writable

__all__ = ["check_search_inputs", "check_trial_inputs", "check_constraints", "check_sampler", "check_space",
           "check_teacher",
           "check_ray_address", "check_task", "check_artefacts_dir", "check_writable_folder"]

#: Seconds to wait for a TCP answer from a ``HOST:PORT`` Ray address.
RAY_CONNECT_TIMEOUT_S = 5.0
_AMOUNT_KINDS = SPARSITY_KIND.where(lambda t: t.takes_amount)


def check_search_inputs(spec: StudySpec, *, db: str, ray_address: str | None = None) -> None:
    """Run every check of a search that can fail; raise the first failure, having written nothing."""
    check_writable(normalize_url(db))
    check_constraints(spec)
    check_sampler(spec)
    space = check_space(spec)
    if spec.measure.seq_len > space.max_len:
        raise ConfigError(f"the energy is measured on {spec.measure.seq_len}-token rows, longer than the space's "
                          f"max_len {space.max_len}, so every trial would fail", field="measure.seq_len",
                          value=spec.measure.seq_len,
                          fix=f"set measure.seq_len <= {space.max_len}, or raise space.overrides.max_len")
    check_teacher(spec.teacher.path if spec.teacher else None, distills=space.uses_teacher)
    check_serving_forms(spec)
    check_artefacts_dir(spec)
    if ray_address is not None:
        check_ray_address(ray_address)
    _check_teacher_labels(spec, check_task(spec, space.max_len))


def check_trial_inputs(candidate: Candidate, *, task: str, teacher: str | None, weights_out: str | Path | None,
                       seed: int = 0, measure_seq: int | None = None) -> None:
    """What ``nas trial`` checks before it starts.

    The measured sequence length, the teacher, that the weights folder can be written, and the task (a
    built-in's name; a file is parsed, and its tokenizer cached for the trial).
    """
    if measure_seq is not None and measure_seq > candidate.max_len:
        raise ConfigError(f"longer than the candidate's max_len {candidate.max_len}", field="--measure-seq",
                          value=measure_seq, fix=f"pass --measure-seq {candidate.max_len} or less, or raise the "
                          "candidate's max_len")
    check_teacher(teacher, distills=candidate.distill.kind != "none", field="--teacher")
    if weights_out is not None:
        check_writable_folder(weights_out, field="--save-weights")
    if task.startswith("builtin:"):
        if task.split(":", 1)[1] not in BUILTIN_TASKS:
            raise ConfigError("unknown built-in task", field="--task", value=task,
                              fix=f"use one of {', '.join('builtin:' + b for b in BUILTIN_TASKS)} or a "
                              "TSV/CSV/JSONL file or folder (see `nas tasks`)")
        return
    if not Path(task).expanduser().exists():
        raise ConfigError("task file or folder not found", field="--task", value=task,
                          fix="pass builtin:NAME (see `nas tasks`), a .tsv/.csv/.jsonl file, or a folder with "
                          "train.* and dev.*")
    load_task(task, seed=seed, max_len=candidate.max_len)


def check_serving_forms(spec: StudySpec) -> None:
    """Every form ``measure.serving_form`` lists can run on the trials' device here (before any training)."""
    device = "cuda" if spec.resources.gpus_per_trial > 0 else spec.train.device
    for form in spec.measure.forms:
        why = form_unavailable(form, device)
        if why is not None:
            raise ConfigError(f"measure.serving_form {form!r} cannot be measured here: {why}",
                              field="measure.serving_form", value=form,
                              fix="remove it from measure.serving_form, or run where it can")


def check_constraints(spec: StudySpec) -> None:
    """Parse every constraint, so a typo fails at once, naming the constraint.

    Then refuse ``fidelity.measure_first: true`` when no constraint can be judged before training, and
    ``fidelity.predict_skip: true`` when none reads a value the cost model predicts.
    """
    for i, c in enumerate(spec.constraints):
        try:
            compile_where(c, FILTER_NAMES)
        except ConfigError as e:
            msg = str(e).removeprefix(f"{e.field}: ") if e.field else str(e)
            msg = msg.removesuffix(f". Fix: {e.fix}") if e.fix else msg
            raise ConfigError(msg, field=f"constraints[{i}]", value=c,
                              fix=e.fix or "see `nas pareto --help` for the syntax") from e
    MeasureFirst.for_study(spec.constraints, setting=spec.fidelity.measure_first,
                           margin=spec.fidelity.measure_first_margin)
    skip_constraints(spec)


def check_sampler(spec: StudySpec) -> None:
    """Refuse a sampler that could not work or would never be used, saying why.

    The GP sampler needs scipy (imported by Optuna only at its first model fit, which would be trials into
    the search), at most :data:`~nas.runner.samplers.GP_MAX_OBJECTIVES` objectives, and start-up trials
    fewer than the budget (its model is consulted only after ``n_startup_trials`` complete trials). The
    evolution sampler needs a population smaller than the budget (its first ``population`` trials are
    random).
    """
    trials = spec.budget.trials
    if spec.sampler.kind == "evolution":
        population = spec.sampler.resolved_population
        example = max(2, trials // 4)  # a population is at least 2: a budget of 2 trials leaves no example
        sizes = "sampler.sample_size: 2" if example == 2 else f"sampler.sample_size from 2 to {example}"
        label = "evolution sampler" + (" (its default population)" if spec.sampler.population is None else "")
        _random_start_below_budget(label, population, trials, "sampler.population", "nothing would evolve",
                                   f"set sampler.population below {trials} (e.g. {example}, with {sizes})"
                                   if example < trials else None)
    if spec.sampler.kind != "gp":
        return
    if find_spec("scipy") is None:
        raise ConfigError("the GP sampler needs scipy, which is not installed", field="sampler.kind", value="gp",
                          fix="pip install scipy, or choose sampler.kind: tpe")
    n_obj = len(spec.objectives)
    if n_obj > GP_MAX_OBJECTIVES:
        raise ConfigError(f"the GP sampler takes at most {GP_MAX_OBJECTIVES} objectives and the study has {n_obj}: "
                          "its hypervolume acquisition grows exponentially with them (with 5: up to 2 minutes and "
                          "tens of GB per proposal)", field="sampler.kind",
                          fix=f"use sampler.kind: tpe or nsga2, or keep at most {GP_MAX_OBJECTIVES} objectives")
    _random_start_below_budget("GP sampler", spec.sampler.n_startup_trials, trials, "sampler.n_startup_trials",
                               "its model would never be used",
                               f"set sampler.n_startup_trials below {trials} (e.g. {max(1, trials // 4)})")


def _random_start_below_budget(sampler: str, random_trials: int, trials: int, field: str, consequence: str,
                               fix: str | None) -> None:
    """Refuse a sampler whose first ``random_trials`` trials, all random, would spend the whole budget."""
    if random_trials >= trials:
        raise ConfigError(f"the {sampler} draws its first {random_trials} trials at random and the budget is "
                          f"{trials} trials, so {consequence}", field=field, value=random_trials,
                          fix=f"{fix + ', ' if fix else ''}raise budget.trials, or use sampler.kind: random")


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _field_of(knob: str) -> tuple[Any, str] | None:
    """The candidate field a space knob's values land in: (model class, field name)."""
    table: dict[str, tuple[Any, str]] = {
        "n_layers": (Candidate, "n_layers"), "d_model": (Candidate, "d_model"), "n_heads": (Candidate, "n_heads"),
        "dropout": (Candidate, "dropout"), "pooling": (Candidate, "pooling"), "max_len": (Candidate, "max_len"),
        "attention": (AttentionConfig, "kind"), "window": (AttentionConfig, "window"), "k": (AttentionConfig, "k"),
        "feature_map": (AttentionConfig, "feature_map"), "embedding_bits": (QuantConfig, "embedding_bits"),
        "attention_bits": (QuantConfig, "attention_bits"), "ffn_bits": (QuantConfig, "ffn_bits"),
        "quant_scheme": (QuantConfig, "scheme"), "quant_granularity": (QuantConfig, "granularity"),
        "activation_bits": (QuantConfig, "activation_bits"), "activation_range": (QuantConfig, "activation_range"),
        "sparsity": (PruneConfig, "kind"), "sparsity_amount": (PruneConfig, "amount"),
        "prune_importance": (PruneConfig, "importance"), "prune_schedule": (PruneConfig, "schedule"),
        "distill": (DistillConfig, "kind"), "kd_temperature": (DistillConfig, "temperature"),
        "kd_alpha": (DistillConfig, "alpha"),
    }
    return table.get(knob)


def _where(spec: StudySpec, knob: str) -> str:
    return f"space.overrides.{knob}" if knob in spec.space.overrides else f"space.{knob} (preset {spec.space.preset!r})"


def _check_values(spec: StudySpec, space: SearchSpace) -> None:
    """Each value of each knob, alone, against the candidate field it becomes (range, allowed names)."""
    for knob, values in space.model_dump().items():
        target = _field_of(knob)
        if target is None:
            continue
        model, name = target
        info = model.model_fields[name]
        adapter: TypeAdapter[Any] = TypeAdapter(Annotated[info.annotation, info])  # type: ignore[arg-type]
        for value in values if isinstance(values, (list, tuple)) else [values]:
            try:
                adapter.validate_python(value)
            except ValidationError as e:
                raise ConfigError(f"{_where(spec, knob)}: value {value!r} is not a valid candidate value "
                                  f"({_one_line(e)})", fix=f"remove {value!r} from {knob}") from e


def _variants(space: SearchSpace) -> list[tuple[str, Any, dict[str, Any]]]:
    """(knob, value, params) for each knob and value, in a context where the knob is used."""
    context = {"window": {"attention": "local"}, "k": {"attention": "lowrank"},
               "feature_map": {"attention": "linear"}}
    variants: list[tuple[str, Any, dict[str, Any]]] = []
    for name, values in space.model_dump().items():
        needs = context.get(name, {})
        if needs and needs["attention"] not in space.attention:
            continue  # e.g. window without local attention: the knob is never used
        if isinstance(values, list):
            variants += [(name, v, {**needs, name: v}) for v in values]
    amount_kinds = [k for k in space.sparsity if k in _AMOUNT_KINDS]
    if amount_kinds:
        variants += [("sparsity_amount", v, {"sparsity": amount_kinds[0], "sparsity_amount": v})
                     for v in space.sparsity_amount]
        variants += [(n, v, {"sparsity": amount_kinds[0], n: v}) for n in ("prune_importance", "prune_schedule")
                     for v in getattr(space, n)]
    quantized = [b for b in space.activation_bits if b != 32]
    variants = [v for v in variants if v[0] != "activation_range"]  # only used with quantized activations
    if quantized:
        variants += [("activation_range", v, {"activation_bits": quantized[0], "activation_range": v})
                     for v in space.activation_range]
    distills = [d for d in space.distill if d != "none"]
    if distills:
        for name in ("kd_temperature", "kd_alpha"):
            variants += [(name, v, {"distill": distills[0], name: v}) for v in getattr(space, name)]
    return variants


def check_space(spec: StudySpec) -> SearchSpace:
    """The validated :class:`~search_spaces.SearchSpace`.

    Every value of every knob must be a valid candidate value, and must build a valid candidate with the
    others (a local window wider than ``max_len``, a dropout of 1.5, a pooling that does not exist... fail
    here, not in every trial).
    """
    space = load_space(spec.space.preset, spec.space.overrides)
    _check_values(spec, space)
    if "teacher" in space.init and not spec.teacher:
        raise ConfigError("space.init offers 'teacher' but the study names no teacher", field="space.init",
                          fix="set teacher: DIR (a Hugging Face folder) or teacher: auto, or use init: [scratch]")
    if "teacher" in space.init and spec.fidelity.kind == "supernet":
        raise ConfigError("fidelity.kind: supernet cuts every candidate from the study's supernet, so space.init "
                          "cannot offer 'teacher' too", field="space.init",
                          fix="use init: [scratch] (the supernet distils from the teacher), or fidelity.kind: rungs")
    checked = space.model_copy(update={"init": ["scratch"]})  # init: teacher is cut from the teacher in the driver
    base: dict[str, Any] = {name: value[0] for name, value in checked.model_dump().items() if isinstance(value, list)}
    for name in ("sparsity_amount", "kd_temperature", "kd_alpha"):
        base[name] = getattr(checked, name)[0]
    for i in range(max(checked.n_layers)):  # the per-layer knobs of layer_shapes: per_layer
        base[f"n_heads_{i}"], base[f"ffn_ratio_{i}"] = checked.n_heads[0], checked.ffn_ratio[0]
    try:
        suggest(ReplayTrial(base), checked)
    except ValidationError as e:
        raise ConfigError(f"space: the first value of every knob makes an invalid candidate ({_one_line(e)})",
                          fix="change the values named there in space.overrides") from e
    for name, value, change in _variants(checked):
        try:
            suggest(ReplayTrial({**base, **change}), checked)
        except ValidationError as e:
            raise ConfigError(f"{_where(spec, name)}: value {value!r} makes an invalid candidate ({_one_line(e)})",
                              fix=f"remove {value!r} from {name}, or change max_len or the other knobs so it fits") from e
    return space


def check_teacher(teacher: str | None, *, distills: bool, field: str = "teacher") -> None:
    """``teacher`` is absent, ``auto``, a fine-tuned teacher's folder, or a local Hugging Face folder that converts.

    A distilling space or candidate (``distills``) needs one. A folder gets the cheap checks of
    :func:`evaluators.hf_teacher.check_hf_folder` (config, a model type transformers knows and that
    converts, readable safetensors headers, a tokenizer); no weights are loaded.
    """
    name = (teacher or "").strip()
    if name.lower() in ("", "none"):
        if distills:
            how = f"{field} auto" if field.startswith("--") else f"{field}: auto"
            raise ConfigError("distillation is asked for (a distill kind other than none) but no teacher is set",
                              field=field, fix=f"pass {how} (a cached self-trained teacher) or a local Hugging "
                              "Face folder, or use distill kind none")
        return
    if name.lower() == "auto" or is_saved_teacher(name):
        return
    check_hf_folder(name, field=field)


def _check_teacher_labels(spec: StudySpec, num_labels: int) -> None:
    """A fine-tuned teacher's folder fits the task's labels (a Hugging Face head that does not is fine-tuned)."""
    teacher = spec.teacher.path if spec.teacher is not None else ""
    if not teacher or teacher.lower() == "auto" or not is_saved_teacher(teacher):
        return
    try:
        saved = int(json.loads((Path(teacher).expanduser() / "meta.json").read_text(encoding="utf-8"))["num_labels"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"the fine-tuned teacher's meta.json is unreadable ({e})", field="teacher.path",
                          value=teacher, fix="fit it again with `nas teacher fit DIR --task T`") from e
    if saved != num_labels:
        raise ConfigError(f"the fine-tuned teacher has {saved} labels but the task has {num_labels}",
                          field="teacher.path", value=teacher,
                          fix="give the Hugging Face folder it came from, which is fine-tuned on this task")


def check_writable_folder(folder: str | Path, *, field: str) -> None:
    """``folder`` exists as a writable folder, or can be created (its nearest existing parent is one)."""
    path = Path(folder).expanduser().absolute()
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{existing} is a file, so {path} cannot be a folder", field=field, value=str(folder),
                          fix="choose a folder path whose parents are folders")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"folder {existing} is not writable", field=field, value=str(folder),
                          fix="choose a writable folder, or fix its permissions")


def check_artefacts_dir(spec: StudySpec) -> None:
    """``storage.artefacts_dir``, when set, can be created and written."""
    if spec.storage.artefacts_dir:
        check_writable_folder(spec.storage.artefacts_dir, field="storage.artefacts_dir")


def check_ray_address(address: str) -> None:
    """``auto``, ``local``, ``ray://HOST:PORT`` or a reachable ``HOST:PORT`` (fails in seconds, not minutes)."""
    text = address.strip()
    if text in ("auto", "local"):
        return
    fix = "pass the head node's address, e.g. 127.0.0.1:6379 (or ray://HOST:10001), or omit --ray-address"
    hostport = text.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in hostport or " " in hostport:
        raise ConfigError("expected HOST:PORT", field="--ray-address", value=address, fix=fix)
    if text.startswith("ray://"):
        return  # the Ray client protocol: ray.init reports its own errors
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise SearchError(f"no Ray cluster answers at {address} ({e.strerror or e})", field="--ray-address",
                          fix="start one with `ray start --head`, or omit --ray-address for local Ray") from e


def check_task(spec: StudySpec, max_len: int) -> int:
    """The task exists and parses, loaded once here in the driver.

    A built-in (a few rows suffice to check it), or a file or folder (its tokenizer is cached, so the trials
    reuse this work).

    Returns:
        The task's number of labels.
    """
    few = 2 if spec.task.startswith("builtin:") else None  # a built-in's rows cannot be malformed
    try:
        task = load_task(spec.task, seed=spec.train.seed, max_len=max_len, n_train=few, n_dev=few)
    except NASError as e:
        if e.field == "task":
            raise
        raise DataError(f"{e}", field="task") from e
    return int(task.num_labels)

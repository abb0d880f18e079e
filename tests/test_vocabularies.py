"""One list per vocabulary: the CLI choices, the spec's allowed values (validation and JSON schema), the
HTTP parameters, the implementations and the docs all equal :mod:`nas.vocab`."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, get_args

import pytest
import typer.main
from pydantic import BaseModel, ValidationError

from nas.vocab import (
    ATTENTION_KIND,
    DISTILL_KIND,
    EXPORT_CHOICE,
    EXPORT_FORMAT,
    METER,
    METER_READING,
    OBJECTIVE,
    SAMPLER,
    SPARSITY_KIND,
    VOCABULARIES,
    Registry,
    Term,
    Vocabulary,
    markdown,
)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ helpers
def _cli_choices(command: str, option: str) -> tuple[str, ...]:
    """The choices of a command's option, read from the click command typer builds, and checked to be
    what the command line refuses a value outside of."""
    from typer.testing import CliRunner

    from nas.cli import app

    cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    (param,) = [p for p in cmd.params if option in p.opts]
    choices = tuple(get_args(param.type_descriptor.annotation))
    args = [command, *(["s", "1", "--out", "o"] if command == "export" else []), option, "no-such-name"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert all(repr(c) in result.output for c in choices), result.output
    return choices


def _schema_enum(model: type[BaseModel], field: str) -> list[Any]:
    prop = model.model_json_schema()["properties"][field]
    return list(prop["enum"])


def _accepts_exactly(model: type[BaseModel], field: str, vocabulary: Vocabulary[Any], **others: Any) -> None:
    for name in vocabulary.names:
        assert getattr(model(**{field: name, **others}), field) == name
    with pytest.raises(ValidationError) as e:
        model(**{field: "no-such-name", **others})
    message = str(e.value)
    assert all(repr(n) in message or n in message for n in vocabulary.names), message


# --------------------------------------------------------------------------------------------- meters
def test_meters_cli_spec_and_factories_agree() -> None:
    from evaluators.meters import METER_CHOICES, METER_FACTORIES
    from nas.config import MeasureConfig

    assert _cli_choices("trial", "--meter") == METER.names
    assert tuple(_schema_enum(MeasureConfig, "meter")) == METER.names
    _accepts_exactly(MeasureConfig, "meter", METER)
    assert METER.names == METER_CHOICES
    assert tuple(METER_FACTORIES) == METER.names and not METER_FACTORIES.missing()


def test_unknown_meter_names_the_field_and_lists_the_meters() -> None:
    from evaluators.meters import make_meter
    from nas.config import MeasureConfig
    from nas.errors import ConfigError

    with pytest.raises(ConfigError, match="meter: unknown energy meter") as e:
        make_meter("rapl", MeasureConfig())
    assert ", ".join(METER.names) in str(e.value)


def test_reading_meters_are_the_meter_classes_names() -> None:
    from evaluators.meters import CodeCarbonMeter, EstimateMeter, NoneMeter, NvmlCounterMeter, NvmlPowerMeter
    from nas.records import ESTIMATE_METERS, METERS

    classes = (NvmlCounterMeter, NvmlPowerMeter, CodeCarbonMeter, EstimateMeter, NoneMeter)
    assert tuple(c.name for c in classes) == METER_READING.names == METERS
    for c in classes:
        if METER_READING[c.name].always_estimate:
            assert c.is_estimate
    assert {"estimate"} == ESTIMATE_METERS


# ----------------------------------------------------------------------------------------- objectives
def test_objectives_are_the_trial_metrics_and_the_spec_allows_the_optimisable_ones() -> None:
    from nas.config import Candidate
    from nas.records import TrialResult
    from nas.spec import OBJECTIVE_METRICS, Objective, StudySpec

    metrics = TrialResult(candidate=Candidate(), task="", status="COMPLETE").objectives()
    assert tuple(metrics) == OBJECTIVE.names
    optimisable = OBJECTIVE.where(lambda t: t.objective)
    assert tuple(OBJECTIVE_METRICS) == optimisable
    schema = StudySpec.model_json_schema()["$defs"]["Objective"]["properties"]["metric"]
    assert tuple(schema["enum"]) == optimisable
    for name in optimisable:
        assert Objective(metric=name).resolved_direction == OBJECTIVE[name].direction
    for name in set(OBJECTIVE.names) - set(optimisable):
        with pytest.raises(ValidationError, match="unknown objective metric"):
            Objective(metric=name)


def test_storage_objective_names_come_from_the_vocabulary() -> None:
    pytest.importorskip("sqlalchemy")
    from storage import FILTER_NAMES
    from storage.views import OBJECTIVE_NAMES

    assert OBJECTIVE.names == OBJECTIVE_NAMES
    assert set(OBJECTIVE.names) <= set(FILTER_NAMES)


# ------------------------------------------------------------------------------------ candidate kinds
def test_attention_kinds_spec_space_and_registry_agree() -> None:
    from nas.config import AttentionConfig
    from nas.models import ATTENTION_REGISTRY
    from search_spaces import SearchSpace

    assert tuple(_schema_enum(AttentionConfig, "kind")) == ATTENTION_KIND.names
    extra = {"local": {"window": 4}, "lowrank": {"k": 8}, "strided": {"stride": 8}, "fixed": {"stride": 8},
             "hash": {"buckets": 4}}
    for name in ATTENTION_KIND.names:
        assert AttentionConfig(kind=name, **extra.get(name, {})).kind == name
    with pytest.raises(ValidationError, match="'softmax', 'local', 'linear', 'lowrank', 'strided', 'fixed' or 'hash'"):
        AttentionConfig(kind="flash")
    assert tuple(ATTENTION_REGISTRY) == ATTENTION_KIND.names and not ATTENTION_REGISTRY.missing()
    assert all(cls.kind == name for name, cls in ATTENTION_REGISTRY.items())
    assert tuple(SearchSpace().attention) == ATTENTION_KIND.names


def test_dashboard_colours_only_name_known_attention_kinds() -> None:
    pytest.importorskip("plotly")
    from dashboards.plots import ATTENTION_COLOURS

    assert set(ATTENTION_COLOURS) <= set(ATTENTION_KIND.names)


def test_sparsity_kinds_spec_space_and_pruners_agree() -> None:
    import torch

    from nas.compress import prune_
    from nas.compress.prune import PRUNERS
    from nas.config import Candidate, PruneConfig
    from nas.models import build
    from search_spaces import SearchSpace

    assert tuple(_schema_enum(PruneConfig, "kind")) == SPARSITY_KIND.names
    _accepts_exactly(PruneConfig, "kind", SPARSITY_KIND, amount=0.25)
    assert tuple(SearchSpace().sparsity) == SPARSITY_KIND.names
    assert tuple(PRUNERS) == SPARSITY_KIND.names and not PRUNERS.missing()
    for name, term in SPARSITY_KIND.terms.items():
        if term.takes_amount:
            with pytest.raises(ValidationError, match="sparsity.amount must be > 0"):
                PruneConfig(kind=name, amount=0.0)
        torch.manual_seed(0)
        model = build(Candidate(n_layers=1, d_model=16, n_heads=4, d_ffn=16, max_len=16), 50, 2)
        report = prune_(model, PruneConfig(kind=name, amount=0.25))
        assert report.details["kind"] == name


def test_distill_kinds_spec_and_losses_agree() -> None:
    import torch

    from evaluators.distill import DistillLoss
    from nas.config import Candidate, DistillConfig
    from nas.models import build

    assert tuple(_schema_enum(DistillConfig, "kind")) == DISTILL_KIND.names
    _accepts_exactly(DistillConfig, "kind", DISTILL_KIND)
    torch.manual_seed(0)
    student = build(Candidate(n_layers=1, d_model=16, n_heads=2, d_ffn=16, max_len=16), 50, 2)
    teacher = build(Candidate(n_layers=2, d_model=24, n_heads=2, d_ffn=24, max_len=16), 50, 2).eval()
    ids, mask, y = torch.randint(1, 50, (4, 8)), torch.ones(4, 8, dtype=torch.long), torch.tensor([0, 1, 0, 1])
    s_out = student(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        t_out = teacher(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    for name, term in DISTILL_KIND.terms.items():
        cfg = DistillConfig(kind=name)
        assert (cfg.uses_logits, cfg.uses_hidden, cfg.uses_attention) == tuple(
            loss in term.losses for loss in ("logit", "hidden", "attention"))
        terms = DistillLoss(cfg, 1, 16, 2, 24)(s_out, t_out, y, mask)
        computed = {"logit": terms.kd, "hidden": terms.hidden, "attention": terms.attention}
        assert {k for k, v in computed.items() if v != 0.0} == set(term.losses), name


# ----------------------------------------------------------------------------------- search and export
def test_samplers_spec_and_factories_agree() -> None:
    pytest.importorskip("optuna")
    from nas.errors import ConfigError
    from nas.runner.samplers import SAMPLER_FACTORIES, make_sampler
    from nas.spec import SamplerSpec

    assert tuple(_schema_enum(SamplerSpec, "kind")) == SAMPLER.names
    _accepts_exactly(SamplerSpec, "kind", SAMPLER)
    assert tuple(SAMPLER_FACTORIES) == SAMPLER.names and not SAMPLER_FACTORIES.missing()
    for name in SAMPLER.names:
        assert make_sampler(SamplerSpec(kind=name, n_startup_trials=4), 0) is not None
    with pytest.raises(ConfigError, match="sampler.kind: unknown sampler"):  # past the spec's own check
        make_sampler(SamplerSpec.model_construct(kind="cmaes", seed=0, n_startup_trials=4), 0)


def test_export_formats_cli_http_template_and_exporters_agree() -> None:
    from nas.export import EXPORTERS, FORMATS

    assert tuple(EXPORTERS) == EXPORT_FORMAT.names
    assert all(cls.name == name for name, cls in EXPORTERS.items())
    assert FORMATS == EXPORT_CHOICE.names == (*EXPORT_FORMAT.names, "all")
    assert _cli_choices("export", "--format") == EXPORT_CHOICE.names
    template = (ROOT / "dashboards" / "templates" / "trial.html").read_text(encoding="utf-8")
    select = re.search(r'<select id="export-format".*?</select>', template, re.S)
    assert select is not None
    assert set(re.findall(r'<option value="([^"]+)"', select.group(0))) == set(EXPORT_CHOICE.names)


def test_http_export_format_parameter_is_the_vocabulary() -> None:
    pytest.importorskip("fastapi")
    from fastapi import FastAPI

    from dashboards.api import router

    app = FastAPI()
    app.include_router(router)
    (op,) = [v["post"] for k, v in app.openapi()["paths"].items() if k.endswith("/trials/{trial}/export")]
    (param,) = [p for p in op["parameters"] if p["name"] == "format"]
    assert tuple(param["schema"]["enum"]) == EXPORT_CHOICE.names


# ---------------------------------------------------------------------------------------- the registry
def test_registry_refuses_unknown_and_duplicate_names_and_reports_gaps() -> None:
    from nas.errors import ConfigError

    vocabulary = Vocabulary("colour", "colour", [Term("red", "r"), Term("blue", "b")])
    registry: Registry[int] = Registry(vocabulary, "number")
    with pytest.raises(ConfigError, match="not a known colour"):
        registry.register("green")
    registry.register("blue")(2)
    with pytest.raises(ConfigError, match="already has a number"):
        registry.register("blue")(3)
    assert registry.missing() == ("red",)
    with pytest.raises(ConfigError, match="'red' has no number"):
        registry.require_complete()
    registry.register("red")(1)
    registry.require_complete()
    assert list(registry.items()) == [("red", 1), ("blue", 2)]
    with pytest.raises(ConfigError, match=r"colour: unknown colour \(got 'pink'\). Fix: use one of red, blue"):
        registry.lookup("pink")


def test_vocabulary_module_is_layer_zero() -> None:
    tree = ast.parse((ROOT / "nas" / "vocab.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "collections.abc", "dataclasses", "typing", "pydantic", "pydantic_core",
                        "nas.errors"}, imported


# ----------------------------------------------------------------------------------------------- docs
def test_docs_vocabularies_md_is_generated_from_the_registry() -> None:
    text = (ROOT / "docs" / "vocabularies.md").read_text(encoding="utf-8")
    assert text == markdown(), ("docs/vocabularies.md is stale; regenerate it: "
                                "python -c \"import nas.vocab as v; print(v.markdown(), end='')\" > docs/vocabularies.md")
    for vocabulary in VOCABULARIES.values():
        for name in vocabulary.names:
            assert f"| `{name}` |" in text


def _alternatives(text: str, pattern: str) -> list[tuple[str, ...]]:
    """Every ``a|b|c`` list after ``pattern`` in ``text`` (Markdown's ``\\|`` and spaces allowed)."""
    found = re.findall(pattern + r"\s*((?:[a-z0-9:-]+\s*\\?\|\s*)+[a-z0-9:-]+)", text)
    return [tuple(p.strip() for p in f.replace("\\|", "|").split("|")) for f in found]


@pytest.mark.parametrize("doc", ["README.md", "docs/measurement.md", "docs/export.md", "docs/dashboard.md"])
def test_choice_lists_in_the_docs_are_complete(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    for choices in _alternatives(text, r"--meter"):
        assert set(choices) == set(METER.names), (doc, choices)
    for choices in _alternatives(text, r"(?:--format|format=)"):
        assert set(choices) == set(EXPORT_CHOICE.names), (doc, choices)


def test_measurement_doc_meter_table_lists_every_meter() -> None:
    text = (ROOT / "docs" / "measurement.md").read_text(encoding="utf-8")
    table = text[text.index("| `--meter` |"):].split("\n\n")[0]
    rows = re.findall(r"^\| `([a-z-]+)`(?: \(default\))? \| ", table, re.M)
    assert sorted(rows[1:]) == sorted(METER.names)

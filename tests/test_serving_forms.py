"""Serving-form energy (#15 item 2): each listed form measured per trial, one reading each; the primary's is the front's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from evaluators.forms import OrtForm, form_unavailable
from evaluators.measure import measure_inference
from evaluators.pipeline import run_trial
from nas.config import Candidate, MeasureConfig, QuantConfig, TrainConfig
from nas.errors import ConfigError
from nas.records import TrialResult

pytest.importorskip("onnxruntime")

TRAIN = TrainConfig(steps=20, batch_size=32, lr=3e-3, device="cpu", seed=0)
SMALL = Candidate(n_layers=1, d_model=32, n_heads=2, d_ffn=64, max_len=32)


def _measure(**kw: Any) -> MeasureConfig:
    return MeasureConfig(meter="estimate", window_s=0.1, n_windows=2, idle_s=0.05, warmup_iters=2, batch_size=8,
                         seq_len=32, **kw)


@pytest.fixture(scope="module")
def two_forms() -> TrialResult:
    return run_trial(SMALL, "builtin:sentiment", train_cfg=TRAIN,
                     measure_cfg=_measure(serving_form=["eager", "onnxruntime"]))


def test_a_trial_measures_each_listed_form_and_the_first_is_primary(two_forms: TrialResult) -> None:
    assert two_forms.inference is not None and two_forms.inference.serving_form == "eager"
    (ort,) = two_forms.other_forms
    assert ort.serving_form == "onnxruntime" and "onnxruntime" in ort.kernels and "CPUExecutionProvider" in ort.kernels
    assert ort.is_estimate and ort.meter == two_forms.inference.meter  # labelled like the primary
    assert ort.energy_per_sample_j and ort.energy_per_sample_j > 0
    assert two_forms.energy_per_sample_j == two_forms.inference.energy_per_sample_j  # the front's number
    back = TrialResult.from_dict(two_forms.to_dict())
    assert back.other_forms == two_forms.other_forms


def test_the_store_keeps_one_reading_per_form(two_forms: TrialResult, tmp_path: Path) -> None:
    from storage import Store, TrialCost

    store = Store.open(str(tmp_path / "nas.db"))
    store.create_study("s", "{}", [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
    store.start_trial("s", 0, SMALL)
    store.finish_trial("s", 0, two_forms, cost=TrialCost.from_result(two_forms, wall_s=1.0))
    kinds = [r.kind for r in store.readings("s", 0)]
    assert kinds.count("inference:eager") == 1 and kinds.count("inference:onnxruntime") == 1
    stored = store.trials("s")[0]
    assert stored.values()["energy_per_sample_j"] == two_forms.inference.energy_per_sample_j  # type: ignore[union-attr]
    store.close()


def test_primary_form_chooses_the_reading_of_record() -> None:
    cfg = _measure(serving_form=["eager", "onnxruntime"], primary_form="onnxruntime")
    assert cfg.forms == ("onnxruntime", "eager") and cfg.primary == "onnxruntime"
    res = run_trial(SMALL, "builtin:sentiment", train_cfg=TRAIN, measure_cfg=cfg)
    assert res.inference is not None and res.inference.serving_form == "onnxruntime"
    assert [f.serving_form for f in res.other_forms] == ["eager"]


def test_an_8_bit_candidate_is_served_by_the_int8_graph() -> None:
    cand = SMALL.model_copy(update={"quant": QuantConfig(attention_bits=8, ffn_bits=8)})
    res = run_trial(cand, "builtin:sentiment", train_cfg=TRAIN, measure_cfg=_measure(serving_form="onnxruntime"))
    assert res.inference is not None
    assert "int8 dynamic graph (attention, ffn; the rest fp32)" in res.inference.kernels
    assert "simulated" not in res.inference.kernels  # 8-bit weights run as int8: nothing is only simulated


@pytest.mark.parametrize(("data", "words"), [
    ({"serving_form": ["eager", "eager"]}, ["twice"]),
    ({"serving_form": ["eager"], "primary_form": "onnxruntime"}, ["primary_form", "not among"]),
    ({"serving_form": []}, ["lists no form"]),
    ({"serving_form": "tensorrt"}, ["serving_form"]),
])
def test_bad_form_lists_fail_in_one_line(data: dict[str, Any], words: list[str]) -> None:
    from nas.config import validate

    with pytest.raises(ConfigError) as e:
        validate(MeasureConfig, data, source="measure")
    assert all(w in str(e.value) for w in words), str(e.value)


def test_a_form_that_cannot_run_here_is_refused_when_the_study_is_checked(tmp_path: Path) -> None:
    from nas.runner.checks import check_serving_forms
    from nas.spec import StudySpec

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: cuda_graph can run")
    assert "CUDA device" in (form_unavailable("cuda_graph", "cpu") or "")
    with pytest.raises(ConfigError, match="cuda_graph") as e:
        check_serving_forms(StudySpec(measure=_measure(serving_form=["eager", "cuda_graph"])))
    assert "remove it from measure.serving_form" in str(e.value)
    check_serving_forms(StudySpec(measure=_measure(serving_form=["eager", "onnxruntime", "compiled"])))


def test_measure_inference_will_not_label_a_plain_model_as_another_form(tmp_path: Path) -> None:
    from nas.models import build

    model = build(SMALL, vocab_size=50, num_labels=2)
    with pytest.raises(ConfigError, match="plain model"):
        measure_inference(model, _measure(serving_form="onnxruntime"), vocab_size=50)
    ids = torch.randint(1, 50, (2, 32))
    form = OrtForm(model.eval(), ids, torch.ones_like(ids), tmp_path, threads=1)
    reading = measure_inference(form, _measure(serving_form="onnxruntime"), vocab_size=50)
    assert reading.serving_form == "onnxruntime"


@pytest.mark.slow
def test_a_study_stores_a_reading_per_form_for_every_trial(tmp_path: Path) -> None:
    import nas
    from nas.spec import StudySpec
    from storage import Store
    from tests.test_search import small_spec

    db = tmp_path / "nas.db"
    spec = small_spec("forms", db, trials=3)
    spec["measure"] = {**spec["measure"], "serving_form": ["eager", "onnxruntime"]}
    nas.search(StudySpec.model_validate(spec), db=str(db))
    store = Store.open(str(db), create=False)
    complete = [v for v in store.trials("forms") if v.state == "COMPLETE"]
    assert len(complete) == 3
    for view in complete:
        kinds = sorted(r.kind for r in store.readings("forms", view.number) if r.kind.startswith("inference"))
        assert kinds == ["inference:eager", "inference:onnxruntime"], kinds
    store.close()

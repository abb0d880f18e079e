"""Exports that transformers loads (#15 item 1): BERT / DistilBERT without custom code, the rest with it.

The trained exports reuse tests/test_export.py's study (its fixtures and ``_add_trial``: 1 layer, d_model 32,
30 steps on builtin:sentiment) and compare, on its dev texts, what ``transformers`` predicts from the
folder (its own tokenizer and model classes) with what ``nas.load`` predicts. The rest are tiny models
built in code with random weights. Nothing is downloaded: ``HF_HUB_OFFLINE=1``, ``local_files_only``.
"""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nas.config import AttentionConfig, Candidate, PruneConfig, QuantConfig, SharingConfig
from nas.errors import ExportError
from tests.test_export import SMALL, STUDY, _add_trial, _store, dev_texts, study_db  # noqa: F401 (fixtures)

POST = {"norm": "post", "pooling": "cls", "pooler": "tanh", "layer_norm_eps": 1e-12}
TRAINED = {
    "softmax": (50, Candidate(**SMALL, **POST)),
    "lowrank": (51, Candidate(**SMALL, attention=AttentionConfig(kind="lowrank", k=8))),
    "linear": (52, Candidate(**SMALL, attention=AttentionConfig(kind="linear"))),
    "local": (53, Candidate(**SMALL, attention=AttentionConfig(kind="local", window=4))),
}
TINY = {"n_layers": 2, "d_model": 32, "n_heads": 4, "d_ffn": 64, "max_len": 24, "dropout": 0.0}


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No network, and transformers' copies of custom code in a temporary folder, not ~/.cache."""
    import transformers.dynamic_module_utils as dynamic

    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("hf_modules")
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_MODULES_CACHE", str(cache))
    mp.setattr(dynamic, "HF_MODULES_CACHE", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(scope="module")
def exports(study_db: dict[str, Any]) -> dict[str, tuple[Path, Any]]:  # noqa: F811
    from nas.export import export_trial

    store = _store(study_db["db"])
    for number, cand in TRAINED.values():
        _add_trial(store, number, cand, study_db["weights"])
    store.close()
    out = {}
    for name, (number, _) in TRAINED.items():
        folder = study_db["root"] / f"hf_{name}"
        out[name] = (folder / "hf", export_trial(STUDY, number, folder, fmt="hf", db=study_db["db"]))
    return out


def _auto(folder: Path, remote: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=remote,
                                                               local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=remote, local_files_only=True)
    return model, tokenizer


def _agreement(folder: Path, texts: list[str], remote: bool) -> tuple[float, float]:
    """Share of texts where transformers (folder's tokenizer and model) and nas.load predict the same label."""
    from nas.export import load

    ours = load(folder)
    model, tokenizer = _auto(folder, remote)
    enc = tokenizer(texts, padding=True, truncation=True, max_length=ours.max_len, return_tensors="pt")
    ids, mask = ours.encode(texts)
    np.testing.assert_array_equal(enc["input_ids"].numpy(), ids[:, : enc["input_ids"].shape[1]].numpy())
    with torch.inference_mode():
        theirs = model(**enc).logits.numpy()
    want = ours.logits(texts)
    return float((theirs.argmax(1) == want.argmax(1)).mean()), float(np.abs(theirs - want).max())


def _parity(report: Any, fmt: str) -> Any:
    return next(p for p in report.parity if p.format == fmt)


# ---------------------------------------------------------------------------------- trained exports
def test_softmax_post_ln_candidate_loads_as_a_plain_bert(exports: dict[str, Any], dev_texts: list[str]) -> None:  # noqa: F811
    folder, report = exports["softmax"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForSequenceClassification"]
    assert "auto_map" not in config and not (folder / "modeling_energy_nas.py").exists()
    model, _ = _auto(folder, remote=False)
    assert type(model).__name__ == "BertForSequenceClassification"
    agreement, diff = _agreement(folder, dev_texts, remote=False)
    assert agreement >= 0.99 and diff < 1e-3, (agreement, diff)
    checked = _parity(report, "hf-transformers")
    assert checked.passed and "BertForSequenceClassification" in checked.engine and checked.n_examples > 0


@pytest.mark.parametrize("name", ["lowrank", "linear", "local"])
def test_other_attention_loads_with_trust_remote_code(exports: dict[str, Any], dev_texts: list[str],  # noqa: F811
                                                      name: str) -> None:
    folder, report = exports[name]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "energy-nas" and (folder / "modeling_energy_nas.py").is_file()
    assert any(name in why for why in config["nas_custom_code_because"])
    from transformers import AutoModelForSequenceClassification

    with pytest.raises(ValueError, match="trust_remote_code"):  # never runs the file unasked
        AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    model, _ = _auto(folder, remote=True)
    assert type(model).__name__ == "EnergyNasForSequenceClassification"
    agreement, diff = _agreement(folder, dev_texts, remote=True)
    assert agreement >= 0.99 and diff < 1e-4, (agreement, diff)
    assert _parity(report, "hf-transformers").passed and _parity(report, "hf").max_abs_logit_diff == 0.0


def _quiet(caplog: pytest.LogCaptureFixture, load: Any) -> Any:
    """``load()``, asserting that neither transformers' log nor the warnings module said anything."""
    import transformers

    transformers.logging.enable_propagation()  # type: ignore[no-untyped-call]
    try:
        with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            out = load()
    finally:
        transformers.logging.disable_propagation()  # type: ignore[no-untyped-call]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert not seen, [str(w.message) for w in seen]
    return out


def test_tokenizer_loads_without_warnings(exports: dict[str, Any], caplog: pytest.LogCaptureFixture,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from nas.export import load

    bert, custom = exports["softmax"][0], exports["linear"][0]
    tokenizer = _quiet(caplog, lambda: AutoTokenizer.from_pretrained(str(bert), local_files_only=True))
    _quiet(caplog, lambda: AutoTokenizer.from_pretrained(str(custom), trust_remote_code=True, local_files_only=True))
    _quiet(caplog, lambda: PreTrainedTokenizerFast.from_pretrained(str(custom), local_files_only=True))
    assert "custom code" not in capfd.readouterr().out  # no trust_remote_code prompt either
    ours = load(bert)
    texts = ["a fine film", " ".join(["good"] * 200), "zzqx unknownword"]  # one is truncated
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=ours.max_len)
    ids, mask = ours.encode(texts)
    assert enc["input_ids"] == ids.tolist() and enc["attention_mask"] == mask.tolist()


# ------------------------------------------------------------------------------ tiny models in code
def _served(cand: Candidate, seed: int = 0, *, calibrate: bool = False) -> Any:
    """A model of ``cand`` with random (far from initial) weights, compressed and materialised, as a LoadedModel.

    ``calibrate`` runs one training-mode batch after compression, so activation ranges are set.
    """
    from evaluators.tokenize import word_level
    from nas.compress import apply_candidate_compression, materialize_
    from nas.compress.pack import pack_plan
    from nas.export import LoadedModel
    from nas.models import build

    torch.manual_seed(seed)
    tok = word_level([f"w{i}" for i in range(40)])
    model = build(cand, vocab_size=tok.vocab_size, num_labels=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    apply_candidate_compression(model)
    if calibrate:
        with torch.no_grad():
            model.train()(torch.randint(1, tok.vocab_size, (8, cand.max_len)))
    plan = pack_plan(model)
    materialize_(model)
    model.keep_inference_layers_()
    return LoadedModel(model.eval(), tok, ["a", "b", "c"], cand.max_len, cand, pack=plan)


def _batch(n: int = 24, t: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    lengths = rng.integers(2, t + 1, n)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int64)
    return rng.integers(4, 44, (n, t)) * mask, mask


def test_which_candidates_are_standard() -> None:
    from nas.export.hf_standard import standard_family, why_not_standard

    assert standard_family(Candidate(**TINY, **POST)) == "bert"
    assert standard_family(Candidate(**TINY, **{**POST, "pooler": "relu"})) == "distilbert"
    assert standard_family(Candidate(**TINY, **POST, sparsity=PruneConfig(kind="heads", amount=0.5),
                                     quant=QuantConfig(attention_bits=4))) == "bert"
    for change, why in [({"norm": "pre"}, "pre-LN"), ({"pooling": "mean", "pooler": "none"}, "mean"),
                        ({"pooler": "relu", "layer_norm_eps": 1e-5}, "1e-12"), ({"head_dim": 16}, "do not fit"),
                        ({"sharing": SharingConfig(kind="ffn")}, "share ffn"),
                        ({"attention": AttentionConfig(kind="hash", buckets=4)}, "hash")]:
        cand = Candidate(**{**TINY, **POST, **change})
        assert standard_family(cand) is None and any(why in r for r in why_not_standard(cand)), (change, why_not_standard(cand))
    assert len(why_not_standard(Candidate(**TINY))) == 2  # the default: pre-LN and mean pooling


@pytest.mark.parametrize("pooler", ["tanh", "relu"])
def test_pruned_quantized_standard_export_pads_heads_and_keeps_the_packed_weights(tmp_path: Path, pooler: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from nas.export import load
    from nas.export.hf import transformers_runner

    cand = Candidate(**TINY, **{**POST, "pooler": pooler}, sparsity=PruneConfig(kind="heads", amount=0.5),
                     quant=QuantConfig(attention_bits=4, ffn_bits=8))
    served = _served(cand)
    folder = served.save(tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == ("bert" if pooler == "tanh" else "distilbert")
    assert config.get("num_attention_heads", config.get("n_heads")) == 4  # 2 served heads, padded to 4
    with safe_open(str(folder / "nas_packed.safetensors"), framework="pt") as f:
        assert "blocks.0.attn.q_proj.weight.nas_codes" in f.keys()  # noqa: SIM118
    ids, mask = _batch()
    want = served.logits_from_ids(ids, mask)
    np.testing.assert_array_equal(load(folder).logits_from_ids(ids, mask), want)
    run, engine = transformers_runner(folder)
    np.testing.assert_allclose(run(ids, mask), want, atol=1e-4)
    assert "no custom code" in engine
    (folder / "nas_packed.safetensors").unlink()  # nas.load then reads the standard file
    np.testing.assert_allclose(load(folder).logits_from_ids(ids, mask), want, atol=1e-6)
    state = load_file(str(folder / "model.safetensors"))
    query = next(k for k in state if k.endswith("layer.0.attention.self.query.weight") or k.endswith("q_lin.weight"))
    assert torch.count_nonzero(state[query][16:]) == 0  # the removed heads' rows are zero
    state[query][20, 0] = 1.0
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ExportError, match="nonzero weights in the heads"):
        load(folder)


def test_modeling_file_needs_no_energy_nas(tmp_path: Path) -> None:
    from nas.export import load
    from nas.export.hf_bundle import modeling_source

    tree = ast.parse(modeling_source())
    roots = {(n.module or "").split(".")[0] if isinstance(n, ast.ImportFrom) else a.name.split(".")[0]
             for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert roots <= {"__future__", "torch", "transformers", "safetensors", "typing", "collections", "dataclasses",
                     "math", "logging", "json"}, roots
    cand = Candidate(**{**TINY, "n_layers": 3}, sharing=SharingConfig(kind="attention", group_size=2),
                     attention=AttentionConfig(kind="lowrank", k=8), quant=QuantConfig(attention_bits=2, ffn_bits="ternary"))
    folder = _served(cand).save(tmp_path / "hf")
    ids, mask = _batch()
    script = (
        "import importlib.abc, json, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('nas', 'evaluators', 'storage', 'search_spaces'):\n"
        "            raise ImportError('energy-nas is not installed here: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch\n"
        "from transformers import AutoModelForSequenceClassification\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({str(folder)!r}, trust_remote_code=True, "
        "local_files_only=True)\n"
        f"ids, mask = torch.tensor({ids.tolist()}), torch.tensor({mask.tolist()})\n"
        "print(json.dumps(m(input_ids=ids, attention_mask=mask).logits.tolist()))\n"
        "assert not [n for n in sys.modules if n.split('.')[0] == 'nas']\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.array(json.loads(proc.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, load(folder).logits_from_ids(ids, mask), atol=1e-5)


def test_a_version_2_folder_still_loads(tmp_path: Path) -> None:
    from nas.export import load

    served = _served(Candidate(**TINY, quant=QuantConfig(ffn_bits=4)))
    folder = served.save(tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    for key in ("auto_map", "nas_served", "nas_transformers", "nas_custom_code_because"):
        del config[key]
    config.update(nas_format_version=2, architectures=["EncoderClassifier"])
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_energy_nas.py").unlink()
    (folder / "tokenizer_config.json").unlink()
    ids, mask = _batch()
    back = load(folder)
    np.testing.assert_array_equal(back.logits_from_ids(ids, mask), served.logits_from_ids(ids, mask))
    assert back.tokenizer.kind == "wordlevel" and back.pack


def test_a_shared_model_saves_again_through_transformers(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    cand = Candidate(**{**TINY, "n_layers": 3}, sharing=SharingConfig(kind="all"), infer_layers=2, layerdrop=0.1)
    served = _served(cand)
    folder = served.save(tmp_path / "hf")
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=True, local_files_only=True)
    model.save_pretrained(str(tmp_path / "again"))  # the shared block is one tensor under two names: saved once
    again = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "again"), trust_remote_code=True,
                                                               local_files_only=True)
    ids, mask = _batch()
    with torch.inference_mode():
        got = again(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    np.testing.assert_allclose(got, served.logits_from_ids(ids, mask), atol=1e-6)
    assert again.model.blocks[0] is again.model.blocks[1]  # still one block, as served


def test_a_trained_wordpiece_tokenizer_loads_as_it_encodes(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from evaluators.tokenize import train_wordpiece
    from nas.export import LoadedModel

    served = _served(Candidate(**TINY, **POST))
    tok = train_wordpiece(["A fine film, truly!", "a dull film", "not bad at all"] * 20, vocab_size=60)
    folder = LoadedModel(served.model, tok, served.labels, served.max_len, served.candidate).save(tmp_path / "hf")
    texts = ["A FINE film, not dull!", "unseen wordsss here " * 10]
    theirs = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)(
        texts, padding="max_length", truncation=True, max_length=served.max_len)
    ids, _ = tok.encode(texts, served.max_len)
    assert theirs["input_ids"] == ids.tolist()


@pytest.mark.parametrize("range_kind", ["running", "learned"])
def test_quantized_activations_load_with_the_custom_code(tmp_path: Path, range_kind: str) -> None:
    from transformers import AutoModelForSequenceClassification

    from nas.export.hf_standard import standard_family

    cand = Candidate(**TINY, **POST, quant=QuantConfig(activation_bits=8, attention_bits=8, ffn_bits=8,
                                                       activation_range=range_kind))
    assert standard_family(cand) is None  # BERT would drop the activation grid
    served = _served(cand, calibrate=True)
    folder = served.save(tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    assert config["nas_transformers"].endswith("trust_remote_code=True)")
    assert config["nas_served"]["activation"]["bits"] == 8 and len(config["nas_served"]["activation"]["linears"]) == 12
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=True,
                                                               local_files_only=True).eval()
    ids, mask = _batch()
    with torch.no_grad():
        logits = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    want = served.logits_from_ids(ids, mask)
    np.testing.assert_allclose(logits, want, atol=1e-5)
    unquantized = _served(cand.model_copy(update={"quant": QuantConfig(attention_bits=8, ffn_bits=8)}))
    assert not np.allclose(unquantized.logits_from_ids(ids, mask), want, atol=1e-5)  # the grid is in the logits

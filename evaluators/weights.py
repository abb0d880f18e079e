"""A trial's trained weights on disk: written by the trial pipeline, read back by export and retraining.

Layout of a weights folder: ``model.safetensors``, ``candidate.json``, ``tokenizer/`` and ``labels.json``.
:func:`load_trial_model` rebuilds the model exactly: build, compress, load the state dict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from evaluators.tokenize import load_tokenizer
from nas.compress import applied_compression, apply_candidate_compression
from nas.config import Candidate
from nas.errors import ConfigError
from nas.models import build, load_unique_state, unique_state

__all__ = ["save_trial_weights", "load_trial_model"]


def save_trial_weights(folder: str | Path, model: Any, candidate: Candidate, task: Any) -> Path:
    """Write ``model.safetensors``, ``candidate.json``, the tokenizer and ``labels.json`` to ``folder``.

    The model is rebuilt exactly by :func:`load_trial_model`: build, compress, load the state dict.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_file(unique_state(model), str(out / "model.safetensors"))
    (out / "candidate.json").write_text(candidate.model_dump_json(indent=2))
    task.tokenizer.save(out / "tokenizer")
    (out / "labels.json").write_text(json.dumps({
        "label_names": list(task.label_names), "num_labels": task.num_labels, "max_len": task.max_len,
        "vocab_size": task.vocab_size, "task": task.name,
        "compressed": applied_compression(model) is not None,
    }, indent=2))
    return out


def load_trial_model(folder: str | Path) -> tuple[Any, Candidate, Any, dict[str, Any]]:
    """Rebuild a saved trial: ``(model, candidate, tokenizer, labels_info)``; the model is in eval mode."""
    f = Path(folder)
    if not (f / "model.safetensors").exists():
        raise ConfigError(f"{f}: no model.safetensors here", fix="point at a folder written by a trial or export")
    candidate = Candidate.from_json((f / "candidate.json").read_text())
    info = json.loads((f / "labels.json").read_text())
    model = build(candidate, vocab_size=int(info["vocab_size"]), num_labels=int(info["num_labels"]))
    if info.get("compressed"):
        apply_candidate_compression(model)
    model.keep_inference_layers_()  # saved after evaluation, so with candidate.infer_layers' layers only
    load_unique_state(model, load_file(str(f / "model.safetensors")))
    model.eval()
    tok = load_tokenizer(f / "tokenizer")
    return model, candidate, tok, info

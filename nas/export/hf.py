"""The ``hf`` format: a Hugging Face folder, read back by :func:`nas.export.load` and by ``transformers``.

Parity runs the written folder as its users load it: through :func:`nas.load` (``hf``) and, unless
``config.json`` says transformers cannot load it (``nas_transformers: null``, with the reason), through
``transformers`` (``hf-transformers``): the family's own class for a BERT or DistilBERT, else the
folder's ``modeling_energy_nas.py`` imported from the file itself (what ``trust_remote_code=True`` runs;
imported directly, so an export leaves nothing in transformers' module cache).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from evaluators.hf_teacher import _quiet_transformers
from nas.errors import ExportError

from .base import ExportedFile, Exporter, ExportInputs, Runner
from .formats import register_exporter
from .hf_bundle import MODELING_FILE
from .hf_standard import STANDARD_FAMILIES
from .loaded import load

__all__ = ["HFExporter", "transformers_runner"]


def _modeling_module(path: Path) -> Any:
    """``modeling_energy_nas.py`` imported from ``path`` under a fresh module name."""
    name = f"_energy_nas_export_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def transformers_runner(folder: Path) -> tuple[Runner, str]:
    """The ``hf/`` folder loaded by ``transformers``' ``from_pretrained`` as a runner, and what runs it.

    Raises:
        ExportError: ``transformers`` cannot load the folder.
    """
    family = json.loads((folder / "config.json").read_text(encoding="utf-8"))["model_type"]
    try:
        with _quiet_transformers():
            if family in STANDARD_FAMILIES:
                cls: Any = getattr(transformers, STANDARD_FAMILIES[family])
                how = "no custom code"
            else:
                cls = _modeling_module(folder / MODELING_FILE).EnergyNasForSequenceClassification
                how = f"{MODELING_FILE}, trust_remote_code"
            model, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
    except Exception as e:
        raise ExportError(f"transformers {transformers.__version__} cannot load {folder}: {type(e).__name__}: {e}",
                          field="format", value="hf", fix="export another format, and report the failure") from e
    left = {k: sorted(v)[:3] for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if left:  # transformers fills a missing weight at random and drops an unexpected one: never ship that
        raise ExportError(f"transformers {transformers.__version__} loads {folder} only partly: {left}", field="format",
                          value="hf", fix="export another format, and report the failure")
    model = model.float().eval()

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                        attention_mask=torch.from_numpy(mask.astype(np.int64)))
        return np.asarray(out.logits.float().numpy())

    return run, f"transformers {transformers.__version__} {type(model).__name__} ({how}, CPU)"


@register_exporter("hf")
class HFExporter(Exporter):
    """``hf/``: ``config.json``, the weights and the tokenizer files (see :mod:`.loaded` and :mod:`.hf_forms`)."""

    def export(self, inputs: ExportInputs, folder: Path) -> list[ExportedFile]:
        """Save the Hugging Face folder; parity runs it reloaded through :func:`nas.load` and ``transformers``."""
        out = inputs.loaded.save(folder / "hf")
        reloaded = load(out)  # parity runs the folder as a user would load it, not the in-memory model

        def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return reloaded.logits_from_ids(ids, mask)

        rel = out.relative_to(folder)
        files = [ExportedFile("hf", rel, run, "nas.load (PyTorch eager, CPU)")]
        if json.loads((out / "config.json").read_text(encoding="utf-8")).get("nas_transformers"):
            hf_run, engine = transformers_runner(out)
            files.append(ExportedFile("hf-transformers", rel, hf_run, engine))
        return files

"""Campaign parts about the served model: served forms (eager, compiled, CUDA graph, ONNX Runtime) and kernels.

Kernels compares bf16 dense with int8 weight-only (torchao, when it imports for this torch) and 2:4
semi-structured sparsity (``torch.sparse.to_sparse_semi_structured``, CUDA sm80+) on the 20M model after
brief training on the built-in task: J/sample and the change in dev accuracy. The 2:4 weights are a
one-shot magnitude 2:4 mask of the trained weights, without fine-tuning after it, so its accuracy drift is
an upper bound. On a CPU the 2:4 row keeps the mask on dense kernels, labelled so.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from gpu_campaign import Campaign, energy_row, target
from gpu_parts import DRY_VOCAB, VOCAB
from torch import nn

from evaluators.forms import CudaGraphForm, OrtForm
from evaluators.measure import make_inputs, measure_inference
from evaluators.meters import make_meter
from evaluators.metrics import evaluate
from evaluators.tasks import load_task
from evaluators.train import build_for_task, train
from nas.compress.prune import two_four_mask
from nas.compress.sparse24 import TWO_FOUR_KERNELS, convert_two_four_
from nas.config import TrainConfig
from nas.errors import NASError
from nas.models import build

__all__ = ["served_forms", "kernels", "FORMS"]

FORMS = ("eager", "compiled", "cuda_graph", "onnxruntime")
#: The task the kernels part trains on (the default study's).
TASK = "builtin:longmatch"


def _form(c: Campaign, form: str, model: nn.Module, batch: int, folder: Path) -> tuple[Any, Any, str]:
    """``(callable, measure config, kernels label)`` of ``model`` served as ``form`` at ``batch``."""
    cfg = c.quick.model_copy(update={"batch_size": batch, "dtype": "bfloat16"})
    vocab = DRY_VOCAB if c.dry_run else VOCAB
    if form == "eager":
        return model, cfg, ""
    if form == "compiled":
        return model, cfg.model_copy(update={"serving_form": "compiled"}), ""
    ids, mask = make_inputs(batch, cfg.seq_len, vocab, device=c.device)
    if form == "cuda_graph":
        g = CudaGraphForm(model, ids, mask, dtype=torch.bfloat16)
        return g, cfg, g.kernels
    provider = "CUDAExecutionProvider" if c.device.startswith("cuda") else "CPUExecutionProvider"
    o = OrtForm(model, ids, mask, folder, provider)
    return o, cfg.model_copy(update={"dtype": "float32"}), o.kernels


def _why_not(c: Campaign, form: str, size: str) -> str | None:
    if form == "cuda_graph" and not c.device.startswith("cuda"):
        return "CUDA graphs need a CUDA device"
    if form == "compiled" and c.dry_run:
        return "dry run: torch.compile's inductor takes ~30 s per model on 2 CPU cores"
    if form == "onnxruntime" and c.dry_run and size != next(iter(c.sizes)):
        return "dry run: one ONNX export (the smallest model) tests the path"
    return None


def served_forms(c: Campaign) -> dict[str, Any]:
    """J/sample and latency of each served form, per model size and batch size."""
    rows, skipped = [], []
    meter = make_meter(c.meter, c.measure, device=c.device)
    with contextlib.closing(meter), tempfile.TemporaryDirectory() as tmp:
        for size, cand in c.sizes.items():
            torch.manual_seed(0)
            model = build(cand, vocab_size=DRY_VOCAB if c.dry_run else VOCAB, num_labels=2).to(c.device).eval()
            n_params = sum(p.numel() for p in model.parameters())
            for batch in c.batches:
                for form in FORMS:
                    if (why := _why_not(c, form, size)) is not None:
                        skipped.append({"what": f"{form} ({size}, batch {batch})", "why": why})
                        continue
                    try:
                        fn, cfg, kernels = _form(c, form, model, batch, Path(tmp) / f"{size}-{batch}")
                        inf = measure_inference(fn, cfg, vocab_size=DRY_VOCAB if c.dry_run else VOCAB,
                                                device=c.device, meter=meter, kernels=kernels)
                    except (NASError, RuntimeError) as e:
                        skipped.append({"what": f"{form} ({size}, batch {batch})",
                                        "why": f"{type(e).__name__}: {str(e).splitlines()[0]}"})
                        continue
                    rows.append({"size": size, "n_params": n_params, "form": form, **energy_row(inf)})
    return {"rows": rows, "skipped": skipped, "targets": [_speedup_target(c, rows)]}


def _speedup_target(c: Campaign, rows: list[dict[str, Any]]) -> dict[str, Any]:
    batch = 32 if 32 in c.batches else c.batches[0]
    at = {r["form"]: r["j_per_sample"] for r in rows if r["size"] == "0.5M" and r["batch_size"] == batch}
    eager = at.get("eager")
    best = min((v for f, v in at.items() if f in ("compiled", "cuda_graph") and v), default=None)
    gain = eager / best if eager and best else None
    return target(f"eager / best of compiled, CUDA graph J/sample (0.5M, batch {batch})", gain, ">= 2x",
                  lambda g: g >= 2.0, "the small model's launches are not the main cost at this batch")


def _bf16(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(torch.bfloat16).eval()


def _int8_weight_only(model: nn.Module) -> tuple[nn.Module, str]:
    import torchao
    from torchao.quantization import quantize_

    try:
        from torchao.quantization import Int8WeightOnlyConfig
        config: Any = Int8WeightOnlyConfig()
    except ImportError:  # older torchao
        from torchao.quantization import int8_weight_only
        config = int8_weight_only()
    m = _bf16(model)
    quantize_(m, config)
    return m, f"int8 weight-only, torchao {torchao.__version__}"


def _two_four(model: nn.Module, device: str) -> tuple[nn.Module, str]:
    m = _bf16(model)
    for mod in m.modules():
        if isinstance(mod, nn.Linear) and mod.weight.shape[0] % 64 == 0 and mod.weight.shape[1] % 64 == 0:
            mod.weight = nn.Parameter(mod.weight.detach() * two_four_mask(mod.weight.detach()), requires_grad=False)
    done, reason = convert_two_four_(m, device, "bfloat16")
    label = f"{TWO_FOUR_KERNELS}, {len(done)} Linear layers" if done else f"2:4 mask on dense kernels ({reason})"
    return m, f"{label}, one-shot magnitude mask, no fine-tuning"


def kernels(c: Campaign) -> dict[str, Any]:
    """bf16 dense against int8 weight-only and 2:4 sparse on the trained 20M model: J/sample, accuracy drift."""
    task = load_task(TASK, max_len=c.measure.seq_len)
    cand = c.sizes["20M"].model_copy(update={"max_len": task.max_len})
    torch.manual_seed(0)
    model = build_for_task(cand, task)
    train(model, task, TrainConfig(steps=c.train_steps, batch_size=32, lr=1e-3, device=c.device))
    cfg = c.quick.model_copy(update={"batch_size": max(c.batches), "dtype": "float32"})
    variants: list[tuple[str, Any]] = [("bf16 dense", lambda: (_bf16(model), "bf16 dense (torch eager)")),
                                       ("int8 weight-only", lambda: _int8_weight_only(model)),
                                       ("2:4 sparse", lambda: _two_four(model, c.device))]
    rows, skipped = [], []
    meter = make_meter(c.meter, c.measure, device=c.device)
    with contextlib.closing(meter):
        for name, make in variants:
            try:
                m, label = make()
                acc = evaluate(m, task, device=c.device).accuracy
                inf = measure_inference(m, cfg, vocab_size=task.vocab_size, device=c.device, meter=meter,
                                        kernels=label)
            except (ImportError, NASError, RuntimeError, NotImplementedError) as e:
                skipped.append({"what": name, "why": f"{type(e).__name__}: {str(e).splitlines()[0]}"})
                continue
            rows.append({"variant": name, "dev_accuracy": acc, **energy_row(inf)})
    base = rows[0] if rows and rows[0]["variant"] == "bf16 dense" else None
    for r in rows:
        if base is not None and base["j_per_sample"] and r["j_per_sample"]:
            r["j_vs_dense"] = r["j_per_sample"] / base["j_per_sample"]
            r["accuracy_drift"] = r["dev_accuracy"] - base["dev_accuracy"]
    return {"task": TASK, "train_steps": c.train_steps, "n_params": sum(p.numel() for p in model.parameters()),
            "rows": rows, "skipped": skipped}

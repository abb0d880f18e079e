"""A weight-sharing SuperTransformer: trained once over a space's shapes, then cut into candidates.

The manner of HAT (Wang et al., 2020), DynaBERT (Hou et al., 2020), AutoTinyBERT (Yin et al., 2021) and
BigNAS (Yu et al., 2020):

- **The supernet** (:func:`supernet_candidate`) is the space's largest shape: the most layers, the widest
  model, the most heads that divide it, the widest FFN; softmax attention, dense, uncompressed.
- **A sub-network** of a candidate (:func:`elastic`) is its shape alone (depth, width, heads and FFN width,
  per layer when the space draws them per layer, and its attention kind when that adds no parameters),
  dense and uncompressed. Its weights are the supernet's cut to its shape: the first ``n_layers`` blocks,
  and in every weight the leading rows and columns (:func:`sliced`). The cut is a view, so training a
  sub-network trains the supernet (:func:`torch.func.functional_call`).
- **Training** (:func:`train_supernet`) follows the sandwich rule: each step trains the largest
  sub-network, the smallest, and ``sandwich`` random ones drawn from the space, and sums their gradients.
  The largest learns from the labels, and from the teacher's logits when a teacher is given (KD); the
  others learn from the labels and from the largest's logits (in-place distillation).
- **Checkpoints** are written every ``checkpoint_every`` steps (weights, optimizer, step, the joules spent
  so far), atomically. A run that finds a checkpoint of the same key resumes from it, so a killed driver
  loses at most ``checkpoint_every`` steps, and the joules spent before the kill still count.
- **Cutting a candidate** (:func:`cut_`) copies the sliced weights into a freshly built model of the
  candidate. A low-rank layer gets the best fit of its rank to the sliced dense weight; parameters with no
  counterpart in the supernet (Linformer's E/F) stay as initialised, and the cut reports them. The trial
  then compresses, fine-tunes briefly, evaluates and measures the extracted sub-network as usual.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from evaluators.distill import kd_loss
from evaluators.train_loop import lr_multiplier
from evaluators.train_meter import TrainingMeter
from nas.config import Candidate
from nas.errors import ConfigError, TrialFailedError
from nas.models import EncoderClassifier, LowRankLinear, build
from nas.records import TrainSummary, sum_known
from search_spaces import SearchSpace, suggest

__all__ = ["SupernetConfig", "SupernetRun", "CutReport", "supernet_candidate", "elastic", "sliced", "cut_",
           "train_supernet", "load_supernet", "supernet_weights", "supernet_key", "CHECKPOINT", "FINAL"]

log = logging.getLogger(__name__)

#: File names inside a supernet's folder.
CHECKPOINT, FINAL = "checkpoint.pt", "supernet.pt"
#: Candidate fields a sub-network does not take from its candidate: compression and training choices.
_NOT_SHAPE = ("quant", "sparsity", "rank", "sharing", "distill")


@dataclass(frozen=True)
class SupernetConfig:
    """How a supernet is trained (``fidelity`` of a ``kind: supernet`` study, and ``train``)."""

    steps: int
    sandwich: int = 2
    checkpoint_every: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    kd_temperature: float = 2.0
    seed: int = 0


@dataclass(frozen=True)
class SupernetRun:
    """A trained supernet: where it is, its shape, and what training it cost (all runs, resumed ones too).

    ``resumed_from`` is the checkpoint step this run continued from (None: it started fresh, or the
    supernet was already trained and nothing ran).
    """

    path: str
    candidate: Candidate
    steps: int
    train: TrainSummary
    resumed_from: int | None = None


@dataclass(frozen=True)
class CutReport:
    """What :func:`cut_` copied: how many tensors, and the parameters left as initialised."""

    copied: int
    low_rank: int
    fresh: tuple[str, ...] = field(default_factory=tuple)


def _default(name: str) -> Any:
    return Candidate.model_fields[name].get_default(call_default_factory=True)


def supernet_candidate(space: SearchSpace) -> Candidate:
    """The space's largest shape, softmax, dense and uncompressed: the supernet every candidate is cut from."""
    d = max(space.d_model)
    heads = [h for h in space.n_heads if d % h == 0] or [1]
    return Candidate(n_layers=max(space.n_layers), d_model=d, n_heads=max(heads), d_ffn=d * max(space.ffn_ratio),
                     dropout=min(space.dropout), max_len=space.max_len,
                     pooling=space.pooling[0])  # type: ignore[arg-type]  # the space's values are validated


def elastic(candidate: Candidate, supernet: Candidate | None = None) -> Candidate:
    """``candidate``'s shape alone: dense, uncompressed, every layer kept, with ``supernet``'s layout.

    Raises:
        ConfigError: A dimension larger than the supernet's (the space and the supernet disagree).
    """
    data = candidate.model_dump()
    for name in _NOT_SHAPE:
        data[name] = _default(name)
    data.update(init="scratch", infer_layers=None, layerdrop=0.0)
    if supernet is not None:
        data.update(max_len=supernet.max_len, pooling=supernet.pooling, dropout=supernet.dropout)
        too_big = [f for f in ("n_layers", "d_model", "d_ffn") if data[f] > getattr(supernet, f)]
        if too_big:
            raise ConfigError(f"the candidate's {', '.join(too_big)} exceed(s) the supernet's",
                              field="fidelity.kind", value="supernet",
                              fix="the supernet is the space's largest shape; sample from the same space")
    return Candidate.model_validate(data)


def _fits(p: Tensor, src: Tensor | None) -> bool:
    return src is not None and src.dim() == p.dim() and all(a <= b for a, b in zip(p.shape, src.shape, strict=True))


def _cut(src: Tensor, shape: torch.Size) -> Tensor:
    return src[tuple(slice(0, s) for s in shape)]


def sliced(weights: Mapping[str, Tensor], sub: nn.Module) -> dict[str, Tensor]:
    """``sub``'s parameters as views of ``weights`` (the supernet's): each cut to its shape, leading part first.

    Raises:
        ConfigError: A parameter of ``sub`` the supernet does not have, or larger than the supernet's.
    """
    out: dict[str, Tensor] = {}
    for name, p in sub.named_parameters():
        src = weights.get(name)
        if not _fits(p, src):
            raise ConfigError(f"sub-network parameter {name} {tuple(p.shape)} has no counterpart in the supernet",
                              field="fidelity.kind", value="supernet",
                              fix="sample sub-networks of the supernet's own space")
        assert src is not None
        out[name] = _cut(src, p.shape)
    return out


def cut_(model: EncoderClassifier, weights: Mapping[str, Tensor]) -> CutReport:
    """Copy the supernet's ``weights``, cut to shape, into a freshly built ``model`` (see the module docstring)."""
    copied, low, done = 0, 0, set[str]()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LowRankLinear) and f"{name}.weight" in weights:
                w = _cut(weights[f"{name}.weight"], torch.Size((module.out_features, module.in_features)))
                b = weights.get(f"{name}.bias")
                module.load_dense_(w, _cut(b, torch.Size((module.out_features,))) if b is not None else None)
                done.update(f"{name}.{n}" for n, _ in module.named_parameters())
                low += 1
        fresh = []
        for name, p in model.named_parameters():
            if name in done:
                continue
            src = weights.get(name)
            if _fits(p, src):
                assert src is not None
                p.copy_(_cut(src, p.shape).to(p.device, p.dtype))
                copied += 1
            else:
                fresh.append(name)
    return CutReport(copied=copied, low_rank=low, fresh=tuple(fresh))


class _RandomTrial:
    """A trial that draws every choice at random (the sandwich rule's random sub-networks)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.rng.choice(list(choices))

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self.rng.uniform(low, high)


def _smallest(space: SearchSpace, supernet: Candidate) -> Candidate:
    d = min(space.d_model)
    heads = [h for h in space.n_heads if d % h == 0] or [1]
    return elastic(Candidate(n_layers=min(space.n_layers), d_model=d, n_heads=min(heads),
                             d_ffn=d * min(space.ffn_ratio), max_len=supernet.max_len), supernet)


class _Subnets:
    """The sub-networks of one supernet, built once per shape (their own weights are never used)."""

    def __init__(self, space: SearchSpace, supernet: EncoderClassifier, vocab: int, labels: int) -> None:
        self.space, self.supernet, self.vocab, self.labels = space, supernet, vocab, labels
        self.shape: Candidate = supernet.candidate  # type: ignore[assignment]
        self.names = {n for n, _ in supernet.named_parameters()}
        self._built: dict[str, nn.Module] = {}
        self.smallest = _smallest(space, self.shape)

    def module(self, cand: Candidate) -> nn.Module:
        key = cand.model_dump_json()
        if key not in self._built:
            with torch.random.fork_rng(devices=[]):
                m = build(cand, vocab_size=self.vocab, num_labels=self.labels)
            if not {n for n, _ in m.named_parameters()} <= self.names:  # an attention kind with its own weights
                m = build(cand.model_copy(update={"attention": _default("attention")}), vocab_size=self.vocab,
                          num_labels=self.labels)
            self._built[key] = m.to(next(self.supernet.parameters()).device).train()
        return self._built[key]

    def draw(self, rng: random.Random, n: int) -> list[Candidate]:
        """The largest, the smallest and ``n`` random shapes of the space."""
        randoms = [elastic(suggest(_RandomTrial(rng), self.space), self.shape) for _ in range(n)]
        return [self.shape, self.smallest, *randoms]

    def logits(self, cand: Candidate, ids: Tensor, mask: Tensor) -> Tensor:
        m = self.module(cand)
        params = sliced(dict(self.supernet.named_parameters()), m)
        out = functional_call(m, params, (ids,), {"attention_mask": mask})
        return cast(Tensor, out.logits.float())


def supernet_key(space: SearchSpace, task_source: str, cfg: SupernetConfig, teacher: str | None) -> str:
    """What a trained supernet depends on, hashed: a checkpoint of another key is not resumed."""
    blob = json.dumps({"space": space.model_dump(mode="json"), "task": task_source, "cfg": cfg.__dict__,
                       "teacher": teacher}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # atomic: a kill leaves the old checkpoint or the new one, never half of one


@dataclass
class _Spent:
    """Joules, CO2 and seconds of the runs before this one (from the checkpoint)."""

    energy_j: float | None = 0.0
    co2eq_g: float | None = 0.0
    wall_s: float = 0.0

    def plus(self, s: TrainSummary) -> _Spent:
        return _Spent(sum_known([self.energy_j, s.energy_j]), sum_known([self.co2eq_g, s.co2eq_g]),
                      self.wall_s + s.wall_s)


def load_supernet(path: str | Path) -> dict[str, Any]:
    """A trained supernet's file: ``key``, ``candidate`` (JSON), ``state`` (its weights), ``steps``, ``train``."""
    return cast("dict[str, Any]", torch.load(path, map_location="cpu", weights_only=False))  # our own artefact


@functools.lru_cache(maxsize=2)
def _weights(path: str, mtime_ns: int) -> dict[str, Tensor]:
    return cast("dict[str, Tensor]", load_supernet(path)["state"])


def supernet_weights(path: str | Path) -> dict[str, Tensor]:
    """A trained supernet's weights, read once per file version per process (every trial of a worker cuts)."""
    return _weights(str(path), os.stat(path).st_mtime_ns)


Teacher = Callable[[Tensor, Tensor], Tensor]
OnCheckpoint = Callable[[int, TrainSummary], None]


def _sandwich_step(subnets: _Subnets, task: Any, cfg: SupernetConfig, step: int, device: str,
                   teacher: Teacher | None) -> Tensor:
    """The summed loss of the step's sub-networks (its graph reaches the supernet's weights)."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # per step: a resumed run draws the same
    idx = torch.randint(task.train_ids.shape[0], (cfg.batch_size,), generator=g)
    ids, mask, y = task.train_ids[idx].to(device), task.train_mask[idx].to(device), task.train_y[idx].to(device)
    shapes = subnets.draw(random.Random(cfg.seed * 7_919 + step), cfg.sandwich)
    largest = subnets.logits(shapes[0], ids, mask)
    loss = F.cross_entropy(largest, y)
    if teacher is not None:
        with torch.no_grad():
            t_logits = teacher(ids, mask).float()
        loss = 0.5 * loss + 0.5 * kd_loss(largest, t_logits, cfg.kd_temperature)
    soft = largest.detach()
    for shape in shapes[1:]:  # in-place distillation from the largest (BigNAS), plus the labels
        logits = subnets.logits(shape, ids, mask)
        loss = loss + 0.5 * F.cross_entropy(logits, y) + 0.5 * kd_loss(logits, soft, 1.0)
    return loss


def _resume(folder: Path, key: str, net: nn.Module, opt: torch.optim.Optimizer, device: str) -> tuple[int, _Spent]:
    ck = folder / CHECKPOINT
    if not ck.is_file():
        return 0, _Spent()
    saved = torch.load(ck, map_location=device, weights_only=False)
    if saved.get("key") != key:
        log.info("supernet: the checkpoint in %s is of another configuration; training from the start", folder)
        return 0, _Spent()
    net.load_state_dict(saved["state"])
    opt.load_state_dict(saved["opt"])
    return int(saved["step"]), _Spent(**saved["spent"])


def _record(run_part: TrainSummary, spent: _Spent, steps: int) -> TrainSummary:
    """This run's summary with every run's joules, CO2 and seconds, and the steps done in all."""
    return dataclasses.replace(run_part, steps=steps, energy_j=spent.energy_j, co2eq_g=spent.co2eq_g,
                               wall_s=spent.wall_s)


def train_supernet(space: SearchSpace, task: Any, cfg: SupernetConfig, *, folder: str | Path, key: str,
                   meter: Any, device: str, teacher: Teacher | None = None,
                   on_checkpoint: OnCheckpoint | None = None,
                   progress: Callable[[int, int], None] | None = None) -> SupernetRun:
    """Train the space's supernet with the sandwich rule, resuming from a checkpoint of the same ``key``.

    Args:
        space: The search space (its largest shape is the supernet, its shapes the sub-networks).
        task: The :class:`evaluators.tasks.TaskData` (in the teacher's tokenizer when there is one).
        cfg: Steps, sandwich size, checkpoint interval and optimiser settings.
        folder: Where the checkpoint and the trained supernet are kept.
        key: :func:`supernet_key`: a file of another key is not used.
        meter: The energy meter (:class:`evaluators.meters.EnergyMeter`) the training is metered with.
        device: Where torch trains.
        teacher: ``(ids, mask) -> logits`` of the teacher, for the largest sub-network's distillation.
        on_checkpoint: Called after each checkpoint with the steps done and the cost so far (all runs).
        progress: Called after each step with ``(done, total)``.

    Raises:
        TrialFailedError: The loss became NaN or infinite (the last checkpoint stays).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / FINAL
    if final.is_file() and (saved := load_supernet(final)).get("key") == key:
        return SupernetRun(str(final), Candidate.model_validate_json(saved["candidate"]), int(saved["steps"]),
                           TrainSummary.from_dict(saved["train"]))
    shape = supernet_candidate(space)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build(shape, vocab_size=task.vocab_size, num_labels=task.num_labels).to(device).train()
    assert isinstance(net, EncoderClassifier)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, spent = _resume(folder, key, net, opt, device)
    if start:
        log.info("supernet: resuming from the checkpoint at step %d of %d", start, cfg.steps)
    subnets = _Subnets(space, net, task.vocab_size, task.num_labels)
    book = TrainingMeter(meter, device, batch_size=cfg.batch_size, seq_len=task.max_len, key="supernet")
    book.start()
    loss_v, t0 = float("nan"), time.time()
    try:
        for step in range(start, cfg.steps):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_multiplier(step / cfg.steps, cfg.warmup_fraction)
            loss = _sandwich_step(subnets, task, cfg, step, device, teacher)
            loss_v = float(loss.detach())
            if loss_v != loss_v or loss_v in (float("inf"), float("-inf")):
                raise TrialFailedError(f"the supernet's loss became {loss_v} at step {step + 1}", field="loss",
                                       fix="lower train.lr, or fidelity.sandwich")
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            done = step + 1
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                book.split()
                now = _Spent(book.energy_j, book.co2eq_g, book.wall_s)
                total = _Spent(sum_known([spent.energy_j, now.energy_j]), sum_known([spent.co2eq_g, now.co2eq_g]),
                               spent.wall_s + now.wall_s)
                _save({"key": key, "step": done, "state": net.state_dict(), "opt": opt.state_dict(),
                       "spent": total.__dict__}, folder / CHECKPOINT)
                if on_checkpoint is not None:
                    on_checkpoint(done, TrainSummary(steps=done, wall_s=total.wall_s, final_loss=loss_v,
                                                     energy_j=total.energy_j, meter=book.meter.name,
                                                     is_estimate=book.is_estimate, co2eq_g=total.co2eq_g,
                                                     device=device))
            if progress is not None:
                progress(done, cfg.steps)
    finally:
        book.stop()
    summary = _record(book.summary(steps=cfg.steps - start, final_loss=loss_v), spent.plus(
        TrainSummary(steps=0, wall_s=book.wall_s, final_loss=loss_v, energy_j=book.energy_j, meter=book.meter.name,
                     is_estimate=book.is_estimate, co2eq_g=book.co2eq_g)), cfg.steps)
    _save({"key": key, "candidate": shape.model_dump_json(), "state": {k: v.cpu() for k, v in net.state_dict().items()},
           "steps": cfg.steps, "train": summary.to_dict()}, final)
    log.info("supernet: %d steps (%d in this run, %.0f s), loss %.4f", cfg.steps, cfg.steps - start,
             time.time() - t0, loss_v)
    return SupernetRun(str(final), shape, cfg.steps, summary, resumed_from=start or None)

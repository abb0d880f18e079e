"""Distillation losses: logits (Hinton et al., 2015), hidden states and attention maps (TinyBERT).

Kinds are cumulative (:class:`nas.config.DistillConfig`): ``logit`` uses the logit term, ``hidden`` adds
the hidden-state term, ``attention`` adds the attention-map term too. The total is::

    alpha * KD + (1 - alpha) * CE + hidden_weight * HID + attention_weight * ATT

- **KD**: ``KL(softmax(t / T) || softmax(s / T)) * T**2`` per example (batch mean); the ``T**2`` keeps
  its gradient scale independent of the temperature.
- **HID**: mean squared error between student block outputs and the mapped teacher block outputs over
  real (non-padding) tokens. Student layer ``i`` (0-based, ``i < L_s``) is matched to teacher layer
  ``round((i + 1) * L_t / L_s)`` (``hidden_states[i + 1]`` against the teacher's
  ``hidden_states[j]``), so the last student layer always meets the last teacher layer. When widths
  differ, a learned ``nn.Linear(d_student, d_teacher)`` per student layer projects the student side
  (identity when widths match); its parameters are trained with the student (see :meth:`DistillLoss.parameters`).
- **ATT**: ``KL(teacher || student)`` between attention probabilities of the mapped layers, averaged over
  real query rows. With equal head counts heads are matched one to one; otherwise both sides are
  averaged over heads first (a head-averaged map is still a distribution per row). A layer whose map is
  ``None`` on either side (linear or low-rank attention, which form no T x T map) is skipped; when every
  mapped layer is skipped the term is 0 and a warning is logged once.

Teacher and student must see the same token ids: the student has to use the teacher's tokenizer
(:meth:`evaluators.teacher.Teacher.adapt_task`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.config import DistillConfig

__all__ = ["DistillLoss", "DistillTerms", "layer_map", "kd_loss", "hidden_mse", "attention_kl"]

log = logging.getLogger(__name__)

_EPS = 1e-8


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (1-based block index) for each student block ``i``: ``round((i + 1) * L_t / L_s)``.

    Halves round up, so the mapping is monotone and ends at ``L_t``.
    """
    return [max(1, min(teacher_layers, int(math.floor((i + 1) * teacher_layers / student_layers + 0.5))))
            for i in range(student_layers)]


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD: ``KL(softmax(t/T) || softmax(s/T)) * T^2``, averaged over the batch."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    p_t = F.softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * (t * t)


def hidden_mse(student: Tensor, teacher: Tensor, mask: Tensor | None) -> Tensor:
    """MSE over real tokens between (B, T, d) tensors of the same width."""
    diff = (student.float() - teacher.float()).pow(2).mean(dim=-1)  # (B, T)
    if mask is None:
        return diff.mean()
    m = mask.to(diff.dtype)
    return (diff * m).sum() / m.sum().clamp(min=1.0)


def attention_kl(student: Tensor, teacher: Tensor, mask: Tensor | None) -> Tensor:
    """``KL(teacher || student)`` between attention maps (B, h, T, T), or (B, T, T) after head averaging.

    Rows are query positions; only real query rows count. Maps of different head counts must be
    averaged over heads by the caller.
    """
    s = student.float()
    t = teacher.float()
    kl = (t * (torch.log(t.clamp(min=_EPS)) - torch.log(s.clamp(min=_EPS)))).sum(dim=-1)  # (B, [h,] T)
    if kl.dim() == 3:  # (B, h, T): average heads first
        kl = kl.mean(dim=1)
    if mask is None:
        return kl.mean()
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp(min=1.0)


@dataclass(frozen=True)
class DistillTerms:
    """One step's loss and its parts (detached floats are for logs; ``total`` carries the graph)."""

    total: Tensor
    ce: float
    kd: float
    hidden: float
    attention: float


class DistillLoss(nn.Module):
    """The combined distillation loss, holding the learned hidden-state projections.

    Args:
        cfg: Which terms to use and their weights.
        student_layers: ``L_s``.
        student_width: Student ``d_model``.
        teacher_layers: ``L_t``.
        teacher_width: Teacher hidden size.
    """

    def __init__(self, cfg: DistillConfig, student_layers: int, student_width: int, teacher_layers: int,
                 teacher_width: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.mapping = layer_map(student_layers, teacher_layers)
        self.proj = nn.ModuleList()
        if cfg.uses_hidden and student_width != teacher_width:
            self.proj = nn.ModuleList(nn.Linear(student_width, teacher_width) for _ in range(student_layers))
        self._warned_no_maps = False

    @property
    def needs_hidden(self) -> bool:
        """Whether the student and teacher must return hidden states for this loss."""
        return self.cfg.uses_hidden

    @property
    def needs_attention(self) -> bool:
        """Whether the student and teacher must return attention maps for this loss."""
        return self.cfg.uses_attention

    def forward(self, student_out: Any, teacher_out: Any, labels: Tensor,
                attention_mask: Tensor | None = None) -> DistillTerms:
        """Combine the terms for one batch.

        Args:
            student_out: Student output with ``logits`` and, as needed, ``hidden_states``/``attentions``.
            teacher_out: Teacher output of the same form (computed without gradients).
            labels: (B,) class ids.
            attention_mask: (B, T), 1 = real token.
        """
        cfg = self.cfg
        ce = F.cross_entropy(student_out.logits.float(), labels)
        total = ce
        kd_v = hid_v = att_v = 0.0
        if cfg.uses_logits:
            kd = kd_loss(student_out.logits, teacher_out.logits.detach(), cfg.temperature)
            total = cfg.alpha * kd + (1.0 - cfg.alpha) * ce
            kd_v = float(kd.detach())
        if cfg.uses_hidden:
            hid = self._hidden(student_out.hidden_states, teacher_out.hidden_states, attention_mask)
            total = total + cfg.hidden_weight * hid
            hid_v = float(hid.detach())
        if cfg.uses_attention:
            att = self._attention(student_out.attentions, teacher_out.attentions, attention_mask)
            total = total + cfg.attention_weight * att
            att_v = float(att.detach())
        return DistillTerms(total=total, ce=float(ce.detach()), kd=kd_v, hidden=hid_v, attention=att_v)

    def _hidden(self, s_hidden: Any, t_hidden: Any, mask: Tensor | None) -> Tensor:
        if s_hidden is None or t_hidden is None:
            raise ValueError("hidden-state distillation needs output_hidden_states from student and teacher")
        terms = []
        for i, j in enumerate(self.mapping):
            s = s_hidden[i + 1]
            if len(self.proj):
                s = self.proj[i](s.to(self.proj[i].weight.dtype))
            terms.append(hidden_mse(s, t_hidden[j].detach(), mask))
        return torch.stack(terms).mean()

    def _attention(self, s_maps: Any, t_maps: Any, mask: Tensor | None) -> Tensor:
        if s_maps is None or t_maps is None:
            raise ValueError("attention distillation needs output_attentions from student and teacher")
        terms = []
        for i, j in enumerate(self.mapping):
            s, t = s_maps[i], t_maps[j - 1]
            if s is None or t is None:
                continue
            t = t.detach()
            if s.shape[1] != t.shape[1]:
                s, t = s.mean(dim=1), t.mean(dim=1)  # (B, T, T)
            terms.append(attention_kl(s, t, mask))
        if not terms:
            if not self._warned_no_maps:
                log.warning("attention distillation skipped: no mapped layer has attention maps on both "
                            "sides (linear/low-rank attention); only logit and hidden terms are used")
                self._warned_no_maps = True
            ref = s_maps[0] if s_maps and s_maps[0] is not None else None
            return torch.zeros((), device=ref.device if ref is not None else None)
        return torch.stack(terms).mean()

"""Low-rank factorised Linear weights (``candidate.rank``), initialised by truncated SVD when inheriting.

``LowRankLinear(in, out, rank)`` computes ``up(down(x))``: ``down`` is ``Linear(in, rank, bias=False)`` and
``up`` is ``Linear(rank, out)``, so it stores ``rank * (in + out) + out`` parameters instead of
``in * out + out`` and does as many multiply-adds. Trained from scratch it trains both factors normally;
:meth:`LowRankLinear.load_dense_` sets them from a trained dense weight by truncated SVD (Eckart-Young: the
best rank-``r`` approximation in Frobenius norm), which is exact at full rank.

Compression sees the two factors as two ordinary ``nn.Linear`` layers (quantized and masked like any other).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nas.errors import ConfigError

__all__ = ["LowRankLinear", "Projection", "make_linear"]


class LowRankLinear(nn.Module):
    """``W ~= up.weight @ down.weight`` of rank ``rank``, plus ``up``'s bias.

    Args:
        in_features: Input width.
        out_features: Output width.
        rank: Inner width, ``1 <= rank``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.rank = int(rank)
        self.down = nn.Linear(self.in_features, self.rank, bias=False)
        self.up = nn.Linear(self.rank, self.out_features)

    def extra_repr(self) -> str:
        """``in_features, out_features, rank`` for ``print(model)``."""
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"

    @property
    def bias(self) -> Tensor:
        """The output bias (``up``'s)."""
        return self.up.bias

    @property
    def weight(self) -> Tensor:
        """The ``(out, in)`` matrix this layer applies: ``up.weight @ down.weight``.

        Computed and read-only: the parameters are the two factors.
        """
        return self.up.weight @ self.down.weight

    def forward(self, x: Tensor) -> Tensor:
        """``x @ W^T + b`` through the factors: (..., in) -> (..., out)."""
        y: Tensor = self.up(self.down(x))
        return y

    @torch.no_grad()
    def load_dense_(self, weight: Tensor, bias: Tensor | None = None) -> float:
        """Set the factors from a dense ``(out, in)`` weight by truncated SVD; returns the relative error.

        ``W = U S V^T`` gives ``up = U_r sqrt(S_r)`` and ``down = sqrt(S_r) V_r^T``, the factors split evenly
        so neither dominates the other's gradient scale.

        Returns:
            ``||W - up down||_F / ||W||_F`` (0 at full rank, up to float rounding).
        """
        w = weight.detach().float()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        r = min(self.rank, s.numel())
        root = s[:r].sqrt()
        up = torch.zeros(self.out_features, self.rank, device=w.device)
        down = torch.zeros(self.rank, self.in_features, device=w.device)
        up[:, :r] = u[:, :r] * root
        down[:r] = root[:, None] * vh[:r]
        self.up.weight.copy_(up.to(self.up.weight.dtype))
        self.down.weight.copy_(down.to(self.down.weight.dtype))
        if bias is not None and self.up.bias is not None:
            self.up.bias.copy_(bias.detach().to(self.up.bias.dtype))
        norm = float(w.norm())
        return float((w - up @ down).norm()) / norm if norm > 0 else 0.0


#: A projection of an attention or FFN: dense, or factorised (both have ``weight``, ``bias``, the widths).
Projection = nn.Linear | LowRankLinear


def make_linear(in_features: int, out_features: int, rank: int | None) -> Projection:
    """A dense ``nn.Linear`` (``rank`` None), or a :class:`LowRankLinear` of that rank."""
    if rank is None:
        return nn.Linear(in_features, out_features)
    if not 1 <= rank <= min(in_features, out_features):
        raise ConfigError(f"rank {rank} is outside [1, {min(in_features, out_features)}] for a {in_features} -> "
                          f"{out_features} Linear", field="rank", value=rank,
                          fix="use a rank ratio in (0, 1] (candidate.rank)")
    return LowRankLinear(in_features, out_features, rank)

"""Real 2:4 sparse kernels in trials where the device has them (#14 item 6); the CPU keeps the mask and its label."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import evaluators.serving as serving_mod
from evaluators.serving import serving_copy
from nas.compress import apply_candidate_compression
from nas.compress.prune import prune_label
from nas.compress.sparse24 import (
    TWO_FOUR_KERNELS,
    convert_two_four_,
    is_two_four,
    semi_structured_unavailable,
)
from nas.config import Candidate, PruneConfig
from nas.models import build

TWO_FOUR = Candidate(n_layers=1, d_model=64, n_heads=2, d_ffn=128, max_len=32,
                     sparsity=PruneConfig(kind="2:4", amount=0.5))


def _pruned() -> Any:
    torch.manual_seed(0)
    model = build(TWO_FOUR, vocab_size=50, num_labels=2)
    apply_candidate_compression(model)
    return model


class _Marked(torch.Tensor):
    """Stands in for a semi-structured tensor: a dense tensor that says it was converted."""


def _fake_sparse(w: torch.Tensor) -> torch.Tensor:
    return w.as_subclass(_Marked)


def test_the_cpu_has_no_2_4_kernel_and_says_so() -> None:
    assert "CPU" in (semi_structured_unavailable("cpu") or "")
    model = _pruned()
    copy, kernels = serving_copy(model, TWO_FOUR, "cpu")
    assert prune_label(TWO_FOUR.sparsity) in kernels and "no 2:4 sparse kernel used" in kernels
    assert not any(isinstance(m.weight, _Marked) for m in copy.modules() if isinstance(m, nn.Linear))


def test_is_two_four_reads_the_pattern() -> None:
    assert is_two_four(torch.tensor([[1.0, 0, 2, 0, 0, 0, 3, 4]]))
    assert not is_two_four(torch.tensor([[1.0, 2, 3, 0]]))
    assert not is_two_four(torch.tensor([[1.0, 0, 0]]))  # groups of 4 must tile the row


def test_only_the_masked_linears_are_converted_and_the_outputs_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _pruned()
    from nas.compress import materialize_

    materialize_(model)
    model.eval()
    ids = torch.randint(1, 50, (4, 32))
    with torch.no_grad():
        before = model(ids).logits
    done, reason = convert_two_four_(model, "cuda:0", "float32", to_sparse=_fake_sparse)
    assert reason is None
    assert sorted(done) == sorted(n for n, m in model.named_modules()
                                  if isinstance(m, nn.Linear) and isinstance(m.weight, _Marked))
    assert {"blocks.0.attn.q_proj", "blocks.0.ffn.fc1", "blocks.0.ffn.fc2"} <= set(done)
    assert "classifier" not in " ".join(done)  # the head is not masked, so it is not 2:4
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before)


def test_a_layer_the_kernel_refuses_stays_dense_and_is_named() -> None:
    model = _pruned()
    from nas.compress import materialize_

    materialize_(model)

    def refuse(w: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("sparse_min_rows 32 not met")

    done, reason = convert_two_four_(model, "cuda:0", to_sparse=refuse)
    assert done == [] and reason is not None and "sparse_min_rows" in reason
    assert all(type(m.weight) is nn.Parameter for m in model.modules() if isinstance(m, nn.Linear))


def test_on_a_capable_gpu_the_label_names_the_real_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving_mod, "convert_two_four_",
                        lambda m, d, t: convert_two_four_(m, d, t, to_sparse=_fake_sparse))
    _, kernels = serving_copy(_pruned(), TWO_FOUR, "cuda:0")
    assert TWO_FOUR_KERNELS in kernels and "no 2:4 sparse kernel used" not in kernels
    assert "simulated" not in kernels  # nothing else is simulated: the 2:4 saving is real
    monkeypatch.setattr(serving_mod, "convert_two_four_", lambda m, d, t: ([], "sm75; needs sm80"))
    _, kernels = serving_copy(_pruned(), TWO_FOUR, "cuda:0")
    assert "2:4 kernels not used: sm75; needs sm80" in kernels and "simulated" in kernels


@pytest.mark.gpu
@pytest.mark.skipif(semi_structured_unavailable("cuda:0") is not None, reason="needs a CUDA GPU of sm80 or newer")
def test_real_2_4_kernels_run_the_trained_mask_on_a_gpu() -> None:
    model = _pruned().cuda()
    copy, kernels = serving_copy(model, TWO_FOUR, "cuda:0", "bfloat16")
    assert TWO_FOUR_KERNELS in kernels, kernels
    ids = torch.randint(1, 50, (8, 32), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        got = copy(ids).logits.float()
        want = model.eval()(ids).logits.float()
    assert torch.allclose(got, want, atol=0.05)

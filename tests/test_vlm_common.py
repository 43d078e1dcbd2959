"""Shared adapter plumbing (rls3.vlm.common): realigning weights transformers left unaligned (a
loaded checkpoint computing exactly what the saved model computed is in test_vlm_contract)."""

from __future__ import annotations

import torch

from rls3.vlm.common import ALIGNMENT, aligned


def test_aligned_moves_only_unaligned_tensors():
    m = torch.nn.Linear(4, 3)
    raw = torch.zeros(13)
    m.weight.data = raw[1:13].view(3, 4)          # 4 bytes past an aligned start
    kept = m.bias.data_ptr()
    aligned(m)
    assert m.weight.data_ptr() % ALIGNMENT == 0 and m.bias.data_ptr() == kept
    assert torch.equal(m.weight, raw[1:13].view(3, 4))

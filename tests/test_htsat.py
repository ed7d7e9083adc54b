"""HTSAT's window attention, beyond the parity that the reference fixtures check."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pengi_search.htsat import WindowAttention

_SDPA = F.scaled_dot_product_attention


def _transposed_layout_sdpa(*args, **kwargs):
    """SDPA whose result holds the heads in (batch, tokens, heads, dim) memory order, as CUDA's fused kernels
    return it in training: same values, not contiguous."""
    out = _SDPA(*args, **kwargs)
    return out.transpose(1, 2).contiguous().transpose(1, 2)


def test_shifted_window_attention_accepts_the_memory_layout_of_cuda_kernels(monkeypatch):
    torch.manual_seed(0)
    attention = WindowAttention(dim=16, window=4, num_heads=2)
    x = torch.randn(2 * 3, 16, 16)  # 2 clips x 3 windows of 4 x 4 positions, 16 channels
    mask = torch.zeros(3, 16, 16)
    mask[1, :8, 8:] = -100.0  # one shifted window whose two halves must not see each other
    expected = attention(x, mask)

    monkeypatch.setattr(F, "scaled_dot_product_attention", _transposed_layout_sdpa)
    assert torch.equal(attention(x, mask), expected)

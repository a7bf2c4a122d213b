"""Cheaper dropout for training on the CPU (trainer.fast_dropout).

On a CPU, dropout is a large share of a BERT training step (measured in benchmarks/RESULTS.md):
torch draws a 32-bit float per element for the mask, and SDPA's CPU kernel has no
dropout, so attention dropout sends it to its math path, slower than plain eager attention. Here a
mask element costs 16 random bits (four from each 64-bit draw), and attention runs eagerly with
that mask. The keep probability is p rounded to 1/65536; the generator is torch's default one, so
seeding and resuming work as before.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

ATTENTION = "afqmc_fast_dropout"


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    keep = bits.view(torch.int16)[:n].view(x.shape) >= round(p * 65536) - 32768  # uniform over int16
    return x * keep.to(x.dtype).mul_(1 / (1 - p))


class FastDropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p) if self.training and self.p > 0 else x


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention with fast_dropout on the attention probabilities."""
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.size(-1) ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:  # additive: 0 for tokens, the dtype's minimum for padding
        scores = scores + attention_mask
    probs = scores.softmax(dim=-1)
    if dropout > 0:
        probs = fast_dropout(probs, dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, attention)
AttentionMaskInterface.register(ATTENTION, eager_mask)  # unregistered, transformers would pass no mask at all


def use_fast_dropout(model: nn.Module) -> bool:
    """Swap in FastDropout and the attention above, in place; False (and the model left as it was) when its
    attention is not transformers' pluggable kind. Not saved: a checkpoint reloads with transformers'
    defaults, and evaluation (no dropout) is unchanged."""
    # the outermost transformers model whose attention is pluggable: the model itself, or the encoder inside a
    # plain nn.Module or afqmc's EncoderForPairwiseCLS (DeBERTa-v2's attention is its own: none)
    outer = next((m for m in model.modules() if getattr(m, "_supports_attention_backend", False)), None)
    if outer is None or not hasattr(outer, "set_attn_implementation"):
        return False
    try:
        outer.set_attn_implementation(ATTENTION)
    except (ValueError, ImportError, NotImplementedError):
        return False
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
    return True

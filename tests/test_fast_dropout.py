"""trainer.fast_dropout: the same dropout as torch's (rate, scale, padding masked), and a checkpoint that
reloads as usual."""

import torch

from afqmc.models.fast_dropout import fast_dropout, use_fast_dropout
from afqmc.models.modeling import BertForPairwiseCLS

from .test_model import BATCH


def test_drops_at_rate_p_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    for p in (0.1, 0.5):
        y = fast_dropout(x, p)
        assert abs((y == 0).float().mean().item() - p) < 0.002
        assert set(y.unique().tolist()) == {0.0, torch.tensor(1 / (1 - p)).item()}
    torch.manual_seed(1)
    a = fast_dropout(x, 0.1)
    torch.manual_seed(1)
    assert torch.equal(a, fast_dropout(x, 0.1))  # seeded by torch's default generator


def test_same_model_in_eval_and_padding_masked_in_training(tiny_bert_dir, tmp_path):
    stock = BertForPairwiseCLS.from_pretrained(tiny_bert_dir).eval()
    fast = BertForPairwiseCLS.from_pretrained(tiny_bert_dir).eval()
    use_fast_dropout(fast)
    assert torch.allclose(fast(**BATCH).logits, stock(**BATCH).logits, atol=1e-6)

    # Training: a padding token must not change the padded pair's output (no mask would let it).
    fast.train()
    padded = {k: v[1:] for k, v in BATCH.items()}
    other_pad = {**padded, "input_ids": padded["input_ids"].clone()}
    other_pad["input_ids"][0, -1] = 7
    torch.manual_seed(0)
    a = fast(**padded).logits
    torch.manual_seed(0)
    assert torch.allclose(a, fast(**other_pad).logits, atol=1e-6)
    torch.manual_seed(1)
    assert not torch.allclose(a, fast(**padded).logits)  # dropout is on

    fast.save_pretrained(tmp_path / "ckpt")  # the swap is not saved: a plain checkpoint
    assert (
        BertForPairwiseCLS.from_pretrained(tmp_path / "ckpt").config._attn_implementation
        == stock.config._attn_implementation
    )


def test_a_model_without_transformers_attention_keeps_plain_dropout():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1))
    assert use_fast_dropout(model) is False
    assert type(model[1]) is torch.nn.Dropout  # left as it was: it trains with plain dropout

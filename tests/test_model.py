"""BertForPairwiseCLS: head sized from the config, pooling, save/load round trip, loading errors."""

import pytest
import torch
from omegaconf import OmegaConf

from afqmc.errors import ModelLoadError
from afqmc.models.components import build_pair_cls as build_model
from afqmc.models.modeling import BertForPairwiseCLS

BATCH = {
    "input_ids": torch.tensor([[2, 5, 6, 3, 7, 3], [2, 5, 3, 8, 3, 0]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]),
    "token_type_ids": torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0]]),
}


def model_cfg(checkpoint, **kw):
    return OmegaConf.create(
        {
            "name": "bert_pair_cls",
            "checkpoint": str(checkpoint),
            "pretrained": True,
            "pooling": "cls",
            "dropout": None,
            "do_lower_case": True,
            "trust_remote_code": False,
            **kw,
        }
    )


def test_head_follows_config_and_round_trips(tiny_bert_dir, tmp_path):
    model, tok = build_model(model_cfg(tiny_bert_dir), ["0", "1"])
    assert model.classifier.in_features == 48 and model.classifier.out_features == 2
    model.eval()
    out = model(**BATCH, labels=torch.tensor([1, 0]))
    assert out.logits.shape == (2, 2) and out.loss.ndim == 0
    model.save_pretrained(tmp_path / "ckpt")
    again = BertForPairwiseCLS.from_pretrained(tmp_path / "ckpt").eval()
    assert torch.equal(again(**BATCH).logits, out.logits)
    assert again.config.id2label == {0: "0", 1: "1"}


def test_pretrained_encoder_weights_load(tiny_bert_dir):
    saved = BertForPairwiseCLS.from_pretrained(tiny_bert_dir)
    loaded, _ = build_model(model_cfg(tiny_bert_dir), ["0", "1"])
    random, _ = build_model(model_cfg(tiny_bert_dir, pretrained=False), ["0", "1"])
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(loaded.state_dict()[key], saved.state_dict()[key])
    assert not torch.equal(random.state_dict()[key], saved.state_dict()[key])


def test_mean_pooling_ignores_padding(tiny_bert_dir, tmp_path):
    model, _ = build_model(model_cfg(tiny_bert_dir, pooling="mean"), ["0", "1"])
    model.eval()
    short = {k: v[1:, :5] for k, v in BATCH.items()}  # the second pair without its padding column
    assert torch.allclose(model(**{k: v[1:] for k, v in BATCH.items()}).logits, model(**short).logits, atol=1e-5)
    model.save_pretrained(tmp_path / "m")
    assert BertForPairwiseCLS.from_pretrained(tmp_path / "m").pooling == "mean"


def test_offline_hub_name_fails_fast_and_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ModelLoadError, match=r"model.checkpoint='no-such/model-xyz' .*hub cannot be reached.*local directory"
    ):
        build_model(model_cfg("no-such/model-xyz"), ["0", "1"])

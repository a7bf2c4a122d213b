"""BertForPairwiseCLS: a BERT encoder, a pooled pair vector, dropout and a linear head."""
from __future__ import annotations

import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoTokenizer, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .errors import ConfigError, ModelLoadError
from .registry import MODELS

log = logging.getLogger(__name__)
POOLINGS = ("cls", "mean")


class BertForPairwiseCLS(BertPreTrainedModel):
    """Built on BertPreTrainedModel so save_pretrained / from_pretrained work and a plain BERT
    checkpoint's encoder weights load into `bert.*` (only the head starts random).

    The pooling ("cls" or "mean") and the label names live in the model config, so a saved
    checkpoint reloads as the same model.
    """

    def __init__(self, config):
        super().__init__(config)
        self.pooling = getattr(config, "pooling", "cls")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"model.pooling={self.pooling!r}; allowed: {', '.join(POOLINGS)}")
        self.bert = BertModel(config, add_pooling_layer=False)  # the pooler is unused: no random weights
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None) -> SequenceClassifierOutput:
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:  # mean over real tokens: padding must not dilute short pairs
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        logits = self.classifier(self.dropout(pooled))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _resolve(checkpoint: str) -> dict:
    """from_pretrained kwargs for a checkpoint: a local directory, a cached hub name, or a reachable hub.

    Without this, an offline hub name spends ~25 s in download retries before a generic error.
    """
    if Path(checkpoint).is_dir():
        return {}
    try:
        AutoConfig.from_pretrained(checkpoint, local_files_only=True)
        return {"local_files_only": True}  # in the Hugging Face cache: no network needed
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise ModelLoadError(
            f"model.checkpoint={checkpoint!r} is not a local directory, is not in the Hugging Face cache, and the "
            "hub cannot be reached (offline?). Pass model.checkpoint=/path/to/dir, a local directory holding "
            "config.json, the weights and the tokenizer files."
        )
    return {}


def load_tokenizer(checkpoint: str, do_lower_case: bool | None = None, **kwargs):
    if do_lower_case is not None:
        kwargs["do_lower_case"] = do_lower_case  # tokenizers without the option ignore it
    return AutoTokenizer.from_pretrained(checkpoint, **kwargs)


@MODELS.register("bert_pair_cls")
def build_model(cfg, label_names: list[str]):
    """(model, tokenizer) from the `model` group; label_names[i] is the raw label of class i."""
    where = _resolve(cfg.checkpoint)
    try:
        config = AutoConfig.from_pretrained(
            cfg.checkpoint,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            classifier_dropout=cfg.dropout,
            **where,
        )
        config.pooling = cfg.pooling  # set after loading: from_pretrained drops keys BertConfig lacks
        if config.model_type != "bert":
            raise ConfigError(f"model.checkpoint={cfg.checkpoint!r} is a {config.model_type!r} model; model.name=bert_pair_cls needs a BERT encoder")
        if cfg.pretrained:
            model = BertForPairwiseCLS.from_pretrained(cfg.checkpoint, config=config, **where)
        else:
            model = BertForPairwiseCLS(config)
        tokenizer = load_tokenizer(cfg.checkpoint, cfg.do_lower_case, **where)
    except OSError as e:
        raise ModelLoadError(f"model.checkpoint={cfg.checkpoint!r} could not be loaded: {e}") from None
    log.info("model: %s (%s, %.1fM parameters, %s pooling)", cfg.checkpoint,
             "pretrained" if cfg.pretrained else "random init", sum(p.numel() for p in model.parameters()) / 1e6, cfg.pooling)
    return model, tokenizer

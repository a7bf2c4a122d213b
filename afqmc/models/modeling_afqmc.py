"""afqmc's sentence-pair classifiers for [CLS] and mean pooling, as self-contained transformers models:
BertForPairwiseCLS over a BERT encoder (model type afqmc_bert), EncoderForPairwiseCLS over any encoder
AutoModel builds (model type afqmc_encoder: RoBERTa, ELECTRA, DeBERTa-v2, ModernBERT, a decoder's mean...).

This file imports torch and transformers only: afqmc copies it into every checkpoint of such a model,
and config.json's `auto_map` names it, so that anyone can load the checkpoint without afqmc:

    AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)

Their model types are ones transformers does not know, so that a plain load without
trust_remote_code fails: with a built-in model type (bert), transformers would build its own
BertForSequenceClassification from the weights, with a random pooler, and say nothing but a warning.
afqmc itself loads these checkpoints with the copy of this file it is installed with, never the
one beside the weights.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    BertConfig,
    BertModel,
    BertPreTrainedModel,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "afqmc_bert"
POOLINGS = ("cls", "mean")
AUTO_MAP = {  # config.json's pointers to the classes below, in the copy of this file beside the weights
    "AutoConfig": "modeling_afqmc.AfqmcBertConfig",
    "AutoModelForSequenceClassification": "modeling_afqmc.BertForPairwiseCLS",
}
ENCODER_TYPE = "afqmc_encoder"
ENCODER_AUTO_MAP = {
    "AutoConfig": "modeling_afqmc.AfqmcEncoderConfig",
    "AutoModelForSequenceClassification": "modeling_afqmc.EncoderForPairwiseCLS",
}
DEFAULT_DROPOUT = 0.1  # the head's dropout for an encoder whose config has no hidden_dropout_prob (BERT's value)


class AfqmcBertConfig(BertConfig):
    """A BertConfig with the pooling, under a model type of its own."""

    model_type = MODEL_TYPE

    def __init__(self, pooling: str = "cls", **kwargs):
        super().__init__(**kwargs)
        self.pooling = pooling
        self.auto_map = AUTO_MAP


def pool(hidden, attention_mask, pooling: str):
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # mean over real tokens: padding must not dilute short pairs
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def classify(logits, labels) -> SequenceClassifierOutput:
    loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
    return SequenceClassifierOutput(loss=loss, logits=logits)


def head_dropout(config) -> nn.Dropout:
    return nn.Dropout(config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout)


class BertForPairwiseCLS(BertPreTrainedModel):
    """A BERT encoder, its [CLS] vector or the mean of its token vectors, dropout, a linear head.

    The pooling and the label names live in the config, so a saved checkpoint reloads as the same model.
    """

    config_class = AfqmcBertConfig

    def __init__(self, config):
        super().__init__(config)
        self.pooling = getattr(config, "pooling", "cls")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}; allowed: {', '.join(POOLINGS)}")
        self.bert = BertModel(config, add_pooling_layer=False)  # the pooler is unused: no random weights
        self.dropout = head_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None) -> SequenceClassifierOutput:
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return classify(self.classifier(self.dropout(pool(hidden, attention_mask, self.pooling))), labels)


class AfqmcEncoderConfig(PretrainedConfig):
    """The pooling, the head's dropout and labels, and the encoder's own config.json values (model_type included)."""

    model_type = ENCODER_TYPE

    def __init__(self, encoder: dict | None = None, pooling: str = "cls", classifier_dropout=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = dict(encoder or {})
        self.pooling = pooling
        self.classifier_dropout = classifier_dropout
        self.auto_map = ENCODER_AUTO_MAP

    def encoder_config(self) -> PretrainedConfig:
        values = dict(self.encoder)
        return AutoConfig.for_model(values.pop("model_type"), **values)


class EncoderForPairwiseCLS(PreTrainedModel):
    """Any encoder AutoModel builds, its first token's vector or the mean of its token vectors, dropout, a linear
    head. The encoder's pooler, where it has one, is dropped: nothing reads it, and DDP wants no unused weights."""

    config_class = AfqmcEncoderConfig
    base_model_prefix = "encoder"

    def __init__(self, config):
        super().__init__(config)
        self.pooling = config.pooling
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}; allowed: {', '.join(POOLINGS)}")
        encoder = config.encoder_config()
        self.set_encoder(AutoModel.from_config(encoder))
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(
            getattr(encoder, "hidden_dropout_prob", DEFAULT_DROPOUT) if dropout is None else dropout
        )
        self.classifier = nn.Linear(encoder.hidden_size, config.num_labels)
        self.post_init()

    def set_encoder(self, encoder) -> None:
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None
        self.encoder = encoder

    def _init_weights(self, module):
        if module is getattr(self, "classifier", None):  # the encoder's modules keep their own initialisation
            module.weight.data.normal_(0.0, getattr(self.config.encoder_config(), "initializer_range", 0.02))
            module.bias.data.zero_()

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None) -> SequenceClassifierOutput:
        segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}  # (ModernBERT takes none)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **segments).last_hidden_state
        return classify(self.classifier(self.dropout(pool(hidden, attention_mask, self.pooling))), labels)

"""afqmc's sentence-pair classifier for [CLS] and mean pooling, as a self-contained transformers model.

This file imports torch and transformers only: afqmc copies it into every checkpoint of such a model,
and config.json's `auto_map` names it, so that anyone can load the checkpoint without afqmc:

    AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)

Its model type, afqmc_bert, is one transformers does not know, so that a plain load without
trust_remote_code fails: with a built-in model type (bert), transformers would build its own
BertForSequenceClassification from the weights, with a random pooler, and say nothing but a warning.
afqmc itself loads these checkpoints with the copy of this file it is installed with, never the
one beside the weights.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "afqmc_bert"
POOLINGS = ("cls", "mean")
AUTO_MAP = {  # config.json's pointers to the classes below, in the copy of this file beside the weights
    "AutoConfig": "modeling_afqmc.AfqmcBertConfig",
    "AutoModelForSequenceClassification": "modeling_afqmc.BertForPairwiseCLS",
}


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

"""The classifiers model.py registers: a BERT encoder, a pooled vector, dropout and a linear head.

BertForPairwiseCLS is a transformers model (BertPreTrainedModel): save_pretrained/from_pretrained,
and a plain BERT checkpoint's encoder weights load into `bert.*`. BertPairModule is the seed design's
plain torch.nn.Module around a BertModel, saved and loaded by hand (model.py).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .errors import ConfigError
from .model import POOLINGS


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
    """The pooling ("cls" or "mean") and the label names live in the model config, so a saved
    checkpoint reloads as the same model."""

    def __init__(self, config):
        super().__init__(config)
        self.pooling = getattr(config, "pooling", "cls")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"model.pooling={self.pooling!r}; allowed: {', '.join(POOLINGS)}")
        self.bert = BertModel(config, add_pooling_layer=False)  # the pooler is unused: no random weights
        self.dropout = head_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None) -> SequenceClassifierOutput:
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return classify(self.classifier(self.dropout(pool(hidden, attention_mask, self.pooling))), labels)


class BertPairModule(nn.Module):
    """The seed design: a BertModel inside a plain nn.Module, [CLS] vector -> dropout -> linear head."""

    def __init__(self, config, bert: BertModel | None = None):
        super().__init__()
        self.config = config  # the encoder's config, with num_labels, id2label and classifier_dropout
        self.bert = bert if bert is not None else BertModel(config, add_pooling_layer=False)
        self.dropout = head_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.classifier.weight.data.normal_(0.0, config.initializer_range)  # BERT's initialisation of a head
        self.classifier.bias.data.zero_()

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None) -> SequenceClassifierOutput:
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return classify(self.classifier(self.dropout(hidden[:, 0])), labels)

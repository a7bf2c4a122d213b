"""The classifiers model.py registers, and what their checkpoints hold, so that a checkpoint loads right
in afqmc and in transformers alike, or not at all:

- model.pooling=auto (or its old name, pooler): the architecture's own head, what
  AutoModelForSequenceClassification builds for the checkpoint (BERT's pooler over [CLS]; RoBERTa's dense
  head over <s>; a decoder's score of its last real token). Its checkpoints are plain transformers ones.
- model.pooling=cls or mean: BertForPairwiseCLS over BERT, EncoderForPairwiseCLS over any other encoder
  AutoModel builds, defined in modeling_afqmc.py, which goes beside the weights (config.json's auto_map
  names it) and runs in transformers only with trust_remote_code=True.
- BertPairModule, a plain torch.nn.Module: its computation and weight names are BertForPairwiseCLS's with
  [CLS] pooling, so its checkpoints are written as that model's and load in transformers the same way.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, BertModel
from transformers.modeling_outputs import SequenceClassifierOutput

from afqmc.errors import ConfigError, ModelLoadError
from afqmc.models import modeling_afqmc
from afqmc.models.modeling_afqmc import (
    ENCODER_TYPE,
    MODEL_TYPE,
    AfqmcBertConfig,
    AfqmcEncoderConfig,
    BertForPairwiseCLS,
    EncoderForPairwiseCLS,
    classify,
    head_dropout,
)

log = logging.getLogger(__name__)
MODELING_FILE = Path(modeling_afqmc.__file__).name
WEIGHTS = "model.safetensors"  # tensors only: loading them runs no code
OWN_HEAD = ("auto", "pooler")  # the model.pooling values that mean the architecture's own head
# the head's dropout, as each family's config names it (BERT, RoBERTa, ELECTRA, ERNIE, ModernBERT: the first)
HEAD_DROPOUTS = ("classifier_dropout", "classifier_dropout_prob", "cls_dropout", "pooler_dropout")


def afqmc_config(values: dict, pooling: str) -> AfqmcBertConfig:
    """BertForPairwiseCLS's config from a BERT config's values (with the head's labels and dropout)."""
    return AfqmcBertConfig.from_dict({**_bert_values(values), "pooling": pooling})


def _bert_values(values: dict) -> dict:
    """A config's values but what names its class: a config read from an afqmc_bert checkpoint may become a
    plain BERT one (pooling=pooler), and the other way round."""
    return {k: v for k, v in values.items() if k not in ("model_type", "auto_map")}


def build_classifier(config, pooling: str, checkpoint: str | None = None, dropout: float | None = None, **where):
    """model.pooling's classifier for a checkpoint's `config` (labels set), with the weights of `checkpoint`
    (None: at random); `dropout`: the head's (None: the checkpoint's)."""
    bert = config.model_type in ("bert", MODEL_TYPE)
    if pooling in OWN_HEAD:  # pooling: read back by load_classifier; transformers ignores it
        if bert:  # (an afqmc_bert checkpoint as the base: its BERT config)
            config = BertConfig.from_dict(_bert_values(config.to_dict()))
        config.pooling = pooling
        set_head_dropout(config, dropout)
        cls = AutoModelForSequenceClassification
    elif bert:
        config, cls = afqmc_config({**config.to_dict(), "classifier_dropout": dropout}, pooling), BertForPairwiseCLS
    else:
        return _pooled_encoder(config, pooling, checkpoint, dropout, **where)
    if checkpoint is None:
        return cls.from_config(config) if cls is AutoModelForSequenceClassification else cls(config)
    # A checkpoint fine-tuned on another task has a head for its own labels (AFQMC's 2, not TNEWS' 15):
    # that head starts afresh; any other weight of another shape is a broken checkpoint.
    model, loaded = _from_pretrained(cls, checkpoint, config=config, ignore_mismatched_sizes=True, **where)
    mismatched = sorted(key for key, *_ in loaded["mismatched_keys"])
    if any(_in_base(model, key) for key in mismatched):
        raise ModelLoadError(
            f"model.checkpoint={checkpoint!r} could not be loaded: weights of another shape than its "
            f"config.json says ({', '.join(mismatched)})"
        )
    if mismatched:
        log.warning("model.checkpoint has a head for other labels: a new head for %d labels", config.num_labels)
    if pooling in OWN_HEAD and bert and any(key.startswith("bert.pooler.") for key in loaded["missing_keys"]):
        log.warning(
            "model.checkpoint=%s has no pooler weights: model.pooling=%s starts from a random pooler "
            "(dense + tanh), trained with the head; model.pooling=mean or cls uses the encoder as it was "
            "pretrained (docs/models.md, Pooling)",
            checkpoint,
            pooling,
        )
    return model


def _in_base(model, key: str) -> bool:
    """Whether a weight is the encoder's (bert.*, roberta.*, Qwen2's model.*), not the head's."""
    return model.base_model is model or key.startswith(model.base_model_prefix + ".")


def set_head_dropout(config, dropout: float | None) -> None:
    """model.dropout into the config keys the architecture's head reads; null leaves the checkpoint's."""
    if dropout is None:  # (not None written into the config: ModernBERT's refuses it)
        return
    names = [name for name in HEAD_DROPOUTS if hasattr(config, name)]
    if not names:
        raise ConfigError(
            f"model.dropout={dropout}: the head of a {config.model_type!r} model (model.pooling=auto) has no "
            "dropout; allowed: model.dropout=null, or model.pooling=mean"
        )
    for name in names:
        setattr(config, name, dropout)


def _pooled_encoder(config, pooling: str, checkpoint: str | None, dropout: float | None, **where):
    """EncoderForPairwiseCLS over the encoder AutoModel builds for `config`, pretrained from `checkpoint`."""
    if config.model_type == ENCODER_TYPE:  # afqmc's own checkpoint of one as the base: the same encoder
        values = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "auto_map")}
        config = AfqmcEncoderConfig(**{**values, "pooling": pooling, "classifier_dropout": dropout})
        if checkpoint is None:
            return EncoderForPairwiseCLS(config)
        model, _ = _from_pretrained(EncoderForPairwiseCLS, checkpoint, config=config, ignore_mismatched_sizes=True)
        return model
    head = {k: getattr(config, k) for k in ("num_labels", "id2label", "label2id")}
    values = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id", "auto_map", "pooling")}
    model = EncoderForPairwiseCLS(
        AfqmcEncoderConfig(encoder=values, pooling=pooling, classifier_dropout=dropout, **head)
    )
    if checkpoint is not None:
        encoder, _ = _from_pretrained(AutoModel, checkpoint, config=config, **where)
        model.set_encoder(encoder)
    return model


def load_encoder(checkpoint: str, config, **where) -> BertModel:
    """bert_pair_module's pretrained encoder (its checkpoint's pooler, if any, unused)."""
    bert, _ = _from_pretrained(BertModel, checkpoint, config=config, add_pooling_layer=False, **where)
    return bert


def _from_pretrained(cls, checkpoint: str, **kwargs):
    """(model, loading info) of cls.from_pretrained, without the LOAD REPORT table transformers logs whenever a
    checkpoint lacks weights of the model (ANSI colours, a row per weight, 'MISSING'), as a fine-tuning run's
    new head always does: it would worry a new user. One plain line says instead which weights start at random,
    another which of the checkpoint's go unused."""
    logger = logging.getLogger("transformers.modeling_utils")
    # a filter, not a level: transformers checks that logger's level to decide what else to log
    no_table = lambda record: "LOAD REPORT" not in str(record.msg)  # noqa: E731
    logger.addFilter(no_table)
    try:
        model, info = cls.from_pretrained(checkpoint, output_loading_info=True, **kwargs)
    finally:
        logger.removeFilter(no_table)
    new, unused = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    if new:
        what = "new weights" if any(_in_base(model, k) for k in new) else "a new classification head"
        log.info("model: %s (%s): not in %s, initialised at random", what, ", ".join(new), checkpoint)
    if unused:
        log.info("model: %d weights of %s unused (%s)", len(unused), checkpoint, ", ".join(unused))
    return model, info


def save_classifier(model, directory: Path) -> None:
    model.save_pretrained(directory)
    if isinstance(model.config, (AfqmcBertConfig, AfqmcEncoderConfig)):  # its auto_map names this file
        shutil.copyfile(modeling_afqmc.__file__, directory / MODELING_FILE)


def load_classifier(directory: Path):
    """What save_classifier wrote, with afqmc's own code (never the modeling file beside the weights).
    Checkpoints written before the pooler option have model type bert, and cls or mean pooling."""
    config = _config_values(directory)
    pooling, model_type = config.get("pooling", "cls"), config.get("model_type")
    if model_type == ENCODER_TYPE:
        return EncoderForPairwiseCLS.from_pretrained(directory).eval()
    if model_type in ("bert", MODEL_TYPE) and pooling not in OWN_HEAD:
        return BertForPairwiseCLS.from_pretrained(directory, config=afqmc_config(config, pooling)).eval()
    return AutoModelForSequenceClassification.from_pretrained(directory).eval()  # a built-in model type's own head


def save_module(model, directory: Path) -> None:
    """BertPairModule as the BertForPairwiseCLS with [CLS] pooling that it computes: config, code, weights."""
    afqmc_config(model.config.to_dict(), "cls").save_pretrained(directory)
    shutil.copyfile(modeling_afqmc.__file__, directory / MODELING_FILE)
    # "format" is the metadata that transformers' from_pretrained asks of a safetensors file
    save_file(model.state_dict(), directory / WEIGHTS, metadata={"format": "pt"})


def load_module(directory: Path):
    model = BertPairModule(afqmc_config(_config_values(directory), "cls"))
    model.load_state_dict(load_file(directory / WEIGHTS))
    return model.eval()


def _config_values(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text(encoding="utf-8"))


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

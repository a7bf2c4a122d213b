"""The classifiers model.py registers, and what their checkpoints hold, so that a checkpoint loads right
in afqmc and in transformers alike, or not at all:

- model.pooling=pooler: transformers' own BertForSequenceClassification (BERT's pretrained pooler, a
  dense layer and tanh over [CLS], then dropout and a linear head). Its checkpoints are plain BERT ones:
  AutoModelForSequenceClassification builds this very model from them.
- model.pooling=cls or mean: BertForPairwiseCLS, defined in modeling_afqmc.py, which goes beside the weights
  (config.json's auto_map names it) and runs in transformers only with trust_remote_code=True.
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
from transformers import BertConfig, BertForSequenceClassification, BertModel
from transformers.modeling_outputs import SequenceClassifierOutput

from afqmc.errors import ModelLoadError
from afqmc.models import modeling_afqmc
from afqmc.models.modeling_afqmc import AfqmcBertConfig, BertForPairwiseCLS, classify, head_dropout

log = logging.getLogger(__name__)
MODELING_FILE = Path(modeling_afqmc.__file__).name
WEIGHTS = "model.safetensors"  # tensors only: loading them runs no code


def afqmc_config(values: dict, pooling: str) -> AfqmcBertConfig:
    """BertForPairwiseCLS's config from a BERT config's values (with the head's labels and dropout)."""
    return AfqmcBertConfig.from_dict({**_bert_values(values), "pooling": pooling})


def _bert_values(values: dict) -> dict:
    """A config's values but what names its class: a config read from an afqmc_bert checkpoint may become a
    plain BERT one (pooling=pooler), and the other way round."""
    return {k: v for k, v in values.items() if k not in ("model_type", "auto_map")}


def build_classifier(config, pooling: str, checkpoint: str | None = None, **where):
    """model.pooling's classifier for a BERT `config`, with the weights of `checkpoint` (None: at random)."""
    if pooling == "pooler":  # pooling: read back by load_classifier; transformers ignores it
        config = BertConfig.from_dict({**_bert_values(config.to_dict()), "pooling": pooling})
        cls = BertForSequenceClassification
    else:
        config, cls = afqmc_config(config.to_dict(), pooling), BertForPairwiseCLS
    if checkpoint is None:
        return cls(config)
    # A checkpoint fine-tuned on another task has a head for its own labels (AFQMC's 2, not TNEWS' 15):
    # that head starts afresh; any other weight of another shape is a broken checkpoint.
    model, loaded = _from_pretrained(cls, checkpoint, config=config, ignore_mismatched_sizes=True, **where)
    mismatched = sorted(key for key, *_ in loaded["mismatched_keys"])
    if any(not key.startswith("classifier.") for key in mismatched):
        raise ModelLoadError(
            f"model.checkpoint={checkpoint!r} could not be loaded: weights of another shape than its "
            f"config.json says ({', '.join(mismatched)})"
        )
    if mismatched:
        log.warning("model.checkpoint has a head for other labels: a new head for %d labels", config.num_labels)
    if pooling == "pooler" and any(key.startswith("bert.pooler.") for key in loaded["missing_keys"]):
        log.warning(
            "model.checkpoint=%s has no pooler weights: model.pooling=pooler starts from a random pooler "
            "(dense + tanh), trained with the head; model.pooling=mean or cls uses the encoder as it was "
            "pretrained (README, Pooling)",
            checkpoint,
        )
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
        what = "a new classification head" if all(k.startswith("classifier.") for k in new) else "new weights"
        log.info("model: %s (%s): not in %s, initialised at random", what, ", ".join(new), checkpoint)
    if unused:
        log.info("model: %d weights of %s unused (%s)", len(unused), checkpoint, ", ".join(unused))
    return model, info


def save_classifier(model, directory: Path) -> None:
    model.save_pretrained(directory)
    if isinstance(model.config, AfqmcBertConfig):  # its auto_map names this file
        shutil.copyfile(modeling_afqmc.__file__, directory / MODELING_FILE)


def load_classifier(directory: Path):
    """What save_classifier wrote, with afqmc's own code (never the modeling file beside the weights).
    Checkpoints written before the pooler option have model type bert, and cls or mean pooling."""
    config = _config_values(directory)
    if config.get("pooling") == "pooler":
        return BertForSequenceClassification.from_pretrained(directory).eval()
    pooling = config.get("pooling", "cls")
    return BertForPairwiseCLS.from_pretrained(directory, config=afqmc_config(config, pooling)).eval()


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

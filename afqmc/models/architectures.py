"""Which architectures a model.pooling takes, known before torch or transformers is imported: the config check
runs within a second (afqmc/config/schema.py). transformers' own tables (which model types have an
AutoModelForSequenceClassification head, an AutoModel encoder, a causal LM) are read from its source as data,
ast.literal_eval, not imported: the answer is the installed version's, and no code of it runs.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
from pathlib import Path

from afqmc.errors import ConfigError

TESTED = ("bert", "roberta", "xlm-roberta", "electra", "albert", "deberta-v2", "ernie", "modernbert", "qwen2", "llama")
AFQMC_TYPES = {"afqmc_bert": "bert"}  # afqmc's own cls/mean checkpoints as a base: the encoder they wrap
TABLES = {
    "head": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "encoder": "MODEL_MAPPING_NAMES",
    "causal_lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "masked_lm": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
}


@functools.cache
def model_types(table: str) -> frozenset[str] | None:
    """The model types of one of transformers' auto tables (TABLES), from transformers/models/auto/modeling_auto.py;
    None where a transformers version keeps them elsewhere (the check then leaves it to the loading)."""
    spec = importlib.util.find_spec("transformers")  # (a top-level package's spec: nothing of it runs)
    path = Path(spec.submodule_search_locations[0], "models", "auto", "modeling_auto.py")
    try:
        source = path.read_text(encoding="utf-8")
    except OSError:
        return None
    tables = {}
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in TABLES.values()
        ):
            tables[node.targets[0].id] = frozenset(dict(ast.literal_eval(node.value.args[0])))
    return tables.get(TABLES[table])


def is_decoder(model_type: str) -> bool:
    """A causal LM with no masked-LM form (Qwen2, Llama): its first token sees no other, so no [CLS]."""
    return model_type in (model_types("causal_lm") or ()) and model_type not in (model_types("masked_lm") or ())


def _tested() -> str:
    return ", ".join(TESTED)


def check_architecture(checkpoint: str, config: dict, pooling: str, trust_remote_code: bool) -> None:
    """Refuses, naming what is allowed, a checkpoint whose architecture `pooling` cannot build a classifier on."""
    model_type = config.get("model_type")
    if model_type == "afqmc_encoder":  # afqmc's cls/mean checkpoint of another encoder: the encoder it wraps
        if pooling in ("cls", "mean"):
            model_type = (config.get("encoder") or {}).get("model_type")
        else:
            raise ConfigError(
                f"model.checkpoint={checkpoint!r} is afqmc's {config.get('pooling')} pooling over an encoder, "
                f"not a transformers architecture; model.pooling={pooling} needs one; allowed for it: cls, mean"
            )
    model_type = AFQMC_TYPES.get(model_type, model_type)
    if trust_remote_code and "auto_map" in config:  # the checkpoint's own code decides what it builds
        return
    if model_types("encoder") is None or model_types("head") is None:  # (another layout of transformers)
        return
    version = importlib.metadata.version("transformers")
    where = f"model.checkpoint={checkpoint!r} is a {model_type!r} model"
    if model_type not in model_types("encoder"):
        raise ConfigError(
            f"{where}, a model type transformers {version} does not know; supported: the model types of its "
            f"AutoModelForSequenceClassification (tested: {_tested()})"
        )
    if pooling in ("auto", "pooler") and model_type not in model_types("head"):
        raise ConfigError(
            f"{where}, which has no sequence-classification head in transformers {version}; "
            f"model.pooling={pooling} needs one (tested: {_tested()}); allowed for this model: "
            + ("mean" if is_decoder(model_type) else "cls, mean")
        )
    if pooling == "cls" and is_decoder(model_type):
        raise ConfigError(
            f"{where}, a decoder: its first token sees no other token, so model.pooling=cls reads nothing of "
            "the pair; allowed for it: auto (its own head, the last real token), mean"
        )


def check_bert(checkpoint: str, config: dict, model_name: str) -> None:
    """model=bert_pair_module wraps a BertModel."""
    model_type = AFQMC_TYPES.get(config.get("model_type"), config.get("model_type"))
    if model_type != "bert":
        raise ConfigError(
            f"model.checkpoint={checkpoint!r} is a {model_type!r} model; model.name={model_name} needs a BERT "
            "encoder; for any other architecture: model=bert_cls (its model.pooling: auto, cls or mean)"
        )

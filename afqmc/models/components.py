"""The model group: its keys, loading a checkpoint (a local directory or a hub name), and the
registered models, each with how it is built, saved and loaded (the classes are in modeling.py).

transformers loads inside the functions that use it: the config is checked before it has.
"""

from __future__ import annotations

import json
import logging
import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from afqmc.config.registry import MODELS
from afqmc.config.schema import Key
from afqmc.errors import ConfigError, ModelLoadError
from afqmc.models.architectures import check_architecture, check_bert

log = logging.getLogger(__name__)
POOLINGS = ("auto", "cls", "mean", "pooler")  # pooler: auto's old name (BERT's own head is its pooler)
MODULE_KEYS = {  # conf/model/bert_pair_module.yaml, checked before anything loads (afqmc/config/schema.py)
    "checkpoint": Key(str),
    "pretrained": Key(bool),
    "dropout": Key(float, null=True, min=0, below=1),
    "do_lower_case": Key(bool, null=True),
    "trust_remote_code": Key(bool),
    # its head reads the [CLS] vector; the key is there so that a recipe setting model.pooling=cls
    # (experiment=smoke) composes with either model
    "pooling": Key(str, choices=("cls",)),
    "gradient_checkpointing": Key(bool),
}
MODEL_KEYS = {**MODULE_KEYS, "pooling": Key(str, choices=POOLINGS)}  # conf/model/bert_cls.yaml


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
        if (Path(checkpoint) / "checkpoint.json").is_file():  # an afqmc checkpoint: its files verified first
            from afqmc.training.checkpoint import verify

            verify(Path(checkpoint))
        return {}
    try:
        _hub_config(checkpoint, local_files_only=True)
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


def _hub_config(checkpoint: str, local_files_only: bool = False) -> dict:
    """A hub model's config.json, cached or fetched alone and read as JSON: none of its code runs, and the
    config check imports neither transformers nor torch (seconds on a small machine)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = hf_hub_download(checkpoint, "config.json", local_files_only=local_files_only)
    except EntryNotFoundError as e:  # (not an OSError in huggingface_hub 2, unlike its other errors)
        raise OSError(f"no config.json for {checkpoint!r} ({e})") from None
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _custom_code_refused(checkpoint: str, files: tuple[str, ...] = ()) -> ModelLoadError:
    named = f" ({' and '.join(files)} name it in auto_map)" if files else ""
    return ModelLoadError(
        f"model.checkpoint={checkpoint!r} needs its own Python code to load, which runs only with "
        f"model.trust_remote_code=true{named}: set it only for a checkpoint whose code you trust"
    )


def _load_config(checkpoint: str, trust: bool, where: dict, head: dict):
    """The checkpoint's config with `head` (the labels and the head's dropout), running none of the
    checkpoint's own code unless `trust`. transformers would run none either for a built-in model type
    (bert), but build its own classes and ignore the code the checkpoint names: a model other than the
    one its author meant, so such a checkpoint is refused too. afqmc's own checkpoints (model type
    afqmc_bert) load with afqmc's code, never with the copy beside their weights."""
    from transformers import AutoConfig, PretrainedConfig
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    from afqmc.models.modeling_afqmc import ENCODER_TYPE, MODEL_TYPE, AfqmcBertConfig, AfqmcEncoderConfig

    files = {k: v for k, v in where.items() if k != "trust_remote_code"}
    values, _ = PretrainedConfig.get_config_dict(checkpoint, **files)  # JSON only: no code runs
    if values.get("model_type") == MODEL_TYPE:
        return AfqmcBertConfig.from_pretrained(checkpoint, **head, **files)
    if values.get("model_type") == ENCODER_TYPE:
        return AfqmcEncoderConfig.from_pretrained(checkpoint, **head, **files)
    code = ("config.json",) if "auto_map" in values else ()
    if "auto_map" in get_tokenizer_config(checkpoint, **files):
        code += ("tokenizer_config.json",)
    if code and not trust:
        raise _custom_code_refused(checkpoint, code)
    return AutoConfig.from_pretrained(checkpoint, **head, **where)


@contextmanager
def _loading(checkpoint: str):
    """Loading errors (a missing file, a malformed name, refused custom code) as one ModelLoadError
    naming model.checkpoint."""
    try:
        yield
    except (OSError, ValueError) as e:
        if "trust_remote_code" in str(e):
            raise _custom_code_refused(checkpoint) from None
        raise ModelLoadError(f"model.checkpoint={checkpoint!r} could not be loaded: {e}") from None


def max_positions(config: dict) -> int | None:
    """max_position_embeddings of a checkpoint's config.json values (None when it has none); of the encoder
    inside afqmc's cls/mean classifier (model type afqmc_encoder)."""
    limit = {**config, **(config.get("encoder") or {})}.get("max_position_embeddings")
    return limit if isinstance(limit, int) else None


def checkpoint_config(cfg) -> dict:
    """model.checkpoint's config.json, read as JSON (a local directory's, else the hub's, cached or fetched alone)."""
    if Path(cfg.checkpoint).is_dir():
        path = Path(cfg.checkpoint) / "config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"model.checkpoint={cfg.checkpoint!r}: cannot read {path} ({e})") from None
        return config if isinstance(config, dict) else {}
    where = _resolve(cfg.checkpoint)
    with _loading(cfg.checkpoint):
        return _hub_config(cfg.checkpoint, **where)


def check_classifier(cfg) -> None:
    """model=bert_cls: the checkpoint's architecture takes model.pooling (architectures.py), and its positions
    hold dataset.max_length."""
    config = checkpoint_config(cfg.model)  # read once, before any weights load
    check_architecture(cfg.model.checkpoint, config, cfg.model.pooling, cfg.model.trust_remote_code)
    max_length_fits(cfg, config)


def check_module(cfg) -> None:
    """model=bert_pair_module: a BERT checkpoint, whose positions hold dataset.max_length."""
    config = checkpoint_config(cfg.model)
    check_bert(cfg.model.checkpoint, config, cfg.model.name)
    max_length_fits(cfg, config)


def max_length_fits(cfg, config: dict) -> None:
    """A token past max_position_embeddings has no position embedding: an index error (on CUDA a
    device-side assert) in the first batch that long, after the whole setup. `config`: model.checkpoint's."""
    limit = max_positions(config)
    if limit is not None and cfg.dataset.max_length > limit:
        raise ConfigError(
            f"dataset.max_length={cfg.dataset.max_length} is invalid; expected an integer <= {limit}, "
            f"the max_position_embeddings of model.checkpoint={cfg.model.checkpoint!r}"
        )


def load_tokenizer(checkpoint: str, do_lower_case: bool | None = None, trust_remote_code: bool = False, **kwargs):
    from transformers import AutoTokenizer

    if do_lower_case is not None:
        kwargs["do_lower_case"] = do_lower_case  # tokenizers without the option ignore it
    # An explicit False: None would prompt "run the custom code? [y/N]" on a terminal.
    return AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=trust_remote_code, **kwargs)


def _build(cfg, label_names: list[str], make):
    """(model, tokenizer): the checkpoint's config with a head for label_names (label_names[i] is the raw label
    of class i), the checkpoint's tokenizer fitted to it (fit_tokenizer), `make(config, where)` builds the model."""
    trust = cfg.trust_remote_code
    where = {**_resolve(cfg.checkpoint), "trust_remote_code": trust}
    head = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    with _loading(cfg.checkpoint):
        config = _load_config(cfg.checkpoint, trust, where, head)
        tokenizer = load_tokenizer(cfg.checkpoint, cfg.do_lower_case, **where)
        fit_tokenizer(tokenizer, config)
        model = make(config, where)
    if cfg.get("gradient_checkpointing"):
        gradient_checkpointing(model, cfg.checkpoint)
    log.info(
        "model: %s (%s, %s, %.1fM parameters, %s pooling)",
        cfg.checkpoint,
        config.model_type,
        "pretrained" if cfg.pretrained else "random init",
        sum(p.numel() for p in model.parameters()) / 1e6,
        cfg.get("pooling", "cls"),
    )
    return model, tokenizer


def fit_tokenizer(tokenizer, config) -> None:
    """The tokenizer made to give the model what it takes; saved with the checkpoint, so predict and a plain
    transformers load get the same. Segment ids only for a model with more than one token type (RoBERTa, XLM-R,
    DeBERTa-v2, ModernBERT, the decoders have one or none: a 1 for the second text would index past its table, or
    be refused); a pad token where there is none (Llama's), the end-of-text token, as decoders pad; padding on the
    right, where the positions of the real tokens do not depend on the batch (a decoder's head scores the last
    real token whatever the side, but its positions would shift)."""
    names = list(tokenizer.model_input_names)
    encoder = config.encoder_config() if hasattr(config, "encoder_config") else config  # (afqmc_encoder's inside)
    if (getattr(encoder, "type_vocab_size", None) or 0) <= 1 and "token_type_ids" in names:
        names.remove("token_type_ids")
        tokenizer.model_input_names = names
        tokenizer.init_kwargs["model_input_names"] = names  # (what save_pretrained writes)
    if tokenizer.pad_token is None:
        fill = tokenizer.eos_token or tokenizer.unk_token
        if fill is None:
            raise ModelLoadError(
                f"the tokenizer of model.checkpoint={tokenizer.name_or_path!r} has no pad, end-of-text or unknown "
                "token to pad batches with; add a pad_token to its tokenizer_config.json"
            )
        tokenizer.pad_token = fill
        log.info("model: the tokenizer has no pad token; padding with %r", fill)
    if getattr(config, "pad_token_id", None) is None:  # a decoder's head finds the last real token by it
        config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"
    tokenizer.init_kwargs["padding_side"] = "right"


def gradient_checkpointing(model, checkpoint: str) -> None:
    """model.gradient_checkpointing=true: the transformers model inside recomputes each layer's activations in
    the backward pass instead of keeping them (non-reentrant: the same dropout masks, so the same gradient)."""
    inner = next((m for m in model.modules() if getattr(m, "supports_gradient_checkpointing", False)), None)
    if inner is None:
        raise ConfigError(
            f"model.gradient_checkpointing=true: the model of model.checkpoint={checkpoint!r} does not support "
            "it; allowed for it: false"
        )
    inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def _modeling(name: str):
    """modeling.py's function `name`, imported when it is called: this module loads no torch."""

    def call(*args):
        from afqmc.models import modeling

        return getattr(modeling, name)(*args)

    return call


@MODELS.register(
    "bert_pair_cls",
    schema=MODEL_KEYS,
    check=check_classifier,
    save=_modeling("save_classifier"),
    load=_modeling("load_classifier"),
)
def build_pair_cls(cfg, label_names: list[str]):
    from afqmc.models.modeling import build_classifier

    def make(config, where):
        return build_classifier(config, cfg.pooling, cfg.checkpoint if cfg.pretrained else None, cfg.dropout, **where)

    return _build(cfg, label_names, make)


@MODELS.register(
    "bert_pair_module",
    schema=MODULE_KEYS,
    check=check_module,
    save=_modeling("save_module"),
    load=_modeling("load_module"),
)
def build_pair_module(cfg, label_names: list[str]):
    from afqmc.models.modeling import BertPairModule, load_encoder

    def make(config, where):
        config.classifier_dropout = cfg.dropout
        return BertPairModule(config, load_encoder(cfg.checkpoint, config, **where) if cfg.pretrained else None)

    return _build(cfg, label_names, make)

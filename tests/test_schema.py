"""The config schema: every bad key, type, range or choice is one ConfigError naming key, value and what is allowed."""

import json

import pytest
from hydra.errors import HydraException
from omegaconf import OmegaConf

from afqmc.config.registry import DATASETS, LOGGERS, OPTIMIZERS, Component
from afqmc.config.schema import Key, check_config, compose_error
from afqmc.errors import ConfigError

from .conftest import CONF, compose_cfg, hub_cache

OPTIONS = [
    (group, f.stem)
    for group in ("dataset", "model", "optimizer", "scheduler", "trainer", "logger", "experiment")
    for f in sorted((CONF / group).glob("*.yaml"))
]


@pytest.fixture
def local_bert(tmp_path):
    """A local checkpoint directory: the schema reads only its config.json (no weights, no network)."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 512}))
    return tmp_path


def checked(local_bert, *overrides):
    cfg = compose_cfg([f"model.checkpoint={local_bert}", *overrides])
    check_config(cfg)
    return cfg


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_option_passes(local_bert, group, option):
    checked(local_bert, f"{group}={option}")


GOOD = [
    "trainer.max_steps=null",
    "trainer.max_grad_norm=null",
    "trainer.device=cuda:1",
    "optimizer.lr=1",
    "dataset.splits.test=null",
    "dataset.download=null",
    "dataset.on_bad_line=skip",
    "model.dropout=0.2",
    "scheduler.warmup_steps=0",
    "dataset.task=my-corpus_2.v1",
    "model.do_lower_case=null",
    "trainer.eval_every_steps=100",
    "trainer.early_stopping.patience=3",
    "trainer.keep_last=never",
    "logger=[tensorboard,mlflow,wandb]",
    "logger=mlflow logger.mlflow.tracking_uri=http://localhost:5000",
]


@pytest.mark.parametrize("override", GOOD)
def test_allowed_values_pass(local_bert, override, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (a machine with CUDA: cuda:1 is allowed)
    checked(local_bert, *override.split())


BAD = [
    ("trainer.epochs=abc", r"trainer.epochs='abc' is invalid; expected an integer >= 1$"),
    ("trainer.epochs=2.5", r"trainer.epochs=2.5 is invalid; expected an integer >= 1$"),
    ("trainer.batch_size=0", r"trainer.batch_size=0 is invalid; expected an integer >= 1$"),
    ("optimizer.lr=-1e-5", r"optimizer.lr=-1e-05 is invalid; expected a number > 0$"),
    ("optimizer.lr=inf", r"optimizer.lr=inf is invalid; expected a number > 0$"),
    ("optimizer.lr=true", r"optimizer.lr=true is invalid; expected a number > 0$"),
    ("scheduler.warmup_ratio=1.5", r"scheduler.warmup_ratio=1.5 is invalid; expected a number >= 0 and <= 1$"),
    ("optimizer.betas=[0.9,1.5]", r"optimizer.betas=\[0.9, 1.5\] is invalid; expected two numbers >= 0 and < 1"),
    ("trainer.precision=fp8", r"trainer.precision='fp8' is invalid; expected one of 'auto', 'fp32', 'bf16', 'fp16'$"),
    ("trainer.metric=auc", r"trainer.metric='auc' is invalid; expected one of 'accuracy', 'f1_macro', .*'loss'$"),
    ("model.pooling=max", r"model.pooling='max' is invalid; expected one of 'auto', 'cls', 'mean', 'pooler'$"),
    ("dataset.format=xml", r"dataset.format='xml' is invalid; expected one of 'jsonl', 'csv', 'tsv', 'parquet', 'hf'$"),
    ("dataset.on_bad_line=ignore", r"dataset.on_bad_line='ignore' is invalid; expected one of 'error', 'skip'$"),
    ("trainer.device=gpu", r"trainer.device='gpu' is invalid; expected auto, cpu, cuda or cuda:N$"),
    ("trainer.predict=yes", r"trainer.predict='yes' is invalid; expected true or false$"),
    ("model.trust_remote_code=1", r"model.trust_remote_code=1 is invalid; expected true or false$"),
    ("dataset.max_length=2", r"dataset.max_length=2 is invalid; expected an integer >= 5$"),
    ("dataset.max_line_bytes=0", r"dataset.max_line_bytes=0 is invalid; expected an integer >= 1$"),
    ("dataset.splits.train=null", r"dataset.splits.train=null is invalid; expected a non-empty string$"),
    ("dataset.label_map.0=1", r"dataset.label_map={'0': 1, '1': 1} is invalid; expected .*indices 0..N-1 each once"),
    ("dataset.task=../../etc/x", r"dataset.task='../../etc/x' is invalid; expected a name without '/', '\\' or '..'"),
    ("dataset.task=runs/x", r"dataset.task='runs/x' is invalid; expected a name without '/'"),
    ("dataset.task=..", r"dataset.task='..' is invalid"),
    (
        "+optimizer.lrr=1e-5",
        r"optimizer.lrr=1e-05: unknown key; keys of optimizer: betas, eps, lr, name, weight_decay "
        r"\(did you mean optimizer.lr\?\)$",
    ),
    (
        "+dataset.columns.txt_a=q",
        r"dataset.columns.txt_a='q': unknown key; keys of dataset.columns: id, label, text_a, text_b",
    ),
    (
        "+trainr.epochs=3",
        r"trainr: unknown key; config groups: callbacks, card, dataset, logger, model, optimizer, plugins, scheduler, "
        r"trainer \(did you mean trainer\?\)",
    ),
    ("~trainer.seed", r"trainer.seed is missing; expected an integer >= 0 and <= 4294967295$"),
    ("trainer.eval_every_steps=0", r"trainer.eval_every_steps=0 is invalid; expected null or an integer >= 1$"),
    (
        "trainer.early_stopping.patience=0",
        r"trainer.early_stopping.patience=0 is invalid; expected null or an integer >= 1$",
    ),
    ("trainer.early_stopping.min_delta=-1", r"trainer.early_stopping.min_delta=-1 is invalid; expected a number >= 0$"),
    (
        "+trainer.early_stopping.patients=3",
        r"trainer.early_stopping.patients=3: unknown key; keys of trainer.early_stopping: min_delta, patience "
        r"\(did you mean trainer.early_stopping.patience\?\)",
    ),
    (
        "trainer.keep_last=sometimes",
        r"trainer.keep_last='sometimes' is invalid; expected one of 'until_done', 'always', 'never'$",
    ),
    ("trainer.save_best=no", r"trainer.save_best='no' is invalid; expected true or false$"),
    (
        "trainer.save_best=false",
        r"trainer.save_best=false leaves no best checkpoint to predict the test split with; "
        r"set trainer.predict=false too",
    ),
    (
        "logger=tensorboard logger.tensorboard.flush_secs=0",
        r"logger.tensorboard.flush_secs=0 is invalid; expected an integer >= 1$",
    ),
    (
        "logger=wandb logger.wandb.mode=cloud",
        r"logger.wandb.mode='cloud' is invalid; expected one of 'offline', 'online', 'disabled'$",
    ),
    (
        "logger=mlflow +logger.mlflow.experiment_name=x",
        r"logger.mlflow.experiment_name='x': unknown key; keys of logger.mlflow: experiment, run_name, tracking_uri "
        r"\(did you mean logger.mlflow.experiment\?\)",
    ),
    ("+logger.comet.project=x", r"logger='comet' is not registered; registered: mlflow, tensorboard, wandb$"),
]


@pytest.mark.parametrize("override,message", BAD)
def test_bad_value_names_key_value_and_allowed(local_bert, override, message):
    with pytest.raises(ConfigError, match=message):
        checked(local_bert, *override.split())


def test_keys_follow_the_chosen_optimizer(local_bert):
    """sgd has momentum and no betas: each registered name has its own keys."""
    with pytest.raises(
        ConfigError,
        match=r"optimizer.betas=\[0.9, 0.99\]: unknown key; "
        r"keys of optimizer: lr, momentum, name, nesterov, weight_decay",
    ):
        checked(local_bert, "optimizer=sgd", "+optimizer.betas=[0.9,0.99]")
    with pytest.raises(
        ConfigError, match=r"optimizer.nesterov=true needs optimizer.momentum > 0; got optimizer.momentum=0"
    ):
        checked(local_bert, "optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true")


def test_label_1_metrics_need_two_labels(local_bert):
    checked(local_bert, "+dataset.label_map.2=2", "trainer.metric=f1_macro")
    with pytest.raises(
        ConfigError,
        match=r"trainer.metric='f1_pos' needs 2 labels, dataset.label_map has 3; allowed: accuracy, f1_macro, loss",
    ):
        checked(local_bert, "+dataset.label_map.2=2", "trainer.metric=f1_pos")


def test_a_component_without_schema_takes_any_keys(local_bert, monkeypatch):
    """A new optimizer is one decorated function and one YAML; declaring its keys is optional."""
    monkeypatch.setitem(OPTIMIZERS._items, "lion", Component(lambda cfg, model: None))
    checked(local_bert, "optimizer.name=lion", "+optimizer.anything=1")
    monkeypatch.setitem(OPTIMIZERS._items, "lion", Component(lambda cfg, model: None, {"lr": Key(float, above=0)}))
    with pytest.raises(ConfigError, match=r"optimizer.betas=\[0.9, 0.999\]: unknown key; keys of optimizer: lr, name"):
        checked(local_bert, "optimizer.name=lion", "~optimizer.weight_decay", "~optimizer.eps")


def test_max_length_within_a_local_checkpoints_positions(local_bert):
    (local_bert / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 64}))
    checked(local_bert, "dataset.max_length=64")
    with pytest.raises(
        ConfigError,
        match=rf"dataset.max_length=65 is invalid; expected an integer <= 64, "
        rf"the max_position_embeddings of model.checkpoint='{local_bert}'",
    ):
        checked(local_bert, "dataset.max_length=65")


def test_max_length_of_a_hub_model_checked_from_its_config_alone(tmp_path, monkeypatch):
    """A hub name's limit comes from its config.json, fetched or cached alone, before any weights, and read
    as JSON: no code of the checkpoint runs, whatever its model type."""
    from huggingface_hub import constants

    config = {"model_type": "afqmc_bert", "auto_map": {"AutoConfig": "x.Y"}, "max_position_embeddings": 32}
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache(tmp_path, "some-org/bert", config)))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ConfigError,
        match=r"dataset.max_length=128 is invalid; expected an integer <= 32, .* of model.checkpoint='some-org/bert'",
    ):
        check_config(compose_cfg(["model.checkpoint=some-org/bert"]))


def test_composition_errors_become_one_line():
    with pytest.raises(HydraException) as e:
        compose_cfg(["optimizer.lrr=1e-5"])
    assert compose_error(e.value) == (
        "optimizer.lrr=1e-5: unknown key; keys of optimizer: betas, eps, lr, name, "
        "weight_decay (did you mean optimizer.lr?)"
    )
    with pytest.raises(HydraException) as e:
        compose_cfg(["optimizer=adamx"])
    assert (
        compose_error(e.value)
        == "In 'config': Could not find 'optimizer/adamx'. Available options in 'optimizer': adamw, sgd"
    )


def test_every_yaml_has_exactly_its_schemas_keys():
    """The YAMLs stay the documentation (test_config checks each key's comment): no key only in the schema."""
    from afqmc.config.schema import GROUPS

    for group, registry in GROUPS.items():
        for path in sorted((CONF / group).glob("*.yaml")):
            yaml = compose_cfg([f"{group}={path.stem}"])[group]  # a dataset: on conf/dataset_defaults/'s keys
            schema = registry.component(yaml.name).schema
            assert schema is not None, f"{path}: {group}.name={yaml.name} declares no schema"
            assert set(yaml) == {"name", *schema}, path
    defaults = OmegaConf.load(CONF / "dataset_defaults" / "sentence_pairs.yaml")
    assert set(defaults) < {"name", *DATASETS.component(defaults.name).schema}
    for path in sorted((CONF / "logger").glob("*.yaml")):  # one option a file, its keys under its name
        yaml = OmegaConf.load(path)
        assert list(yaml) == [path.stem], path
        assert set(yaml[path.stem]) == set(LOGGERS.component(path.stem).schema), path

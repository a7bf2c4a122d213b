"""Name -> component registries. A YAML's `name:` picks a registered builder.

Adding a component is one decorated function or class plus one YAML file, in afqmc or in a plugin (a
module named by the `plugins` config key or the `afqmc.plugins` entry-point group: afqmc/config/plugins.py):

    @OPTIMIZERS.register("lion")
    def build_lion(cfg, model): ...

A component may also declare its YAML's keys, `register("lion", schema={"lr": Key(float, above=0), ...})`
(afqmc/config/schema.py); run.py then rejects a missing, unknown or out-of-range key before anything loads.
Without a schema, only the name is checked and the other keys pass through as they are.
`check=fn` adds a test of the whole config that one group's keys cannot express, fn(cfg) raising ConfigError.

The contract: what the framework asks of each kind of component, and all that it assumes of it.

- A model (MODELS, `model.name`) registers `build(cfg, label_names) -> (model, tokenizer)` with two hooks,
  `save=fn(model, directory)` and `load=fn(directory) -> model`:
  - `label_names[i]` is the raw label of class i; the tokenizer is a transformers tokenizer (the built-in
    collate function calls it on the texts; the framework saves it beside the weights, and reloads it with
    AutoTokenizer, handing it the model's `.config` when that is a transformers config);
  - the model is a torch.nn.Module whose `forward(**batch)` takes the tokenizer's outputs (input_ids,
    attention_mask, and token_type_ids where the tokenizer makes them) and returns the logits,
    [batch, labels], or an output with `.logits`. The trainer computes the loss (it passes no labels);
  - `save` writes the model into `directory`, which the framework has made; the framework adds the tokenizer,
    the run's config, a model card and checkpoint.json (the model's name, the label names, every file's
    sha256). `load(directory)` returns the model as saved (the framework puts it in eval mode, on the CPU).
  Nothing else is assumed. The model card says how to load the checkpoint in transformers when it holds a
  config.json, else that afqmc loads it (afqmc.predict). Fast dropout (trainer.fast_dropout, CPU) applies
  where the model has transformers' attention interface, else it trains with plain dropout. A `check` such
  as models/components.py's max_length_fits tests what the model's config allows.
- A dataset (DATASETS, `dataset.name`) registers `build(cfg, split, labeled=None) -> dataset`, an object with
  the attributes of SplitData below whose items the collate function takes (`labeled`: every line must have a
  label; None: all splits but test).
- A collate function (COLLATORS, `dataset.collate`) `build(cfg, tokenizer, pad_to_multiple_of) -> collate_fn`,
  whose batches are dicts of tensors: the model's inputs, "index" (the items' indices) and "labels" where the
  split has them.
- An optimizer `build(cfg, model)`, a scheduler `build(cfg, optimizer, total_steps)`, a trainer
  `build(cfg, output_dir)` with `fit() -> best dev value`, and, for afqmc.evaluate,
  `setup_evaluation(checkpoint_dir, split)` then `evaluate(split, show) -> metrics`.
- An experiment tracker (LOGGERS) `build(cfg, run, run_id) -> tracker` (afqmc/runs/trackers.py), and a
  callback (CALLBACKS) `build(cfg) -> Callback` (afqmc/training/callbacks.py). Several of each may be chosen
  at once, so they are named by their key under `logger` or `callbacks`, not by a `name:` key.

The built-in components' modules import torch and transformers only when a component is built, so
that the config is checked within a second of `python run.py` (afqmc/config/schema.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from afqmc.errors import ConfigError, first_line


class SplitData(Protocol):
    """A split as the trainer uses it (afqmc/data/datasets.py has the built-in ones)."""

    streaming: bool  # True: an IterableDataset read in file order, no len() or lengths()
    skipped_lines: int  # bad lines left out (dataset.on_bad_line=skip), for summary.json
    no_gold_label: int  # lines left out for a label that says there is none (dataset.no_gold_label): not bad lines

    def count(self) -> int:
        """The number of examples (a streaming split reads its file once to count them)."""

    def encode(self, tokenizer, max_length: int) -> None:
        """Tokenize the split once, before training (a no-op where batches are tokenized as they come)."""

    def lengths(self) -> Sequence[int]:
        """Each example's length in tokens, after encode() (map-style splits only)."""

    def item_id(self, index: int) -> Any:
        """The id that a prediction of example `index` is written with (map-style splits only)."""

    def fingerprint(self) -> dict:
        """What changes when the split's data change (size, file sha256): a resume on other data is refused."""


@dataclass(frozen=True)
class Component:
    build: Callable[..., Any]
    schema: dict | None = None  # the keys of its YAML (afqmc/config/schema.py), None: any keys
    check: Callable[[Any], None] | None = None  # a test of the whole config, raising ConfigError
    hooks: dict[str, Callable[..., Any]] = field(default_factory=dict)  # e.g. a model's save and load


class Registry:
    def __init__(self, key: str, hooks: tuple[str, ...] = ()):
        self.key = key  # the config key that holds a component's name
        self.hooks = hooks  # what each registration must say besides its builder
        self._items: dict[str, Component] = {}

    def register(self, name: str, schema: dict | None = None, check: Callable[[Any], None] | None = None, **hooks):
        if set(hooks) != set(self.hooks):
            raise TypeError(f"{self.key}={name!r}: a registration takes {', '.join(self.hooks) or 'no hooks'}")

        def add(build):
            if name in self._items:
                raise ValueError(f"{self.key}={name!r} is registered twice")
            self._items[name] = Component(build, schema, check, hooks)
            return build

        return add

    def component(self, name: str) -> Component:
        _import_components()
        if name not in self._items:
            registered = ", ".join(sorted(self._items))
            if name is None:
                raise ConfigError(f"{self.key} is missing; expected one of: {registered}")
            raise ConfigError(f"{self.key}={name!r} is not registered; registered: {registered}")
        return self._items[name]

    def get(self, name: str) -> Callable[..., Any]:
        """The builder registered as `name`."""
        return self.component(name).build


DATASETS = Registry("dataset.name")
COLLATORS = Registry("dataset.collate")
MODELS = Registry("model.name", hooks=("save", "load"))
OPTIMIZERS = Registry("optimizer.name")
SCHEDULERS = Registry("scheduler.name")
TRAINERS = Registry("trainer.name")
LOGGERS = Registry("logger")
CALLBACKS = Registry("callbacks")
_COMPONENT_MODULES = [
    "afqmc.data.components",
    "afqmc.models.components",
    "afqmc.training.optim",
    "afqmc.training.components",
    "afqmc.runs.trackers",
    "afqmc.training.callbacks",
]


def _import_components() -> None:
    """The built-in components register themselves when their modules are imported."""
    for module in _COMPONENT_MODULES:
        importlib.import_module(module)


def check_names(cfg, registries=None) -> None:
    """Fail on an unknown component name before any data or model is loaded."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for registry in registries or (DATASETS, COLLATORS, MODELS, OPTIMIZERS, SCHEDULERS, TRAINERS):
        try:
            name = OmegaConf.select(cfg, registry.key)
        except OmegaConfBaseException as e:  # e.g. an interpolation of a key that is not there
            raise ConfigError(f"{registry.key}: {first_line(e)}") from None
        registry.component(name)

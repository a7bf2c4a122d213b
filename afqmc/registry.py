"""Name -> component registries. A YAML's `name:` picks a registered builder.

Adding a component is one decorated function or class plus one YAML file:

    @OPTIMIZERS.register("lion")
    def build_lion(cfg, model): ...

A component may also declare its YAML's keys, `register("lion", schema={"lr": Key(float, above=0), ...})`
(afqmc/schema.py); run.py then rejects a missing, unknown or out-of-range key before anything loads.
Without a schema, only the name is checked and the other keys pass through as they are.
`check=fn` adds a test of the whole config that one group's keys cannot express, fn(cfg) raising ConfigError.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .errors import ConfigError


class Registry:
    def __init__(self, key: str):
        self.key = key  # the config key that holds a component's name
        self._items: dict[str, Callable[..., Any]] = {}
        self._schemas: dict[str, dict] = {}
        self._checks: dict[str, Callable[[Any], None]] = {}

    def register(self, name: str, schema: dict | None = None, check: Callable[[Any], None] | None = None):
        def add(fn):
            if name in self._items:
                raise ValueError(f"{self.key}={name!r} is registered twice")
            self._items[name] = fn
            if schema is not None:
                self._schemas[name] = schema
            if check is not None:
                self._checks[name] = check
            return fn

        return add

    def get(self, name: str) -> Callable[..., Any]:
        _import_components()
        if name not in self._items:
            raise ConfigError(f"{self.key}={name!r} is not registered; registered: {', '.join(sorted(self._items))}")
        return self._items[name]

    def schema(self, name: str) -> dict | None:
        """The keys the component named `name` declared (besides `name`), or None: anything goes."""
        self.get(name)
        return self._schemas.get(name)

    def check(self, name: str) -> Callable[[Any], None] | None:
        """The component's test of the whole config, or None."""
        self.get(name)
        return self._checks.get(name)

    def names(self) -> list[str]:
        _import_components()
        return sorted(self._items)


DATASETS = Registry("dataset.name")
COLLATORS = Registry("dataset.collate")
MODELS = Registry("model.name")
OPTIMIZERS = Registry("optimizer.name")
SCHEDULERS = Registry("scheduler.name")
TRAINERS = Registry("trainer.name")
_COMPONENT_MODULES = ["afqmc.data", "afqmc.model", "afqmc.optim", "afqmc.trainer"]


def _import_components() -> None:
    """The built-in components register themselves when their modules are imported."""
    for module in _COMPONENT_MODULES:
        importlib.import_module(module)


def check_names(cfg) -> None:
    """Fail on an unknown component name before any data or model is loaded."""
    from omegaconf import OmegaConf

    for registry in (DATASETS, COLLATORS, MODELS, OPTIMIZERS, SCHEDULERS, TRAINERS):
        registry.get(OmegaConf.select(cfg, registry.key))


def build_trainer(cfg, output_dir):
    check_names(cfg)
    return TRAINERS.get(cfg.trainer.name)(cfg, output_dir)

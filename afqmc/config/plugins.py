"""Plugins: a user's modules that register components (models, datasets, collate functions, optimizers,
schedulers, trackers, callbacks) with the registries of afqmc/config/registry.py, without editing afqmc.

- The config key `plugins: [my_models, lab.callbacks]` names modules importable from sys.path (PYTHONPATH,
  the working directory, an installed package). The run records the key with its config, so a resumed run,
  afqmc.evaluate and afqmc.predict import them again.
- An installed package can declare its module in the entry-point group `afqmc.plugins` (pyproject.toml:
  `[project.entry-points."afqmc.plugins"] NAME = "package.module"`): it is imported in every run.

Both are imported before the config is checked, so their components' names and keys are known to the check.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points

from afqmc.errors import ConfigError, error_line

GROUP = "afqmc.plugins"


def load_plugins(modules=()) -> None:
    """Imports the entry points of the group afqmc.plugins, then `modules`. A plugin that fails to import is one
    ConfigError line naming it."""
    for ep in entry_points(group=GROUP):
        _import(ep.value.partition(":")[0], f"the plugin {ep.name!r} (entry point {ep.value}, group {GROUP})")
    if modules and os.getcwd() not in sys.path:  # `python run.py` puts run.py's directory there, not the cwd
        sys.path.append(os.getcwd())
    for module in modules:
        _import(module, f"plugins: {module!r}")


def _import(module: str, what: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001  (whatever a user's module raises, the run says which module, in a line)
        raise ConfigError(f"{what} could not be imported: {error_line(e)}") from None

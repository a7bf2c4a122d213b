"""The config schema, checked by run.py before any data or model is loaded.

Each registered component declares the keys of its YAML next to its code,
`@OPTIMIZERS.register("adamw", schema={"lr": Key(float, above=0), ...})`, so the keys of `optimizer`
are those of the optimizer actually chosen, and a new component is still one function and one YAML.
Every error is one line naming the key, the bad value and what is allowed.

Why not Hydra structured configs: OmegaConf cannot express ranges (lr > 0, warmup_ratio <= 1), its
errors surface inside Hydra's composition as multi-line blocks, and a dataclass per optimizer would
repeat each YAML's keys in a second place anyway.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException, ValidationError

from afqmc.config.plugins import load_plugins
from afqmc.config.registry import (
    CALLBACKS,
    COLLATORS,
    DATASETS,
    LOGGERS,
    MODELS,
    OPTIMIZERS,
    SCHEDULERS,
    TRAINERS,
    check_names,
)
from afqmc.errors import ConfigError, error_line, first_line

# one option chosen from each: cfg.<group>.name names its component
GROUPS = {registry.key.split(".")[0]: registry for registry in (DATASETS, MODELS, OPTIMIZERS, SCHEDULERS, TRAINERS)}
# any number chosen (logger=[tensorboard,mlflow]): each option's keys under cfg.<group>.<option>
MULTI_GROUPS = {"logger": LOGGERS, "callbacks": CALLBACKS}
TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a non-empty string",
    list: "a list",
    dict: "a map",
}


@dataclass(frozen=True)
class Key:
    """One config key: its type, whether null is allowed, and which values are."""

    type: type  # bool, int, float (an integer is accepted too), str, list or dict
    null: bool = False  # null is allowed (the YAML comment says what it means)
    choices: tuple = ()  # the allowed values, when there are a few
    min: float | None = None  # inclusive bounds
    max: float | None = None
    above: float | None = None  # exclusive bounds: a learning rate must be > 0, a momentum < 1
    below: float | None = None
    keys: dict[str, Key] | None = None  # a nested map with fixed keys: its own schema
    rule: Callable[[Any], bool] | None = None  # what the type and bounds cannot say ...
    says: str = ""  # ... and how to say it to the user

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(map(_show, self.choices))
        elif self.says:
            text = self.says
        elif self.keys is not None:
            text = f"a map with keys {', '.join(self.keys)}"
        else:
            bounds = [
                f"{op} {_num(v)}"
                for op, v in ((">=", self.min), (">", self.above), ("<=", self.max), ("<", self.below))
                if v is not None
            ]
            text = " ".join([TYPE_NAMES[self.type], " and ".join(bounds)]).strip()
        return f"null or {text}" if self.null else text

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.null
        if isinstance(value, bool) and self.type is not bool:  # YAML's true is no number
            return False
        if self.type is float:
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                return False
        elif not isinstance(value, self.type) or value == "":
            return False
        if self.choices and value not in self.choices:
            return False
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and not (
                (self.min is None or value >= self.min)
                and (self.max is None or value <= self.max)
                and (self.above is None or value > self.above)
                and (self.below is None or value < self.below)
            )
        ):
            return False
        return self.rule is None or bool(self.rule(value))


# the card key: the model card's settings (afqmc/runs/card.py)
CARD = Key(dict, keys={"license": Key(str, null=True)})
# the plugins key: modules imported before the check (afqmc/config/plugins.py)
PLUGINS = Key(list, null=True, rule=lambda m: all(isinstance(x, str) and x for x in m), says="a list of module names")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _show(value: Any) -> str:
    """A value as it would be written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def unknown_key(shown: str, key: str, known, path: str = "") -> str:
    """`optimizer.lrr=1e-05: unknown key; keys of optimizer: ... (did you mean optimizer.lr?)`"""
    known = sorted(map(str, known))
    close = difflib.get_close_matches(str(key), known, n=1)
    prefix = f"{path}." if path else ""
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return f"{shown}: unknown key; {f'keys of {path}' if path else 'config groups'}: {', '.join(known)}{hint}"


def map_problems(node: dict, schema: dict[str, Key], path: str) -> list[str]:
    """Every key of `node` known, every key of `schema` present and accepted; nested maps recursively."""
    problems = [unknown_key(f"{path}.{k}={_show(v)}", k, schema, path) for k, v in node.items() if k not in schema]
    for key, spec in schema.items():
        if key not in node:
            problems.append(f"{path}.{key} is missing; expected {spec.describe()}")
        elif not spec.accepts(node[key]):
            problems.append(f"{path}.{key}={_show(node[key])} is invalid; expected {spec.describe()}")
        elif spec.keys is not None and node[key] is not None:
            problems += map_problems(node[key], spec.keys, f"{path}.{key}")
    return problems


def check_config(cfg: DictConfig) -> None:
    """The composed config against the schemas of the components it names, then each component's own
    whole-config check (e.g. dataset.max_length against the checkpoint's positions). Every problem
    found goes into one ConfigError: a config is fixed in one go, not one key per attempt. The plugins come
    first (afqmc/config/plugins.py): the components they register are checked as the built-in ones."""
    plugins = OmegaConf.select(cfg, "plugins")
    plugins = OmegaConf.to_container(plugins) if OmegaConf.is_config(plugins) else plugins
    if not PLUGINS.accepts(plugins):
        raise ConfigError(f"plugins={_show(plugins)} is invalid; expected {PLUGINS.describe()}")
    load_plugins(plugins or [])
    known = [*GROUPS, *MULTI_GROUPS, "plugins", "card"]
    problems = [unknown_key(group, group, known) for group in cfg if group not in known]
    if "card" in cfg:  # (a run recorded before the key has none)
        card = _plain(cfg, "card")
        problems += map_problems(card, CARD.keys, "card") if isinstance(card, dict) else ["card: expected a map"]
    components = {}
    for registry in (*GROUPS.values(), COLLATORS):
        try:
            check_names(cfg, [registry])
        except ConfigError as e:
            problems.append(str(e))
        else:
            components[registry] = registry.component(OmegaConf.select(cfg, registry.key))
    named = tuple(f"{r.key}{end}" for r in (*GROUPS.values(), COLLATORS) if r not in components for end in " =")
    for group, registry in GROUPS.items():
        if registry in components and components[registry].schema is not None:
            _apply_group_defaults(cfg, group, components[registry].schema)
            try:
                found = map_problems(_plain(cfg, group), {"name": Key(str), **components[registry].schema}, group)
            except ConfigError as e:
                found = [str(e)]
            problems += [p for p in found if not p.startswith(named)]  # (a bad name is said once)
    for group, registry in MULTI_GROUPS.items():
        problems += _options_problems(cfg, group, registry, components)
    for component in components.values():
        try:
            if component.check is not None:
                component.check(cfg)
        except ConfigError as e:
            problems.append(str(e))
        except Exception:  # noqa: BLE001  (a check tripping over a value already found invalid)
            if not problems:
                raise
    if problems:
        many = f"{len(problems)} problems: " + " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        raise ConfigError(problems[0] if len(problems) == 1 else many)


# conf/dataset_defaults/: composed under `dataset` before the dataset chosen (conf/config.yaml), the keys that
# a dataset YAML of the built-in builder may leave out
GROUP_DEFAULTS = {"dataset": Path(__file__).resolve().parents[2] / "conf" / "dataset_defaults" / "sentence_pairs.yaml"}


def _apply_group_defaults(cfg: DictConfig, group: str, schema: dict) -> None:
    """conf/dataset_defaults/ as the chosen dataset's schema takes it. A dataset of another builder (a plugin's)
    got the built-in builder's defaults too: those its schema does not declare, still at their default value, go
    (one that the user set is still an unknown key). A key the schema declares and the config lacks (a run
    recorded before the key was added, a config composed without conf/config.yaml) takes its default."""
    if group not in GROUP_DEFAULTS or not isinstance(cfg.get(group), DictConfig):
        return
    defaults = OmegaConf.to_container(OmegaConf.load(GROUP_DEFAULTS[group]))
    node = cfg[group]
    with open_dict(node):
        for key, value in defaults.items():
            if key not in schema and key != "name" and key in node and _plain_value(node, key) == value:
                del node[key]
            elif key in schema and key not in node and node.get("name") == defaults["name"]:
                node[key] = value


def _plain_value(node: DictConfig, key: str):
    value = node[key]
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _options_problems(cfg: DictConfig, group: str, registry, components: dict) -> list[str]:
    """A group of which any number of options are chosen: each one's keys under cfg.<group>.<option>, checked
    against its registration's schema; the components found go into `components` for their own checks."""
    try:
        chosen = (_plain(cfg, group) if group in cfg else None) or {}
    except ConfigError as e:
        return [str(e)]
    problems = []
    for option, node in chosen.items():
        path = f"{group}.{option}"
        try:
            component = components[path] = registry.component(option)
        except ConfigError as e:
            problems.append(str(e))
            continue
        if not isinstance(node, dict):
            problems.append(f"{path}={_show(node)} is invalid; expected a map")
        elif component.schema is not None:
            problems += map_problems(node, component.schema, path)
    return problems


def _plain(cfg: DictConfig, group: str) -> dict:
    """A group as plain Python values, interpolations resolved."""
    try:
        return OmegaConf.to_container(cfg[group], resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{e.full_key or group}: {first_line(e)}") from None


def compose_error(e: Exception) -> str:
    """Hydra's own composition errors (a misspelt key or option, a bad override) as one line."""
    cause, text = e.__cause__, str(e)
    parent = getattr(cause, "parent_node", None)
    if isinstance(parent, DictConfig) and "not in struct" in str(cause):  # key=value on a key that is not there
        path = cause.full_key.rpartition(".")[0]
        override = re.search(r"use \+(\S+)", text)  # the override as typed, value included
        return unknown_key(override.group(1) if override else cause.full_key, cause.key, parent.keys(), path)
    if not text.strip() and cause is not None:  # e.g. a YAML !!set, which OmegaConf cannot hold
        return omegaconf_error(cause)
    if isinstance(cause, ValidationError) and text.startswith("Error merging override"):  # say what is wrong with it
        return f"{text}: {first_line(cause)}"  # e.g. null for hydra.launcher.tasks_per_node: "is not Optional"
    text = text.split("\nConfig search path:")[0]  # the search path is noise to a user
    text = re.sub(r":\n\t", ": ", text)  # "Available options in 'optimizer':\n\tadamw\n\tsgd"
    text = re.sub(r"\n\t", ", ", text)
    text = re.sub(r"\s*\n+\s*", ". ", text.strip())
    if re.search(r"Could not find 'hydra/(sweeper|launcher)/(optuna|joblib|submitit)", text):
        text += " (Hydra's search and launcher plugins come with pip install -e '.[sweeps]')"
    return text


def omegaconf_error(e: Exception) -> str:
    key = getattr(e, "full_key", None)
    return f"{key + ': ' if key else ''}{first_line(e) or type(e).__name__}"


def startup_error(e: Exception) -> str:
    """One line for what stops run.py before a run starts (run.py's cli)."""
    import yaml
    from hydra.errors import CompactHydraException

    if isinstance(e, CompactHydraException):
        return f"ConfigError: {compose_error(e)}"
    if isinstance(e, yaml.MarkedYAMLError):  # e.g. a tag such as !!python/object: never constructed
        mark = e.problem_mark or e.context_mark
        where = f"{mark.name}:{mark.line + 1}: " if mark else ""
        return f"ConfigError: {where}{e.problem or e.context} (config files are plain YAML: no tags)"
    if isinstance(e, OmegaConfBaseException):
        return f"ConfigError: {omegaconf_error(e)}"
    if isinstance(e, OSError) and e.filename:
        return f"RunDirError: {e.filename}: {e.strerror or e} (the run directory, hydra.run.dir or hydra.sweep.dir)"
    return error_line(e)

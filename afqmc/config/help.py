"""`python run.py --help`: the config groups, their options, and every key with its YAML comment.

Hydra's help template (conf/hydra/help/afqmc.yaml) takes the key listing from the resolver
${afqmc.help_keys:}, which reads the YAML files themselves, so the help says what they say.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CONF = Path(__file__).resolve().parents[2] / "conf"
# the groups with keys of their own
GROUPS = ("dataset", "model", "optimizer", "scheduler", "trainer", "logger", "callbacks")


def defaults() -> dict[str, str]:
    """{group: its default option}, from conf/config.yaml's defaults list."""
    chosen = {}
    for entry in yaml.safe_load((CONF / "config.yaml").read_text(encoding="utf-8"))["defaults"]:
        if isinstance(entry, dict):
            chosen.update({k: v for k, v in entry.items() if not k.startswith("override ")})
    return chosen


def _keys(text: str) -> set[str]:
    return {line.split(":")[0] for line in text.splitlines() if line[:1].isalpha()}


def _title(text: str) -> str:
    return next((line.lstrip("# ") for line in text.splitlines() if line.startswith("#")), "")


def help_keys() -> str:
    """Each group's default option in full (its keys, their values and comments), then each other option
    with its first comment line and the keys the default lacks. A group with no default (logger, of
    which any number may be chosen) has each option in full."""
    out, chosen = [], defaults()
    for group in GROUPS:
        if chosen.get(group) is None:
            out.append(f"{group}: none by default; one or several, {group}=OPTION or {group}=[OPTION,OPTION]")
            for path in sorted((CONF / group).glob("*.yaml")):
                text = path.read_text(encoding="utf-8")
                out.append(f"{group}={path.stem}: {_title(text)}")
                out += [f"  {line}" for line in text.splitlines() if line.strip() and not line.startswith("#")]
            out.append("")
            continue
        if group == "dataset":  # what every dataset YAML gets (conf/config.yaml composes it before the dataset)
            base = (CONF / "dataset_defaults" / "sentence_pairs.yaml").read_text(encoding="utf-8")
            out.append("dataset keys a dataset YAML may leave out (conf/dataset_defaults/sentence_pairs.yaml):")
            out += [f"  {line}" for line in base.splitlines() if line.strip() and not line.startswith("#")]
        default = (CONF / group / f"{chosen[group]}.yaml").read_text(encoding="utf-8")
        out.append(f"{group}={chosen[group]} (the default; conf/{group}/{chosen[group]}.yaml):")
        out += [f"  {line}" for line in default.splitlines() if line.strip()]
        for path in sorted((CONF / group).glob("*.yaml")):
            if path.stem == chosen[group]:
                continue
            text = path.read_text(encoding="utf-8")
            out.append(f"{group}={path.stem}: {_title(text)}")
            new = _keys(text) - _keys(default)
            out += [f"  {line}" for line in text.splitlines() if line[:1].isalpha() and line.split(":")[0] in new]
        out.append("")
    out += _searchpath_options()
    return "\n".join(out).replace("$", "$$")  # Hydra fills the template with string.Template: $ is its sign


def searchpath_dirs() -> list[Path]:
    """The directories of hydra.searchpath (`file://DIR` entries; `pkg://` ones are packages) in the run
    being composed: where a user keeps YAML files of their own."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    entries = HydraConfig.get().searchpath or []
    return [Path(str(e)[len("file://") :]) for e in entries if str(e).startswith("file://")]


def _searchpath_options() -> list[str]:
    """Each option found in a hydra.searchpath directory, in full: Hydra's own group listing leaves them out."""
    out = []
    for root in searchpath_dirs():
        for path in sorted(root.glob("*/*.yaml")):
            text = path.read_text(encoding="utf-8")
            title = _title(text)
            out.append(f"{path.parent.name}={path.stem} (hydra.searchpath: {path}){': ' * bool(title)}{title}")
            out += [f"  {line}" for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [*out, ""] if out else []

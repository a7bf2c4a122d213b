"""Every option of every config group composes, and its component name is registered; --help lists them."""

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from afqmc.config.help import defaults
from afqmc.config.registry import check_names
from afqmc.errors import ConfigError

from .conftest import CONF, compose_cfg

OPTIONS = [
    (group, f.stem)
    for group in ("dataset", "model", "optimizer", "scheduler", "trainer", "logger", "experiment")
    for f in sorted((CONF / group).glob("*.yaml"))
]


def test_every_group_has_options():
    groups = {g for g, _ in OPTIONS}
    assert groups == {"dataset", "model", "optimizer", "scheduler", "trainer", "logger", "experiment"}
    assert {"adamw", "sgd", "linear", "cosine", "constant", "clue_baseline", "smoke"} <= {o for _, o in OPTIONS}


@pytest.mark.parametrize("group,option", OPTIONS)
def test_option_composes_and_is_registered(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    check_names(cfg)


KNOBS = [o for o in OPTIONS if o[0] != "experiment"] + [("dataset_defaults", "sentence_pairs")]


@pytest.mark.parametrize("group,option", KNOBS)
def test_every_knob_has_a_comment(group, option):
    """Each top-level key of a group option carries a one-line comment (nested maps: on the parent)."""
    path = CONF / group / f"{option}.yaml"
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line[:1].isalpha():
            assert "#" in line, f"{path}:{n} has no comment: {line!r}"


def test_clue_baseline_recipe():
    cfg = compose_cfg(["experiment=clue_baseline"])
    assert (cfg.optimizer.lr, cfg.trainer.batch_size, cfg.trainer.epochs, cfg.dataset.max_length) == (2e-5, 16, 3, 128)


def test_command_line_overrides_win_over_experiment():
    cfg = compose_cfg(["experiment=smoke", "optimizer.lr=1e-4", "trainer.epochs=2"])
    assert (cfg.optimizer.lr, cfg.trainer.epochs) == (1e-4, 2)


@pytest.mark.parametrize(
    "key", ["dataset.name", "dataset.collate", "model.name", "optimizer.name", "scheduler.name", "trainer.name"]
)
def test_unknown_name_lists_registered(key):
    cfg = compose_cfg([f"{key}=nope"])
    with pytest.raises(ConfigError, match=rf"{key}='nope' is not registered; registered: .+") as e:
        check_names(cfg)
    if key == "optimizer.name":
        assert "adamw, sgd" in str(e.value)


def test_help_lists_every_group_option_and_key_with_its_comment():
    proc = subprocess.run([sys.executable, str(CONF.parent / "run.py"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    help_text = proc.stdout
    assert "powered by Hydra" not in help_text and "== Config groups (group=option) ==" in help_text
    for group in ("dataset", "model", "optimizer", "scheduler", "trainer", "logger", "experiment", "hparams_search"):
        options = ", ".join(sorted(f.stem for f in (CONF / group).glob("*.yaml")))
        assert f"{group}: {options}" in help_text, group
    chosen = defaults()
    for group, option in OPTIONS:  # every key of the default options; of the others, those the default lacks
        if group == "experiment":
            continue
        if chosen.get(group) is None:  # logger: no default, every option in full
            for line in (CONF / group / f"{option}.yaml").read_text().splitlines():
                assert line.startswith("#") or f"  {line}" in help_text.splitlines(), line
            continue
        listed = {line.split(":")[0] for line in (CONF / group / f"{chosen[group]}.yaml").read_text().splitlines()}
        for line in (CONF / group / f"{option}.yaml").read_text().splitlines():
            if line[:1].isalpha() and (option == chosen[group] or line.split(":")[0] not in listed):
                assert f"  {line}" in help_text.splitlines(), line

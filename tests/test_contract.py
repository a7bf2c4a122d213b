"""The contract of afqmc/config/registry.py holds for components afqmc has never seen: a user's plugin
(tests/plugin/bag_plugin.py, copied into a user's directory) registers a model that is not a transformers model,
a dataset that is not one of afqmc's, and a callback. A run with them trains, is interrupted and resumed to the
identical result, and its checkpoint predicts (afqmc.predict --file) and re-scores (afqmc.evaluate)."""

import json
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from afqmc.config.plugins import load_plugins
from afqmc.config.registry import MODELS
from afqmc.errors import ConfigError

from .conftest import ENV, read_jsonl, records, run_py, signal_at, summary, write_jsonl
from .test_train import product_pairs

PLUGIN = Path(__file__).parent / "plugin" / "bag_plugin.py"
MODEL_YAML = """# python run.py plugins=[bag_plugin] model=bag
name: bag
tokenizer: ???  # a transformers tokenizer's directory
dim: 16  # the embeddings' width
"""
DATASET_YAML = """# python run.py plugins=[bag_plugin] dataset=json_pairs
name: json_pairs
collate: pad_ids
task: bags
root: data
splits: {train: train.json, dev: dev.json, test: test.json}
label_map: {"no": 0, "yes": 1}
max_length: 32
"""


def pairs(rng, n) -> list[list[str]]:
    return [[r["sentence1"], r["sentence2"], "yes" if r["label"] == "1" else "no"] for r in product_pairs(rng, n)]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A user's directory: the plugin module, its YAML files (conf/), its data in its own format (data/)."""
    home = tmp_path_factory.mktemp("user")
    shutil.copy(PLUGIN, home / PLUGIN.name)
    (home / "conf" / "model").mkdir(parents=True)
    (home / "conf" / "dataset").mkdir()
    (home / "conf" / "model" / "bag.yaml").write_text(MODEL_YAML)
    (home / "conf" / "dataset" / "json_pairs.yaml").write_text(DATASET_YAML)
    rng = random.Random(3)
    (home / "data").mkdir()
    for split, n in (("train", 48), ("dev", 16), ("test", 12)):
        (home / "data" / f"{split}.json").write_text(json.dumps({"pairs": pairs(rng, n)}, ensure_ascii=False))
    return home


def user_args(home: Path, tokenizer: Path, run_dir: Path) -> list[str]:
    return [
        "plugins=[bag_plugin]",
        f"hydra.searchpath=[file://{home / 'conf'}]",
        "model=bag",
        "dataset=json_pairs",
        f"model.tokenizer={tokenizer}",
        "trainer.epochs=3",
        "trainer.batch_size=4",
        "trainer.log_every=1",
        "trainer.save_every_steps=5",
        "optimizer.lr=0.05",
        f"+callbacks.count_events.file={run_dir}.events",
        f"hydra.run.dir={run_dir}",
    ]


def run_in(home: Path, *args, module=None):
    """python run.py ARGS (or python -m MODULE ARGS) in the user's directory, as the user runs it."""
    command = ["-m", module] if module else [str(Path(__file__).parents[1] / "run.py")]
    return subprocess.run([sys.executable, *command, *args], cwd=home, env=ENV, capture_output=True, text=True)


@pytest.fixture(scope="module")
def straight(user_dir, tiny_bert_dir):
    run_dir = user_dir / "straight"
    proc = run_in(user_dir, *user_args(user_dir, tiny_bert_dir, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def weights(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "bag.pt", weights_only=True)


@pytest.mark.slow
def test_a_plugin_model_and_dataset_train_and_resume_to_the_identical_result(user_dir, tiny_bert_dir, straight):
    straight_dir, proc = straight
    assert "plain dropout" in proc.stderr + proc.stdout  # fast dropout does not apply: said, no crash
    result = summary(straight_dir)
    assert result["status"] == "completed" and result["train"]["steps"] == 36  # 12 batches x 3 epochs
    events = (straight_dir.parent / "straight.events").read_text().splitlines()
    assert events.count("end completed") == 1 and "save best True" in events and "save last True" in events
    assert sum(e.startswith("evaluate") for e in events) == 3 and sum(e.startswith("step") for e in events) == 36
    assert "not a transformers model" in (straight_dir / "checkpoints" / "best" / "README.md").read_text()

    killed = user_dir / "killed"
    args = user_args(user_dir, tiny_bert_dir, killed)
    proc = signal_at(20, signal.SIGKILL, *args, point="saved", cwd=user_dir)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:]
    resumed = run_in(user_dir, *args, "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert records(killed) == records(straight_dir)
    assert summary(killed)["dev"] == result["dev"] and summary(killed)["best"] == result["best"]
    for name, tensor in weights(straight_dir / "checkpoints" / "best").items():
        assert torch.equal(tensor, weights(killed / "checkpoints" / "best")[name]), name
    assert read_jsonl(killed / "predictions" / "bags_predict.json") == read_jsonl(
        straight_dir / "predictions" / "bags_predict.json"
    )


@pytest.mark.slow
def test_a_plugin_models_checkpoint_predicts_and_rescores(user_dir, straight):
    run_dir, _ = straight
    best = run_dir / "checkpoints" / "best"
    dev = json.loads((user_dir / "data" / "dev.json").read_text())["pairs"]
    rows = [{"sentence1": a, "sentence2": b, "label": label} for a, b, label in dev]
    file = write_jsonl(user_dir / "dev.jsonl", rows)
    out = user_dir / "predicted.jsonl"
    proc = run_in(user_dir, str(best), "--file", str(file), "--output", str(out), module="afqmc.predict")
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted = read_jsonl(out)
    assert len(predicted) == len(rows) and {p["label"] for p in predicted} <= {"yes", "no"}
    dev_metrics = summary(run_dir)["dev"]
    # the file is the dev split: the same accuracy as the run scored
    assert f"accuracy {dev_metrics['accuracy']:.4f}" in proc.stdout

    proc = run_in(user_dir, str(best), dev[0][0], dev[0][1], module="afqmc.predict")
    assert proc.returncode == 0 and proc.stdout.startswith("label "), proc.stderr[-3000:]

    proc = run_in(user_dir, str(run_dir), module="afqmc.evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = json.loads(Path(proc.stdout.strip().splitlines()[-1].removeprefix("written ")).read_text())
    assert scored["metrics"] == pytest.approx(dev_metrics, abs=1e-6)


def test_a_plugin_that_fails_to_import_is_one_line_naming_it(tmp_path):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('no GPU driver here')\n")
    proc = run_py("plugins=[broken_plugin,bag_plugin]", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    message = "ConfigError: plugins: 'broken_plugin' could not be imported: RuntimeError: no GPU driver here"
    assert proc.returncode == 1 and "Traceback" not in out, out
    assert (
        [line for line in out.splitlines() if "Error" in line]
        == [line for line in out.splitlines() if line.endswith(message)]
        != []
    ), out
    assert not (tmp_path / "run").exists()  # a config error leaves no run directory
    with pytest.raises(ConfigError, match=r"^plugins: 'no_such_module' could not be imported: ModuleNotFoundError"):
        load_plugins(["no_such_module"])


def test_an_installed_packages_entry_point_registers_its_components(tmp_path, monkeypatch):
    """The entry-point group afqmc.plugins: a package's module imported without naming it in the config."""
    shutil.copy(PLUGIN, tmp_path / "ep_bag_plugin.py")
    info = tmp_path / "bag_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bag-models\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[afqmc.plugins]\nbags = ep_bag_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    if "bag" in MODELS._items:  # registered by another test's import of the same file under another name
        monkeypatch.delitem(MODELS._items, "bag")
    load_plugins([])
    assert MODELS.component("bag").hooks["load"].__module__ == "ep_bag_plugin"

"""Day two (issue 25): a corpus in six keys, configs outside the repo, parquet and `datasets` folders, a capped
test split, the messages a newcomer met, the model card a Hub user expects."""

import json

import pytest
from omegaconf import OmegaConf

import afqmc
from afqmc.config.schema import check_config
from afqmc.errors import ConfigError
from tests.conftest import ROOT, compose_cfg, summary

# everything a corpus needs to say: the rest has defaults (conf/dataset_defaults/sentence_pairs.yaml)
MINIMAL_YAML = """task: sentiment
root: {root}
format: tsv
splits: {{train: train.tsv, dev: dev.tsv, test: test.tsv}}
columns: {{text_a: text, text_b: null, label: label}}
label_map: {{neg: 0, pos: 1}}
"""
TEXTS = [("借呗还款太慢了", "neg"), ("花呗额度提高真好", "pos"), ("信用卡逾期很烦", "neg"), ("支付宝开通很快", "pos")]


def write_tsv(path, rows, header=("text", "label")):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in ([header] if header else []) + list(rows)))
    return path


@pytest.fixture
def user_conf(tmp_path):
    """A user's own config directory (hydra.searchpath) with the minimal YAML of a sentiment corpus."""
    data = tmp_path / "data"
    write_tsv(data / "train.tsv", TEXTS * 4)
    write_tsv(data / "dev.tsv", TEXTS)
    write_tsv(data / "test.tsv", [(t, "") for t, _ in TEXTS] * 2)
    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    (tmp_path / "conf" / "dataset" / "mine.yaml").write_text(MINIMAL_YAML.format(root=data))
    return tmp_path / "conf"


def mine(user_conf, *overrides):
    return compose_cfg([f"hydra.searchpath=[file://{user_conf}]", "dataset=mine", *overrides])


def test_a_corpus_yaml_of_six_keys_is_complete_and_its_label_map_replaces_the_default(user_conf, tmp_path, caplog):
    caplog.set_level("INFO")
    cfg = mine(user_conf, "experiment=smoke", "dataset.max_length=32", "trainer.epochs=1")
    afqmc.train(cfg, tmp_path / "run")
    assert "data: 16 train, 4 dev, 8 test examples" in caplog.text  # single sentences: no "pairs"
    # the smoke vocabulary knows AFQMC-style questions, not this corpus' characters
    assert "% of the train split's tokens are [UNK]: the tokenizer of model.checkpoint=" in caplog.text
    assert cfg.dataset.name == "sentence_pairs" and cfg.dataset.collate == "pair_tokenize"
    assert dict(cfg.dataset.label_map) == {"neg": 0, "pos": 1}  # its own, not merged with AFQMC's "0"/"1"
    result = summary(tmp_path / "run")
    assert result["status"] == "completed"
    predictions = (tmp_path / "run" / "predictions" / "sentiment_predict.json").read_text().splitlines()
    assert len(predictions) == 8 and {json.loads(p)["label"] for p in predictions} <= {"neg", "pos"}


def test_a_required_key_left_out_is_named(user_conf):
    path = user_conf / "dataset" / "mine.yaml"
    path.write_text("".join(line for line in path.read_text().splitlines(True) if not line.startswith("format:")))
    with pytest.raises(ConfigError, match="dataset.format is missing; expected one of 'jsonl'"):
        check_config(mine(user_conf))


def test_experiment_smoke_leaves_another_datasets_data_alone(user_conf):
    cfg = mine(user_conf, "experiment=smoke")
    assert cfg.dataset.root.endswith("data") and cfg.dataset.max_length == 128  # the user's, not smoke's
    with pytest.raises(ConfigError, match="dataset.max_length=128.*max_position_embeddings"):  # said in one line
        check_config(cfg)
    assert compose_cfg(["experiment=smoke"]).dataset.root == str(afqmc.ASSETS / "smoke")


def test_a_capped_test_split_predicts_its_first_lines_marked_partial_and_is_no_submission(tmp_path, caplog):
    from afqmc.clue_submission import run_predictions
    from afqmc.errors import SubmissionError

    small = ["dataset.max_train_samples=32", "dataset.max_eval_samples=16"]
    cfg = compose_cfg(["experiment=smoke", "dataset.max_test_samples=3", "trainer.epochs=1", *small])
    afqmc.train(cfg, tmp_path)
    assert len((tmp_path / "predictions" / "afqmc_predict.json").read_text().splitlines()) == 3
    assert summary(tmp_path)["predictions_partial"] is True
    assert "dataset.max_test_samples=3: predictions cover those test lines only" in caplog.text
    assert "tokens are [UNK]" not in caplog.text  # the smoke data, in the smoke vocabulary
    with pytest.raises(SubmissionError, match="predictions are partial"):
        run_predictions(tmp_path)


def test_a_resume_gets_the_runs_searchpath_made_absolute(tmp_path):
    from afqmc.runs.records import resume_argv

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- dataset=mine\n")
    (run / ".hydra" / "hydra.yaml").write_text(
        f"hydra:\n  searchpath: ['file://conf', 'pkg://x.conf']\n  runtime: {{cwd: {tmp_path}}}\n"
    )
    argv = resume_argv(["run.py", f"hydra.run.dir={run}", "trainer.resume=true"])
    assert f"hydra.searchpath=['file://{tmp_path}/conf','pkg://x.conf']" in argv and "dataset=mine" in argv


@pytest.mark.slow
def test_the_printed_resume_command_of_a_run_on_a_users_config_directory_works_pasted(user_conf, tmp_path):
    """SIGTERM a run whose dataset YAML is in the user's directory (a relative hydra.searchpath), then run the
    command it printed, as printed, from another directory."""
    import shlex
    import signal
    import subprocess
    import sys

    from tests.conftest import ENV, signal_at

    args = ["hydra.searchpath=[file://conf]", "dataset=mine", "experiment=smoke", "dataset.max_length=32"]
    proc = signal_at(
        2,
        signal.SIGTERM,
        *args,
        "trainer.epochs=1",
        "trainer.batch_size=4",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 143, proc.stdout[-3000:]
    printed = proc.stdout.split("go on with: ")[1].splitlines()[0]
    assert printed == f"python run.py hydra.run.dir={tmp_path / 'run'} trainer.resume=true"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = [sys.executable, str(ROOT / "run.py"), *shlex.split(printed)[2:]]
    proc = subprocess.run(command, cwd=elsewhere, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and summary(tmp_path / "run")["status"] == "completed", proc.stderr[-3000:]


def test_help_lists_the_options_of_a_users_config_directory(user_conf):
    import subprocess
    import sys

    from tests.conftest import ENV

    proc = subprocess.run(
        [sys.executable, "run.py", f"hydra.searchpath=[file://{user_conf}]", "--help"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"dataset=mine (hydra.searchpath: {user_conf / 'dataset' / 'mine.yaml'})" in proc.stdout, proc.stdout
    assert "  label_map: {neg: 0, pos: 1}" in proc.stdout


# ---------------------------------------------------------------- parquet and `datasets` (dataset.format=parquet|hf)
PAIRS = [
    ("借呗怎么还款", "如何还借呗", 1),
    ("花呗额度", "余额宝收益", 0),
    ("信用卡逾期", "信用卡晚还", 1),
    ("支付宝开通", "网商贷关闭", 0),
]


def write_parquet(path, rows, label_names=("0", "1")):
    """A parquet file as `datasets` writes one: the label an integer column, its names in the schema's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = {"label": {"names": list(label_names), "_type": "ClassLabel"}}
    table = pa.Table.from_pylist(rows).replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def pair_rows(n, ids=False):
    return [
        {"sentence1": a, "sentence2": b, "label": y, **({"id": 100 + i} if ids else {})}
        for i, (a, b, y) in enumerate((PAIRS * n)[:n])
    ]


def parquet_cfg(root, *overrides):
    return compose_cfg(
        ["experiment=smoke", "dataset.format=parquet", f"dataset.root={root}", "dataset.splits.train=train.parquet"]
        + ["dataset.splits.dev=dev.parquet", "dataset.splits.test=test.parquet", "trainer.epochs=1", *overrides]
    )


def test_a_parquet_corpus_trains_predicts_and_is_fingerprinted(tmp_path):
    from afqmc.data.components import build_dataset

    write_parquet(tmp_path / "d" / "train.parquet", pair_rows(16))
    write_parquet(tmp_path / "d" / "dev.parquet", pair_rows(4))
    write_parquet(
        tmp_path / "d" / "test.parquet", [{k: v for k, v in r.items() if k != "label"} for r in pair_rows(6, 1)]
    )
    cfg = parquet_cfg(tmp_path / "d")
    afqmc.train(cfg, tmp_path / "run")
    predictions = (tmp_path / "run" / "predictions" / "afqmc_predict.json").read_text().splitlines()
    assert [json.loads(p)["id"] for p in predictions] == list(range(100, 106))
    before = build_dataset(cfg.dataset, "dev").fingerprint()
    write_parquet(tmp_path / "d" / "dev.parquet", pair_rows(4)[::-1])  # the same rows, another order
    assert build_dataset(cfg.dataset, "dev").fingerprint()["sha256"] != before["sha256"]


def test_parquet_rows_stream_in_batches_and_a_bad_row_is_named_by_file_and_row(tmp_path, monkeypatch):
    from afqmc.data import tables
    from afqmc.data.components import build_dataset
    from afqmc.errors import DataError

    monkeypatch.setattr(tables, "BATCH_ROWS", 2)  # five rows in three batches
    rows = pair_rows(5)
    rows[4]["sentence2"] = None
    path = write_parquet(tmp_path / "train.parquet", rows)
    cfg = parquet_cfg(tmp_path, "dataset.streaming=true").dataset
    with pytest.raises(DataError, match=rf"^{path}:row 5: missing field 'sentence2'"):
        build_dataset(cfg, "train").count()
    skipping = build_dataset(
        parquet_cfg(tmp_path, "dataset.on_bad_line=skip", "dataset.streaming=true").dataset, "train"
    )
    assert skipping.count() == 4 and skipping.skipped_lines == 1
    assert [e["text_a"] for e in skipping] == [r["sentence1"] for r in rows[:4]]
    write_parquet(tmp_path / "train.parquet", pair_rows(3), label_names=("no", "yes"))  # names: not in label_map
    with pytest.raises(DataError, match=r"train.parquet:row 1: label 'yes' is not in dataset.label_map"):
        build_dataset(cfg, "train").count()
    (tmp_path / "train.parquet").write_text("sentence1,sentence2,label\n")
    with pytest.raises(DataError, match=rf"^{tmp_path / 'train.parquet'}: not a parquet file"):
        build_dataset(cfg, "train")


def test_a_datasets_folder_maps_its_class_label_names_and_is_fingerprinted(tmp_path):
    datasets = pytest.importorskip("datasets")  # the optional extra .[hf], which the test extras install
    from afqmc.data.components import build_dataset

    features = datasets.Features(
        {
            "q1": datasets.Value("string"),
            "q2": datasets.Value("string"),
            "same": datasets.ClassLabel(names=["no", "yes"]),
        }
    )
    rows = {"q1": [r[0] for r in PAIRS], "q2": [r[1] for r in PAIRS], "same": [r[2] for r in PAIRS]}
    data = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(train=data, validation=data.select([0, 1])).save_to_disk(str(tmp_path / "hf"))
    overrides = ["dataset.format=hf", f"dataset.root={tmp_path / 'hf'}", "dataset.splits.dev=validation"]
    overrides += ["dataset.splits.train=train", "dataset.splits.test=null", "dataset.columns.text_a=q1"]
    overrides += ["dataset.columns.text_b=q2", "dataset.columns.label=same", "~dataset.label_map"]
    cfg = compose_cfg(["experiment=smoke", *overrides, "+dataset.label_map={no: 0, yes: 1}", "trainer.epochs=1"])
    afqmc.train(cfg, tmp_path / "run")
    assert summary(tmp_path / "run")["status"] == "completed"
    dev = build_dataset(cfg.dataset, "dev")
    assert [(e["text_a"], e["label"]) for e in dev.examples] == [(PAIRS[0][0], 1), (PAIRS[1][0], 0)]
    assert dev.fingerprint()["file"] == f"{tmp_path / 'hf'}[validation]" and len(dev.fingerprint()["sha256"]) == 64
    from afqmc.errors import DataError

    cfg.dataset.splits.dev = "dev"
    with pytest.raises(DataError, match=r"no split folder 'dev' \(splits: train, validation\)"):
        build_dataset(cfg.dataset, "dev")


def test_a_hub_dataset_offline_and_not_cached_is_one_clear_line(monkeypatch):
    pytest.importorskip("datasets")
    from huggingface_hub import constants

    from afqmc.data.components import build_dataset
    from afqmc.errors import DataError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = compose_cfg(["dataset.format=hf", "dataset.root=someone/not-cached", "dataset.splits.train=train"]).dataset
    with pytest.raises(DataError, match="not in the datasets cache, and the Hub cannot be reached"):
        build_dataset(cfg, "train")


def test_format_hf_without_the_datasets_package_says_what_to_install(monkeypatch, tmp_path):
    import sys

    from afqmc.data.components import build_dataset

    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    (tmp_path / "train").mkdir()
    cfg = compose_cfg(["dataset.format=hf", f"dataset.root={tmp_path}", "dataset.splits.train=train"]).dataset
    with pytest.raises(ConfigError, match=r"dataset.format=hf needs the datasets package.*pip install -e '.\[hf\]'"):
        build_dataset(cfg, "train")


# ---------------------------------------------------------------- messages a newcomer met
def test_the_bar_of_an_epoch_cut_by_max_steps_closes_as_done(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: the bar shows
    small = ["dataset.max_eval_samples=16", "trainer.predict=false"]
    afqmc.train(compose_cfg(["experiment=smoke", "trainer.max_steps=2", "trainer.epochs=3", *small]), tmp_path)
    last = [line for line in capsys.readouterr().err.split("\r") if "epoch 1/3" in line][-1]
    assert "epoch 1/3, done at trainer.max_steps=2: 100%" in last and " 2/2 " in last, last


def test_header_false_on_a_file_with_a_header_says_line_1_looks_like_one(tmp_path):
    from afqmc.data.components import build_dataset
    from afqmc.errors import DataError

    write_tsv(tmp_path / "train.tsv", [("借呗还款", "如何还借呗", "1")], header=("sentence1", "sentence2", "label"))
    overrides = ["dataset.format=tsv", "dataset.header=false", f"dataset.root={tmp_path}", "dataset.columns.id=null"]
    overrides += ["dataset.columns.text_a=0", "dataset.columns.text_b=1", "dataset.columns.label=2"]
    cfg = compose_cfg(["experiment=smoke", *overrides, "dataset.splits.train=train.tsv"]).dataset
    message = r"train.tsv:1: label 'label' is not in dataset.label_map .*; line 1 looks like a header"
    with pytest.raises(DataError, match=message):
        build_dataset(cfg, "train")


# ---------------------------------------------------------------- the model card a Hub user expects
def test_the_model_card_says_language_license_base_model_and_clues_hub_id(tmp_path, monkeypatch):
    from huggingface_hub import metadata_load

    from afqmc.runs.card import CheckpointInfo, model_card

    def card(*overrides):
        cfg = OmegaConf.to_container(compose_cfg(list(overrides)), resolve=True)
        (tmp_path / "README.md").write_text(model_card(CheckpointInfo(config=cfg, step=7), tmp_path))
        return metadata_load(tmp_path / "README.md")

    base = tmp_path / "base"  # a local base model whose own card declares its license
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    meta = card(f"model.checkpoint={base}", "dataset.root=/data/afqmc")
    assert meta["language"] == "zh" and meta["license"] == "apache-2.0" and meta["datasets"] == ["clue"]
    assert "base_model" not in meta  # a local directory is no Hub name
    assert card(f"model.checkpoint={base}", "card.license=mit")["license"] == "mit"  # the user's key wins
    meta = card("model.checkpoint=bert-base-chinese", "dataset.task=bq")  # (not in this machine's cache)
    assert meta["base_model"] == "bert-base-chinese" and "license" not in meta and "datasets" not in meta
    assert "datasets" not in card("experiment=smoke")  # the shipped smoke pairs are no CLUE data


def test_afqmc_evaluate_logs_its_metrics_to_the_runs_tracker(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from afqmc.evaluate import evaluate_run

    small = ["dataset.max_train_samples=32", "dataset.max_eval_samples=16", "trainer.predict=false"]
    afqmc.train(compose_cfg(["experiment=smoke", "trainer.epochs=1", "logger=tensorboard", *small]), tmp_path)
    record = json.loads(evaluate_run(tmp_path, "best", "dev").read_text())
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = events.Scalars("eval/best/dev/f1_macro")
    assert [(e.step, e.value) for e in logged] == [
        (summary(tmp_path)["train"]["steps"], pytest.approx(record["metrics"]["f1_macro"]))
    ]


def test_a_duplicate_id_in_a_parquet_test_split_names_both_rows(tmp_path):
    from afqmc.data.components import build_dataset
    from afqmc.errors import DataError

    rows = [{k: v for k, v in r.items() if k != "label"} for r in pair_rows(3, ids=True)]
    rows[2]["id"] = 100
    path = write_parquet(tmp_path / "test.parquet", rows)
    cfg = parquet_cfg(tmp_path).dataset
    with pytest.raises(DataError, match=rf"^{path}:row 3: duplicate prediction id 100: row 1 \(id 100\) and row 3"):
        build_dataset(cfg, "test")


def test_a_config_recorded_before_a_dataset_key_existed_takes_its_default():
    """afqmc.evaluate on an older run: its .hydra/config.yaml has no dataset.max_test_samples, no dataset.subset."""
    from omegaconf import open_dict

    cfg = compose_cfg(["experiment=smoke"])
    with open_dict(cfg):
        del cfg.dataset.max_test_samples, cfg.dataset.subset
    check_config(cfg)
    assert cfg.dataset.max_test_samples is None and cfg.dataset.subset is None


def test_a_sweeper_plugin_not_installed_names_the_extra():
    from hydra.errors import MissingConfigException

    from afqmc.config.schema import compose_error

    error = MissingConfigException("In 'hydra/config': Could not find 'hydra/sweeper/optuna'.\nAvailable ...")
    assert compose_error(error).endswith("(Hydra's search and launcher plugins come with pip install -e '.[sweeps]')")


def test_predict_reads_a_file_for_a_model_trained_on_a_datasets_split():
    """The run's dataset.format=hf names no file format: --file's comes from its name (a folder is no file)."""
    from types import SimpleNamespace

    from afqmc.predict import file_config

    trained = SimpleNamespace(dataset=compose_cfg(["dataset.format=hf"]).dataset, labels=["0", "1"])
    flags = dict(format=None, text_a=None, text_b=None, label=None, id=None, single=False)
    assert file_config(trained, SimpleNamespace(file="x.parquet", **flags)).format == "parquet"
    assert file_config(trained, SimpleNamespace(file="pairs.jsonl", **flags)).format == "jsonl"


def test_a_label_map_merged_by_inheriting_afqmc_says_why(user_conf):
    path = user_conf / "dataset" / "mine.yaml"
    path.write_text("defaults: [afqmc, _self_]\n" + path.read_text())
    with pytest.raises(ConfigError, match=r"holds AFQMC's labels '0' and '1' besides its own: .* leave that line out"):
        check_config(mine(user_conf, "experiment=smoke"))

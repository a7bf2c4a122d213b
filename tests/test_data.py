"""Readers, datasets, errors with file and line, collate, download with checksums."""
import hashlib
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from afqmc.data import PairCollator, StreamingPairDataset, build_dataset, ensure_downloaded, read_examples
from afqmc.errors import DataError

from .conftest import compose_cfg, write_jsonl


def afqmc_cfg(root, *overrides):
    return compose_cfg([f"dataset.root={root}", *overrides]).dataset


def test_afqmc_jsonl_labels_and_test_ids(pairs_dir):
    cfg = afqmc_cfg(pairs_dir)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert len(train) == 12 and train[0] == {"text_a": "借呗怎么还款", "text_b": "如何还借呗", "label": 1, "id": 0, "index": 0}
    assert [test[i]["id"] for i in range(len(test))] == [10, 11, 12, 13]
    assert all(test[i]["label"] is None for i in range(len(test)))


def test_int_labels_are_accepted(tmp_path):
    path = write_jsonl(tmp_path / "train.json", [{"sentence1": "a", "sentence2": "b", "label": 1}])
    assert [e["label"] for e in read_examples(path, afqmc_cfg(tmp_path), labeled=True)] == [1]


def test_caps_apply_to_train_and_dev_only(pairs_dir):
    cfg = afqmc_cfg(pairs_dir, "dataset.max_train_samples=5", "dataset.max_eval_samples=2")
    assert [len(build_dataset(cfg, s)) for s in ("train", "dev", "test")] == [5, 2, 4]


def test_streaming_yields_the_same_examples(pairs_dir):
    cfg = afqmc_cfg(pairs_dir, "dataset.streaming=true", "dataset.max_train_samples=7")
    stream = build_dataset(cfg, "train")
    assert isinstance(stream, StreamingPairDataset)
    in_memory = build_dataset(afqmc_cfg(pairs_dir, "dataset.max_train_samples=7"), "train")
    assert list(stream) == [in_memory[i] for i in range(7)]
    assert list(stream) == list(stream)  # every epoch re-reads the file


@pytest.mark.parametrize("fmt,sep", [("csv", ","), ("tsv", "\t")])
def test_other_corpus_by_yaml_only(tmp_path, fmt, sep):
    """Own column names and label values, declared in config alone."""
    lines = [sep.join(["q1", "q2", "same"]), sep.join(["你好", "您好", "yes"]), sep.join(["天气", "股票", "no"])]
    (tmp_path / f"train.{fmt}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = afqmc_cfg(tmp_path, f"dataset.format={fmt}", f"dataset.splits.train=train.{fmt}",
                    "dataset.columns.text_a=q1", "dataset.columns.text_b=q2", "dataset.columns.label=same",
                    "~dataset.label_map", "+dataset.label_map={no: 0, yes: 1}")
    ds = build_dataset(cfg, "train")
    assert [(e["text_a"], e["text_b"], e["label"]) for e in ds.examples] == [("你好", "您好", 1), ("天气", "股票", 0)]


BAD_LINES = [
    ('{"sentence1": "a", "sentence2": "b", "label": "0"', r"train.json:2: invalid JSON"),
    ('["a", "b", "0"]', r"train.json:2: expected a JSON object, got list"),
    ('{"sentence1": "a", "label": "0"}', r"train.json:2: missing field 'sentence2'"),
    ('{"sentence1": "a", "sentence2": "b"}', r"train.json:2: missing field 'label'"),
    ('{"sentence1": "a", "sentence2": "b", "label": "2"}', r"train.json:2: label '2' is not in dataset.label_map \(allowed: 0, 1\)"),
    ('{"sentence1": " ", "sentence2": "b", "label": "0"}', r"train.json:2: field 'sentence1' must be a non-empty string"),
    ('{"sentence1": 5, "sentence2": "b", "label": "0"}', r"train.json:2: field 'sentence1' must be a non-empty string, got 5"),
]


@pytest.mark.parametrize("bad,message", BAD_LINES)
def test_bad_line_names_file_and_line(tmp_path, bad, message):
    good = '{"sentence1": "a", "sentence2": "b", "label": "1"}'
    (tmp_path / "train.json").write_text(f"{good}\n{bad}\n{good}\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        build_dataset(afqmc_cfg(tmp_path), "train")


def test_missing_split_and_empty_file(tmp_path):
    with pytest.raises(DataError, match=r"train.json: split file 'train' not found"):
        build_dataset(afqmc_cfg(tmp_path), "train")
    (tmp_path / "train.json").write_text("")
    with pytest.raises(DataError, match=r"train.json: no examples \(the file is empty\)"):
        build_dataset(afqmc_cfg(tmp_path), "train")


def test_collate_pads_truncates_and_marks_segments(tiny_bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    examples = [{"text_a": "借呗怎么还款", "text_b": "花呗", "label": 1, "index": 0},
                {"text_a": "借呗", "text_b": "花", "label": 0, "index": 1}]
    batch = PairCollator(tok, max_length=64)(examples)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (2, 11)
    # [CLS] 6 chars [SEP] | 2 chars [SEP]: segment A is 0, segment B is 1, padding is masked out
    assert batch["token_type_ids"][0].tolist() == [0] * 8 + [1] * 3
    assert batch["attention_mask"][1].tolist() == [1] * 6 + [0] * 5
    assert batch["labels"].tolist() == [1, 0] and batch["index"].tolist() == [0, 1]
    assert PairCollator(tok, max_length=6)(examples)["input_ids"].shape == (2, 6)
    assert PairCollator(tok, max_length=64, pad_to_multiple_of=8)(examples)["input_ids"].shape == (2, 16)
    unlabeled = PairCollator(tok, max_length=64)([{**e, "label": None} for e in examples])
    assert "labels" not in unlabeled


def _zip_of(tmp_path, files: dict) -> str:
    archive = tmp_path / "afqmc_public.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"afqmc_public/{name}", data)
    return archive.as_uri()


def test_download_checks_sha256(tmp_path, pairs_dir):
    files = {n: (pairs_dir / n).read_bytes() for n in ("train.json", "dev.json", "test.json")}
    sums = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    root = tmp_path / "fetched"
    cfg = afqmc_cfg(root, f"dataset.download.url={_zip_of(tmp_path, files)}")
    cfg.download.sha256 = sums
    ensure_downloaded(cfg)
    assert {n: (root / n).read_bytes() for n in files} == files

    (root / "dev.json").unlink()
    cfg.download.sha256["dev.json"] = "0" * 64
    with pytest.raises(DataError, match=r"dev.json has sha256 [0-9a-f]{64}, expected 0{64}; not written"):
        ensure_downloaded(cfg)
    assert not (root / "dev.json").exists()


def test_download_offline_says_where_to_put_files(tmp_path):
    cfg = afqmc_cfg(tmp_path / "nowhere", "dataset.download.url=http://127.0.0.1:9/afqmc_public.zip")
    with pytest.raises(DataError, match=r"could not download .*Put train.json, dev.json, test.json in .*nowhere or pass dataset.root=DIR"):
        ensure_downloaded(cfg)

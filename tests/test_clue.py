"""CLUE's classification tasks end to end (conf/dataset/{tnews,iflytek,ocnli,cmnli}.yaml): a few dozen
lines in each task's own file format, a tiny run, the dev metrics, the report, the predictions under
CLUE's file names, and python -m afqmc.clue_submission."""

import csv
import json
import shutil
import zipfile

import pytest

import afqmc
from afqmc.clue_submission import main as clue_submission
from afqmc.report import write_report

from .conftest import compose_cfg, write_jsonl

TNEWS = {100: "news_story", 101: "news_culture", 102: "news_entertainment", 103: "news_sports", 104: "news_finance"}
TNEWS |= {106: "news_house", 107: "news_car", 108: "news_edu", 109: "news_tech", 110: "news_military"}
TNEWS |= {112: "news_travel", 113: "news_world", 114: "news_stock", 115: "news_agriculture", 116: "news_game"}
IFLYTEK = {0: "打车", 1: "地图导航", 2: "免费WIFI", 3: "租车", 110: "社区超市", 115: "女性", 116: "经营", 117: "收款"}
IFLYTEK |= {118: "其他"}
NLI = ("entailment", "neutral", "contradiction")
TITLES = ["借呗怎么还款才不算逾期", "信用卡额度如何提高", "支付宝开通网商贷", "花呗收益是什么", "余额宝关闭以后怎么办"]
PAIRS = [
    ("借呗怎么还款", "如何还借呗"),
    ("花呗额度", "余额宝收益"),
    ("信用卡逾期", "信用卡晚还"),
    ("支付宝开通", "网商贷关闭"),
]


def tnews_line(i, labeled=True):
    """TNEWS' train/dev line: label id as text, its name, the title, keywords; a test line: id, title, keywords."""
    label = list(TNEWS)[i % len(TNEWS)]
    title, keywords = TITLES[i % len(TITLES)], "借呗,花呗" if i % 2 else ""
    if labeled:
        return {"label": str(label), "label_desc": TNEWS[label], "sentence": title, "keywords": keywords}
    return {"id": i, "sentence": title, "keywords": keywords}


def iflytek_line(i, labeled=True):
    label = list(IFLYTEK)[i % len(IFLYTEK)]
    text = "，".join(TITLES[j % len(TITLES)] for j in range(i, i + 4))  # app descriptions are long
    return (
        {"label": str(label), "label_des": IFLYTEK[label], "sentence": text} if labeled else {"id": i, "sentence": text}
    )


def ocnli_line(i, labeled=True, gold=True):
    """OCNLI: a premise, a hypothesis, the majority label ("-": none) and the five votes, genre, ids."""
    a, b = PAIRS[i % len(PAIRS)]
    label = NLI[i % 3] if gold else "-"
    votes = [NLI[i % 3]] * 3 + [NLI[(i + 1) % 3]] * 2 if gold else [NLI[0], NLI[0], NLI[1], NLI[1], NLI[2]]
    line = {"level": ("easy", "medium", "hard")[i % 3], "sentence1": a, "sentence2": b}
    if labeled:
        line |= {"label": label} | {f"label{k}": v for k, v in enumerate(votes)}
    return line | {"genre": "gov", "prem_id": f"gov_{i // 3}", "id": i}


def cmnli_line(i, labeled=True, gold=True):
    a, b = PAIRS[i % len(PAIRS)]
    if labeled:
        return {"sentence1": a, "sentence2": b, "label": NLI[i % 3] if gold else "-"}
    return {"sentence1": a, "sentence2": b, "id": i}


# task option -> (line writer, train file, prediction file, raw labels, dev lines without a gold label)
TASKS = {
    "tnews": (tnews_line, "train.json", "tnews11_predict.json", {str(k) for k in TNEWS}, 0),
    "iflytek": (iflytek_line, "train.json", "iflytek_predict.json", {str(k) for k in range(119)}, 0),
    "ocnli": (ocnli_line, "train.50k.json", "ocnli_50k_predict.json", set(NLI), 3),
    "cmnli": (cmnli_line, "train.json", "cmnli_predict.json", set(NLI), 3),
}
TEST_LINES = 9


def write_task(root, task):
    line, train, _, _, no_gold = TASKS[task]
    write_jsonl(root / train, [line(i) for i in range(30)])
    dev = [line(i) for i in range(12)]
    for k in range(no_gold):  # CMNLI/OCNLI dev lines whose annotators did not agree
        dev.insert(3 * k + 1, line(k, gold=False))
    write_jsonl(root / "dev.json", dev)
    write_jsonl(root / "test.json", [line(100 + i, labeled=False) for i in range(TEST_LINES)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir):
    """One tiny run per task, in one directory of runs (each with the overrides Hydra would record)."""
    out = tmp_path_factory.mktemp("clue")
    for task in TASKS:
        write_task(out / "data" / task, task)
        overrides = [
            f"dataset={task}",
            f"dataset.root={out / 'data' / task}",
            f"model.checkpoint={tiny_bert_dir}",  # a 2-label head: each task gets a head of its own
            "trainer.epochs=1",
            "trainer.batch_size=8",
        ]
        afqmc.train(compose_cfg(overrides), out / "runs" / task)
        (out / "runs" / task / ".hydra").mkdir(exist_ok=True)  # (the run wrote its record: no overrides in Python)
        (out / "runs" / task / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides[:1]))
    return out / "runs"


@pytest.fixture(autouse=True)
def tiny_test_sets(monkeypatch):
    """These tests' test sets are a few lines, not the size of CLUE's (which afqmc.clue_submission checks)."""
    import afqmc.clue_submission

    monkeypatch.setattr(afqmc.clue_submission, "CLUE_TEST_LINES", {})


@pytest.mark.parametrize("task", TASKS)
def test_task_trains_and_predicts_in_clue_format(runs, task):
    _, _, predictions, labels, no_gold = TASKS[task]
    summary = json.loads((runs / task / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["best"]["metric"] == "f1_macro"
    assert {"accuracy", "f1_macro", "loss"} <= summary["dev"].keys() and "f1_pos" not in summary["dev"]
    assert summary["data"]["no_gold_label"] == {"train": 0, "dev": no_gold, "test": 0}
    assert summary["data"]["skipped_lines"] == {"train": 0, "dev": 0, "test": 0}
    lines = [json.loads(x) for x in (runs / task / "predictions" / predictions).read_text().splitlines()]
    assert [p["id"] for p in lines] == [100 + i for i in range(TEST_LINES)]  # the test file's ids, in its order
    assert {p["label"] for p in lines} <= labels
    config = json.loads((runs / task / "checkpoints" / "best" / "config.json").read_text())
    assert sorted(config["id2label"].values()) == sorted(labels)  # the head has one output per class


def test_report_lists_multi_class_runs(runs):
    write_report(runs)
    rows = {r["run"]: r for r in csv.DictReader(open(runs / "report.csv", encoding="utf-8"))}
    assert set(rows) == set(TASKS)
    for task, row in rows.items():
        summary = json.loads((runs / task / "summary.json").read_text())
        assert row["status"] == "completed" and float(row["dev_accuracy"]) == pytest.approx(summary["dev"]["accuracy"])
        assert row["dev_f1_pos"] == ""  # label 1's metrics exist for two classes only
    assert "4 runs, 4 completed" in (runs / "report.md").read_text()


def test_clue_submission_zips_one_file_per_task(runs, tmp_path, capsys):
    out = tmp_path / "clue_submission.zip"
    assert clue_submission([str(runs / t) for t in TASKS] + ["--out", str(out)]) == 0
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == sorted(TASKS[t][2] for t in TASKS)  # at the top, CLUE's names
        for task, (_, _, name, _, _) in TASKS.items():
            assert zf.read(name) == (runs / task / "predictions" / name).read_bytes()
    assert f"tnews11_predict.json: {TEST_LINES} predictions from {runs / 'tnews'}" in capsys.readouterr().out


def test_clue_submission_refuses_two_runs_of_a_task_and_a_run_without_predictions(runs, tmp_path, capsys):
    out = tmp_path / "clue_submission.zip"
    copy = tmp_path / "tnews-again"
    shutil.copytree(runs / "tnews", copy)
    assert clue_submission([str(runs / "tnews"), str(copy), "--out", str(out)]) == 1
    assert (
        capsys.readouterr().err
        == f"error: two runs of task tnews11: {runs / 'tnews'} and {copy}; give one run per task\n"
    )
    shutil.rmtree(copy / "predictions")
    assert clue_submission([str(runs / "cmnli"), str(copy), "--out", str(out)]) == 1
    assert capsys.readouterr().err == (
        f"error: {copy}: no test predictions (predictions/*_predict.json): it ran with trainer.predict=false "
        "or dataset.splits.test=null\n"
    )
    (copy / "summary.json").write_text(json.dumps({"status": "interrupted", "error": "Interrupted: Ctrl-C"}))
    assert clue_submission([str(copy), "--out", str(out)]) == 1
    assert "the run did not complete (Interrupted: Ctrl-C)" in capsys.readouterr().err
    assert not out.exists()  # nothing written, not even part of a zip


def test_a_checkpoint_with_another_head_gets_a_new_one_and_keeps_its_encoder(tiny_bert_dir):
    """Fine-tuning TNEWS from a checkpoint fine-tuned on AFQMC: 15 outputs where it had 2."""
    from safetensors.torch import load_file

    from afqmc.config.registry import MODELS

    cfg = compose_cfg([f"model.checkpoint={tiny_bert_dir}"])
    labels = [str(k) for k in TNEWS]
    model, _ = MODELS.get(cfg.model.name)(cfg.model, labels)
    saved = load_file(tiny_bert_dir / "model.safetensors")
    assert model.classifier.out_features == 15 and model.config.id2label[14] == "116"
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert model.state_dict()[embeddings].equal(saved[embeddings])


def test_predict_cli_takes_one_sentence_for_a_single_sentence_model(runs, tmp_path, capsys):
    from afqmc.predict import main as predict

    best = str(runs / "tnews" / "checkpoints" / "best")
    assert predict([best, "借呗怎么还款"]) == 0
    label = capsys.readouterr().out.split()[1]
    assert label in TASKS["tnews"][3]
    write_jsonl(tmp_path / "titles.jsonl", [tnews_line(i, labeled=False) for i in range(3)])
    assert predict([best, "--file", str(tmp_path / "titles.jsonl"), "--text-a", "sentence", "--single"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["id"] for x in lines] == [0, 1, 2] and {x["label"] for x in lines} <= TASKS["tnews"][3]

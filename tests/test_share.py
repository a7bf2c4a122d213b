"""A trained model used and shared: checkpoints that transformers loads right or refuses, afqmc.evaluate,
afqmc.predict --file, the model card. Tiny runs trained once per module, as run.py leaves them."""

import json
import random
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

import afqmc
from afqmc import evaluate, predict
from afqmc.errors import CheckpointError
from afqmc.files import sha256
from afqmc.runs.card import CheckpointInfo, model_card, without_local_paths
from afqmc.training import checkpoint

from .conftest import ENV, compose_cfg, read_jsonl, summary, write_jsonl
from .test_train import product_pairs

VARIANTS = {  # the checkpoint formats: a plain BERT classifier, and afqmc's own architecture thrice
    "pooler": ["model.pooling=pooler"],
    "cls": ["model.pooling=cls"],
    "mean": ["model.pooling=mean"],
    "module": ["model=bert_pair_module"],
}
# another corpus's shape: TSV, its own column names and labels
TSV = [
    "dataset.format=tsv",
    "dataset.splits.train=train.tsv",
    "dataset.splits.dev=dev.tsv",
    "dataset.splits.test=test.tsv",
    "dataset.columns.text_a=q1",
    "dataset.columns.text_b=q2",
    "dataset.columns.label=same",
    "~dataset.label_map",
    "+dataset.label_map={no: 0, yes: 1}",
]
PAIRS = [("余额宝怎么开通", "如何关闭信用卡"), ("网商贷怎么开通", "如何关闭支付宝"), ("借呗", "花呗额度怎么提")]


def write_tsv(path, rows, header="q1\tq2\tsame"):
    lines = [header] + [f"{r['sentence1']}\t{r['sentence2']}\t{['no', 'yes'][int(r['label'])]}" for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The same pairs as JSON lines (AFQMC's columns) and as TSV (q1, q2, same: yes/no); a labelled test split."""
    rng, root = random.Random(0), tmp_path_factory.mktemp("data")
    for split, n in (("train", 48), ("dev", 24), ("test", 24)):
        rows = product_pairs(rng, n)
        write_jsonl(root / f"{split}.json", rows)
        write_tsv(root / f"{split}.tsv", rows)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir, data_dir):
    """trained(variant, *overrides) -> a run directory, trained once, with the .hydra/ files Hydra writes."""
    runs = {}

    def get(variant, *extra):
        if (variant, extra) not in runs:
            overrides = [
                *VARIANTS[variant],
                f"dataset.root={data_dir}",
                f"model.checkpoint={tiny_bert_dir}",
                "optimizer.lr=1e-3",
                "trainer.epochs=2",
                "trainer.batch_size=8",
                "trainer.predict=false",
                "trainer.keep_last=always",  # checkpoints/last is scored and read too
                *extra,
            ]
            cfg = compose_cfg(overrides)
            run = tmp_path_factory.mktemp(variant)
            (run / ".hydra").mkdir()
            OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
            OmegaConf.save(OmegaConf.create(overrides), run / ".hydra" / "overrides.yaml")
            afqmc.train(cfg, run)
            runs[variant, extra] = run
        return runs[variant, extra]

    return get


def best(run):
    return run / "checkpoints" / "best"


# ---------------------------------------------------------------- transformers
def transformers_logits(path, **kwargs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    with torch.no_grad():
        return model, model(**tokenizer(*map(list, zip(*PAIRS)), padding=True, return_tensors="pt")).logits


def test_pooler_checkpoint_is_a_plain_bert_classifier(trained):
    """model.pooling=pooler: AutoModelForSequenceClassification builds the very model afqmc trained."""
    path = best(trained("pooler"))
    model, logits = transformers_logits(path)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert (logits - predict.Predictor(path).logits(PAIRS)).abs().max() < 1e-5


def test_the_default_model_is_shared_without_custom_code(tiny_bert_dir, tmp_path):
    """conf/model/bert_cls.yaml's default pooling (pooler): its checkpoints need no trust_remote_code."""
    from afqmc.models.components import build_pair_cls

    cfg = compose_cfg([f"model.checkpoint={tiny_bert_dir}"])
    model, tokenizer = build_pair_cls(cfg.model, ["0", "1"])
    checkpoint.save(tmp_path / "best", cfg.model.name, model, tokenizer)
    assert type(transformers_logits(tmp_path / "best", trust_remote_code=False)[0]).__name__ == (
        "BertForSequenceClassification"
    )


@pytest.mark.parametrize("variant", ["cls", "mean", "module"])
def test_other_checkpoints_carry_their_architecture(trained, tmp_path, monkeypatch, variant):
    """cls and mean pooling, and bert_pair_module (a [CLS] head): the modeling file beside the weights builds
    the model with trust_remote_code=True; without it, transformers refuses rather than build another model."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path))  # where transformers copies the code it runs
    path = best(trained(variant))
    with pytest.raises(ValueError, match=r"(?s)contains custom code .* pass the argument `trust_remote_code=True`"):
        transformers_logits(path, trust_remote_code=False)
    model, logits = transformers_logits(path, trust_remote_code=True)
    assert type(model).__name__ == "BertForPairwiseCLS" and not type(model).__module__.startswith("afqmc")
    assert model.pooling == {"module": "cls"}.get(variant, variant)
    assert (logits - predict.Predictor(path).logits(PAIRS)).abs().max() < 1e-5


HUB_USER = """
import json, sys
from transformers import AutoModelForSequenceClassification

out = {}
for path in sys.argv[2:]:
    try:  # as most people call it; transformers asks "run the custom code? [y/N]" where it can
        out[path] = type(AutoModelForSequenceClassification.from_pretrained(path)).__name__
    except Exception as e:
        out[path] = f"{type(e).__name__}: {e}"
open(sys.argv[1], "w").write(json.dumps(out))
"""


@pytest.mark.slow
def test_the_usual_load_without_afqmc(trained, tmp_path):
    """from_pretrained(dir), in a Python that never imported afqmc, nobody there to answer transformers' question."""
    dirs = {variant: str(best(trained(variant))) for variant in VARIANTS}
    proc = subprocess.run(
        [sys.executable, "-c", HUB_USER, str(tmp_path / "out.json"), *dirs.values()],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
        env={**ENV, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads((tmp_path / "out.json").read_text())
    assert loaded.pop(dirs.pop("pooler")) == "BertForSequenceClassification"
    for path in dirs.values():
        assert loaded[path].startswith(f"ValueError: The repository {path} contains custom code"), loaded[path]
        assert "Please pass the argument `trust_remote_code=True`" in loaded[path]


def test_pooler_is_the_pretrained_pooler(trained, tiny_bert_dir):
    """model.pooling=pooler trains BERT's pooler (dense + tanh over [CLS]) and saves it with the encoder."""
    model = checkpoint.load_model(best(trained("pooler")))
    assert type(model).__name__ == "BertForSequenceClassification" and model.bert.pooler is not None
    hidden = torch.randn(2, 5, model.config.hidden_size)
    pooled = torch.tanh(model.bert.pooler.dense(hidden[:, 0]))
    assert torch.allclose(model.bert.pooler(hidden), pooled)


@pytest.mark.parametrize("pooling", ["mean", "pooler"])
def test_own_checkpoint_as_a_base_runs_none_of_its_files(trained, tmp_path, pooling):
    """model.checkpoint=RUN/checkpoints/best fine-tunes further with afqmc's installed code: the modeling file
    beside the weights, meant for transformers users, is never imported (here it would leave a mark). With
    pooling=pooler the new model is a plain BERT classifier again: nothing of afqmc_bert in its config."""
    from afqmc.models.components import build_pair_cls

    base = tmp_path / "base"
    shutil.copytree(best(trained("mean")), base)
    (base / "modeling_afqmc.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w').close()\n")
    manifest = json.loads((base / checkpoint.MANIFEST).read_text())  # (its checksum too: else refused as corrupt)
    manifest["files"]["modeling_afqmc.py"] = sha256(base / "modeling_afqmc.py")
    (base / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    cfg = compose_cfg([f"model.checkpoint={base}", f"model.pooling={pooling}"]).model
    model, _ = build_pair_cls(cfg, ["0", "1"])
    saved = checkpoint.load_model(best(trained("mean")))
    assert torch.equal(model.classifier.weight, saved.classifier.weight)
    values = model.config.to_dict()
    assert (values["model_type"], "auto_map" in values) == (
        ("afqmc_bert", True) if pooling == "mean" else ("bert", False)
    )
    assert not (tmp_path / "RAN").exists()


def test_a_pooler_without_pretrained_weights_is_named(tiny_bert_dir, trained, caplog):
    """A checkpoint without pooler weights (e5, a random tiny BERT) gets a random pooler: the log says so."""
    from afqmc.models.components import build_pair_cls

    for path, warned in ((tiny_bert_dir, True), (best(trained("pooler")), False)):
        caplog.clear()
        build_pair_cls(compose_cfg([f"model.checkpoint={path}", "model.pooling=pooler"]).model, ["0", "1"])
        assert ("has no pooler weights" in caplog.text) == warned, path


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_custom_code_with_a_builtin_model_type_is_refused(tiny_bert_dir, tmp_path, where):
    """A BERT checkpoint (model type bert) that names code of its own: transformers would build its built-in
    classes and ignore that code, so without model.trust_remote_code=true it is refused, as the README says."""
    from afqmc.errors import ModelLoadError
    from afqmc.models.components import build_pair_cls

    shutil.copytree(tiny_bert_dir, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / where
    values = json.loads(path.read_text())
    values["auto_map"] = {"AutoConfig": "configuration_own.OwnConfig", "AutoTokenizer": ["tokenization_own.Own", None]}
    path.write_text(json.dumps(values))
    (tmp_path / "ckpt" / "configuration_own.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w').close()\n")
    cfg = compose_cfg([f"model.checkpoint={tmp_path / 'ckpt'}"]).model
    with pytest.raises(ModelLoadError, match=rf"which runs only with model.trust_remote_code=true \({where} name"):
        build_pair_cls(cfg, ["0", "1"])
    assert not (tmp_path / "RAN").exists()


def test_checkpoints_of_the_earlier_format_load(tiny_bert_dir, monkeypatch):
    """Model type bert, BertForPairwiseCLS's weights, no checkpoint.json: what checkpoints held before, loaded
    once the user says to trust them (nothing to verify their files against)."""
    from afqmc.models.modeling import BertForPairwiseCLS

    with pytest.raises(CheckpointError, match=checkpoint.TRUST_UNVERIFIED):
        checkpoint.load_model(tiny_bert_dir)
    monkeypatch.setenv(checkpoint.TRUST_UNVERIFIED, "1")
    model = checkpoint.load_model(tiny_bert_dir)
    assert type(model) is BertForPairwiseCLS and model.pooling == "cls"
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(model.state_dict()[key], BertForPairwiseCLS.from_pretrained(tiny_bert_dir).state_dict()[key])


# ---------------------------------------------------------------- afqmc.evaluate
def eval_records(run):
    return [
        json.loads(p.read_text()) for p in sorted((run / "eval").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    ]


def test_evaluate_scores_a_run_as_its_training_did(trained, capsys):
    run = trained("cls")
    assert evaluate.main([str(run)]) == 0
    (record,) = eval_records(run)
    assert record["metrics"] == pytest.approx(summary(run)["dev"], abs=1e-6)
    assert record["checkpoint"] == str(best(run).resolve()) and record["overrides"] == {} and record["split"] == "dev"
    assert f"f1_macro {summary(run)['dev']['f1_macro']:.4f}" in capsys.readouterr().out


def test_evaluate_a_labelled_test_split_and_another_corpus(trained, data_dir, tmp_path):
    """--split test scores a test file with labels; overrides point the run at another corpus (TSV, its own
    columns and labels): the same pairs score the same, and the record names what differs from the run."""
    run = trained("mean")
    assert evaluate.main([str(run), "--split", "test", "--checkpoint", "last"]) == 0
    assert evaluate.main([str(run), "--checkpoint", "last", "dataset.splits.dev=test.json"]) == 0
    assert evaluate.main([str(run), "--checkpoint=last", "--split=test", *TSV]) == 0
    test, as_dev, tsv = eval_records(run)[-3:]
    assert test["split"] == "test" and test["checkpoint"].endswith("last")
    assert test["metrics"] == as_dev["metrics"] == pytest.approx(tsv["metrics"], abs=1e-6)
    assert as_dev["overrides"] == {"dataset.splits.dev": {"run": "dev.json", "now": "test.json"}}
    assert tsv["overrides"]["dataset.columns.text_a"] == {"run": "sentence1", "now": "q1"}
    assert tsv["overrides"]["dataset.label_map.yes"] == {"run": None, "now": 1}


@pytest.mark.parametrize(
    "args, error",
    [
        (
            ["--split", "test", "dataset.root=NOWHERE", "dataset.download=null"],
            "DataError: NOWHERE/test.json: split file 'test' not found",
        ),
        (["--split", "test", "dataset.columns.label=gold"], "DataError: {data}/test.json:1: missing field 'gold'"),
        (["dataset.rot=x"], "ConfigError: dataset.rot=x: unknown key; keys of dataset: "),
        (["dataset.max_length=1000"], "ConfigError: dataset.max_length=1000 is invalid; expected an integer <= 128"),
        (["dataset=other"], "ConfigError: dataset=other: afqmc.evaluate overrides keys of the run's config"),
        (["--checkpoint", "last", "trainer.device=cuda:7"], "ConfigError: trainer.device='cuda:7' but CUDA"),
    ],
)
def test_evaluate_bad_input_is_one_line(trained, data_dir, capsys, args, error):
    if "cuda" in error and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    run = trained("cls")
    before = len(eval_records(run)) if (run / "eval").exists() else 0
    assert evaluate.main([str(run), *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(error.format(data=data_dir)) and "\n" not in err, err
    assert (len(eval_records(run)) if (run / "eval").exists() else 0) == before


def test_evaluate_needs_a_run_with_a_checkpoint(tmp_path, capsys):
    assert evaluate.main([str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"ConfigError: {tmp_path} is not a run directory: it has no .hydra/config.yaml\n"
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(compose_cfg(["experiment=smoke"]), tmp_path / ".hydra" / "config.yaml")  # killed before a checkpoint
    assert evaluate.main([str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(
        f"ModelLoadError: {tmp_path / 'checkpoints' / 'best'}: no checkpoint there"
    )
    assert evaluate.main([str(tmp_path), "--checkpoint", "last"]) == 1
    assert "keeps it only with trainer.keep_last=always" in capsys.readouterr().err


# ---------------------------------------------------------------- afqmc.predict --file
def test_predict_reads_a_file_as_the_run_did_and_prints_metrics(trained, data_dir, tmp_path, capsys):
    """A run trained on a TSV corpus: --file reads its TSV with the run's columns and labels, no flags, and
    prints the metrics the run's own evaluation gave on the same pairs."""
    run = trained("pooler", *TSV)
    out = tmp_path / "p.jsonl"
    assert predict.main([str(best(run)), "--file", str(data_dir / "dev.tsv"), "--output", str(out)]) == 0
    dev = summary(run)["dev"]
    assert capsys.readouterr().out.strip() == " ".join(f"{k} {v:.4f}" for k, v in dev.items())
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == list(range(24)) and {r["label"] for r in rows} <= {"no", "yes"}


def test_predict_flags_override_the_runs_settings(trained, data_dir, capsys):
    """The TSV run's checkpoint on AFQMC-style JSON lines: --format and the column flags; no labels, no metrics."""
    run = trained("pooler", *TSV)
    rows = [{"id": f"q{i}", "s1": a, "s2": b} for i, (a, b) in enumerate(PAIRS)]
    path = write_jsonl(data_dir.parent / "flags" / "pairs.json", rows)
    args = [str(best(run)), "--file", str(path), "--format", "jsonl", "--text-a", "s1", "--text-b", "s2"]
    assert predict.main(args) == 0
    captured = capsys.readouterr()
    got = [json.loads(line) for line in captured.out.splitlines()]
    labels = [label for label, _ in predict.Predictor(best(run))(PAIRS)]
    assert [(r["id"], r["label"]) for r in got] == list(zip(["q0", "q1", "q2"], labels))
    assert "accuracy" not in captured.out + captured.err


def test_predict_shows_progress_on_large_files(trained, data_dir, tmp_path, caplog):
    args = ["--file", str(data_dir / "test.json"), "--batch-size", "2", "--output", str(tmp_path / "p.jsonl")]
    with caplog.at_level("INFO", logger="afqmc.training.progress"):
        assert predict.main([str(best(trained("cls"))), *args]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "afqmc.training.progress"]
    # a line every tenth of the way, rounded up to whole batches: 2, 4, ..., 12
    assert lines == [f"predicting: {n}/12 batches" for n in range(2, 13, 2)], lines


# ---------------------------------------------------------------- the model card
def front_matter(path):
    from huggingface_hub import metadata_load

    return metadata_load(path)


@pytest.mark.parametrize("variant", ["pooler", "module"])
def test_each_checkpoint_has_a_model_card(trained, tiny_bert_dir, data_dir, variant):
    run = trained(variant)
    card = (best(run) / "README.md").read_text()
    meta = front_matter(best(run) / "README.md")
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert "base_model" not in meta  # a local directory is no hub name; the text names it
    best_dev, epoch = summary(run)["dev"], summary(run)["best"]["epoch"]
    results = meta["model-index"][0]["results"]
    assert {m["type"]: m["value"] for r in results for m in r["metrics"]} == {
        "accuracy": round(best_dev["accuracy"], 4),
        "f1": round(best_dev["f1_macro"], 4),
    }
    # local paths by their names only: nothing of the machine it was trained on (issue 25)
    assert f"from `{tiny_bert_dir.name}`" in card and f"(`{data_dir.name}`, jsonl" in card
    assert str(data_dir.parent) not in card and str(tiny_bert_dir.parent) not in card
    assert f"epoch {epoch}, step" in card and f"| {best_dev['f1_macro']:.4f} |" in card
    assert " ".join(OmegaConf.load(run / ".hydra" / "overrides.yaml")) in card
    assert "python -m afqmc.predict THIS_DIR" in card
    trust = 'from_pretrained("THIS_DIR", trust_remote_code=True)'
    assert (trust in card) == (variant != "pooler") and ("custom_code" in meta["tags"]) == (variant != "pooler")
    run_config = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml"), resolve=True)
    assert OmegaConf.to_container(OmegaConf.load(best(run) / "run_config.yaml")) == without_local_paths(run_config)
    assert str(data_dir.parent) not in (best(run) / "run_config.yaml").read_text()
    last = (run / "checkpoints" / "last" / "README.md").read_text()
    assert "epoch 2, step" in last and (run / "checkpoints" / "last" / "run_config.yaml").is_file()


def test_model_card_of_weights_not_yet_scored_and_of_a_hub_base(tmp_path):
    cfg = OmegaConf.to_container(compose_cfg(["model.checkpoint=bert-base-chinese"]), resolve=True)
    (tmp_path / "config.json").write_text("{}")
    card = model_card(CheckpointInfo(config=cfg, step=7), tmp_path)
    assert "These weights (step 7) were saved between two evaluations and have not been scored on dev" in card
    (tmp_path / "README.md").write_text(card)
    assert front_matter(tmp_path / "README.md")["base_model"] == "bert-base-chinese"


def test_writing_a_checkpoint_needs_no_network(tiny_bert_dir, tmp_path, monkeypatch):
    from afqmc.models.components import build_pair_cls

    cfg = compose_cfg([f"model.checkpoint={tiny_bert_dir}", "model.pooling=pooler"])
    model, tokenizer = build_pair_cls(cfg.model, ["0", "1"])

    def no_network(*args, **kwargs):
        raise AssertionError("a checkpoint save tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    config = OmegaConf.to_container(cfg, resolve=True)
    info = CheckpointInfo(config=config, overrides=["x=1"], dev={"accuracy": 0.5}, epoch=1)
    checkpoint.save(tmp_path / "best", "bert_pair_cls", model, tokenizer, run=info)
    assert (tmp_path / "best" / "README.md").is_file()


def test_an_edited_model_card_leaves_the_checkpoint_loadable(trained, tmp_path):
    """checkpoint.json has every file's sha256 but the model card's: people edit it before they share."""
    path = tmp_path / "best"
    shutil.copytree(best(trained("cls")), path)
    (path / "README.md").write_text("---\nlicense: mit\n---\n# mine\n")
    checkpoint.load_model(path)
    (path / "run_config.yaml").write_text("edited: true\n")
    with pytest.raises(CheckpointError, match="run_config.yaml: its content differs"):
        checkpoint.load_model(path)


def test_smoke_sets_cls_pooling_for_either_model():
    """experiment=smoke (a random tiny BERT, no pooler to build on) sets model.pooling=cls, which
    bert_pair_module, a [CLS] head, accepts as its only value."""
    from afqmc.config.schema import check_config
    from afqmc.errors import ConfigError

    for model in ("bert_cls", "bert_pair_module"):
        cfg = compose_cfg(["experiment=smoke", f"model={model}"])
        check_config(cfg)
        assert cfg.model.pooling == "cls"
    with pytest.raises(ConfigError, match=r"model.pooling='mean' is invalid; expected one of 'cls'$"):
        check_config(compose_cfg(["model=bert_pair_module", "model.pooling=mean", "model.checkpoint=x"]))

"""A trained model shared: checkpoints that transformers loads right or refuses. Tiny runs trained once per
module, as run.py leaves them."""

import json
import random
import shutil
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

import afqmc
from afqmc import checkpoint
from afqmc.model import load_tokenizer

from .conftest import ENV, compose_cfg, write_jsonl
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
def afqmc_logits(path):
    model, tokenizer = checkpoint.load_model(path), load_tokenizer(str(path))
    with torch.no_grad():
        return model(**tokenizer(*map(list, zip(*PAIRS)), padding=True, return_tensors="pt")).logits


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
    assert (logits - afqmc_logits(path)).abs().max() < 1e-5


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
    assert (logits - afqmc_logits(path)).abs().max() < 1e-5


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


def test_own_checkpoint_as_a_base_runs_none_of_its_files(trained, tmp_path):
    """model.checkpoint=RUN/checkpoints/best fine-tunes further with afqmc's installed code: the modeling file
    beside the weights, meant for transformers users, is never imported (here it would leave a mark)."""
    from afqmc.model import build_pair_cls

    base = tmp_path / "base"
    shutil.copytree(best(trained("mean")), base)
    (base / "modeling_afqmc.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w').close()\n")
    cfg = compose_cfg([f"model.checkpoint={base}", "model.pooling=mean"]).model
    model, _ = build_pair_cls(cfg, ["0", "1"])
    saved = checkpoint.load_model(best(trained("mean")))
    assert torch.equal(model.classifier.weight, saved.classifier.weight) and model.pooling == "mean"
    assert not (tmp_path / "RAN").exists()


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_custom_code_with_a_builtin_model_type_is_refused(tiny_bert_dir, tmp_path, where):
    """A BERT checkpoint (model type bert) that names code of its own: transformers would build its built-in
    classes and ignore that code, so without model.trust_remote_code=true it is refused, as the README says."""
    from afqmc.errors import ModelLoadError
    from afqmc.model import build_pair_cls

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


def test_checkpoints_of_the_earlier_format_load(tiny_bert_dir):
    """Model type bert, BertForPairwiseCLS's weights, no checkpoint.json: what checkpoints held before."""
    from afqmc.modeling import BertForPairwiseCLS

    model = checkpoint.load_model(tiny_bert_dir)
    assert type(model) is BertForPairwiseCLS and model.pooling == "cls"
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(model.state_dict()[key], BertForPairwiseCLS.from_pretrained(tiny_bert_dir).state_dict()[key])

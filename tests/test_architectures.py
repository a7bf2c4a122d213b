"""Any Hugging Face architecture with a sequence-classification head fine-tunes (model=bert_cls): tiny random
checkpoints of ten families, built here with the tiny BERT's tokenizer (encoders) or a byte-level BPE (decoders),
each trained, interrupted and resumed to the identical result, predicted and re-scored, and loaded in plain
transformers to afqmc.predict's probabilities; cls and mean pooling over every encoder; segment ids only where
the model has them; decoders' pad token and last real token; the config check of the architecture; the loss
and memory options (label smoothing, class weights, gradient checkpointing). In-process: nothing downloads."""

import json
import random
import time

import pytest
import torch
import torch.nn.functional as F

import afqmc
from afqmc.config.schema import check_config
from afqmc.errors import ConfigError, Interrupted
from afqmc.predict import Predictor
from afqmc.training.trainer import Trainer

from .conftest import compose_cfg, read_jsonl, records, summary, write_jsonl
from .test_train import product_pairs

ENCODERS = ["bert", "roberta", "xlm-roberta", "electra", "albert", "deberta-v2", "ernie", "modernbert"]
DECODERS = ["qwen2", "llama"]
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def encoder_config(model_type: str, vocab_size: int):
    """A tiny random config of the family, as its hub checkpoints set it (token types, embedding sizes)."""
    from transformers import AutoConfig

    extra = {
        "bert": dict(type_vocab_size=2),
        "roberta": dict(type_vocab_size=1),
        "xlm-roberta": dict(type_vocab_size=1),
        "electra": dict(type_vocab_size=2, embedding_size=16),
        "albert": dict(type_vocab_size=2, embedding_size=16),
        "deberta-v2": dict(type_vocab_size=0, relative_attention=True, position_buckets=16, max_relative_positions=64),
        "ernie": dict(type_vocab_size=4),
        "modernbert": dict(
            global_attn_every_n_layers=1, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3
        ),
    }[model_type]
    return AutoConfig.for_model(
        model_type, vocab_size=vocab_size, max_position_embeddings=64, pad_token_id=0, **SMALL, **extra
    )


def bpe_tokenizer(texts, pad: bool):
    """Qwen2's tokenizer class, a byte-level BPE learnt here; `pad`: with Qwen2's pad token, else none (Llama's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    learned = json.loads(bpe.to_str())["model"]
    tok = Qwen2Tokenizer(vocab=learned["vocab"], merges=[tuple(m) for m in learned["merges"]], unk_token=None)
    if not pad:
        tok.pad_token = None
    return tok


def build_checkpoint(model_type: str, path, tiny_bert_dir):
    """A hub-like checkpoint of `model_type`: a *ForMaskedLM (encoders) or *ForCausalLM (decoders), its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    torch.manual_seed(0)
    if model_type in DECODERS:
        texts = [r[k] for r in product_pairs(random.Random(0), 200) for k in ("sentence1", "sentence2")]
        tok = bpe_tokenizer(texts, pad=model_type == "qwen2")
        config = AutoConfig.for_model(
            model_type,
            vocab_size=len(tok),
            max_position_embeddings=64,
            num_key_value_heads=1,
            eos_token_id=tok.eos_token_id
            if tok.eos_token_id is not None
            else tok.convert_tokens_to_ids("<|endoftext|>"),
            pad_token_id=tok.pad_token_id,
            **SMALL,
        )
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
    else:
        tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
        AutoModelForMaskedLM.from_config(encoder_config(model_type, len(tok))).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    rng = random.Random(5)
    write_jsonl(root / "train.json", product_pairs(rng, 32))
    write_jsonl(root / "dev.json", product_pairs(rng, 12))
    test = [{"id": i, **{k: v for k, v in r.items() if k != "label"}} for i, r in enumerate(product_pairs(rng, 8))]
    write_jsonl(root / "test.json", test)
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_bert_dir):
    """model_type -> its tiny checkpoint, built once."""
    root = tmp_path_factory.mktemp("architectures")
    return {t: build_checkpoint(t, root / t, tiny_bert_dir) for t in ENCODERS + DECODERS}


def cfg_of(checkpoint, data_dir, *overrides):
    return compose_cfg(
        [
            f"model.checkpoint={checkpoint}",
            f"dataset.root={data_dir}",
            "dataset.max_length=32",
            "trainer.epochs=2",
            "trainer.batch_size=8",
            "trainer.log_every=1",
            "trainer.save_every_steps=2",
            "optimizer.lr=1e-3",
            *overrides,
        ]
    )


def stop_at(monkeypatch, step: int) -> None:
    """The run stops at optimizer step `step` as a SIGTERM would stop it (trainer.stop), in-process."""
    original = Trainer._log_step

    def log_step(self, *args):
        original(self, *args)
        if self.state.step == step:
            self.stop.signum = 15

    monkeypatch.setattr(Trainer, "_log_step", log_step)


def plain_transformers_probabilities(best, rows, max_length: int, trust: bool) -> torch.Tensor:
    """The card's recipe: AutoModelForSequenceClassification and AutoTokenizer from the checkpoint directory."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(best, trust_remote_code=trust).eval()
    tokenizer = AutoTokenizer.from_pretrained(best, trust_remote_code=trust)
    out = []
    with torch.no_grad():
        for r in rows:  # one at a time: the probabilities of each pair, whatever a batch would pad
            batch = tokenizer(
                [r["sentence1"]], [r["sentence2"]], truncation=True, max_length=max_length, return_tensors="pt"
            )
            out.append(model(**batch).logits.softmax(-1)[0])
    return torch.stack(out)


@pytest.mark.parametrize("model_type", ENCODERS + DECODERS)
def test_each_architecture_trains_resumes_predicts_and_loads_in_transformers(
    model_type, checkpoints, data_dir, tmp_path, monkeypatch
):
    checkpoint = checkpoints[model_type]
    straight = tmp_path / "straight"
    afqmc.train(cfg_of(checkpoint, data_dir), straight)
    result = summary(straight)
    assert result["status"] == "completed" and result["train"]["steps"] == 8, result

    stopped = tmp_path / "stopped"
    with monkeypatch.context() as m:
        stop_at(m, 3)  # mid-epoch, between two saves
        with pytest.raises(Interrupted):
            afqmc.train(cfg_of(checkpoint, data_dir), stopped)
    afqmc.train(cfg_of(checkpoint, data_dir, "trainer.resume=true"), stopped)
    assert records(stopped) == records(straight)
    assert summary(stopped)["dev"] == result["dev"] and summary(stopped)["best"] == result["best"]
    predictions = "predictions/afqmc_predict.json"
    assert read_jsonl(stopped / predictions) == read_jsonl(straight / predictions)

    best = straight / "checkpoints" / "best"
    config = json.loads((best / "config.json").read_text())
    assert config["model_type"] == model_type and "auto_map" not in config  # the architecture's own head
    card = (best / "README.md").read_text()
    assert f"Architecture: `{config['architectures'][0]}`; base checkpoint: " in card and checkpoint.name in card
    dev = read_jsonl(data_dir / "dev.json")
    logits = Predictor(best).logits([(r["sentence1"], r["sentence2"]) for r in dev])
    metrics = afqmc.training.metrics.scores(logits, torch.tensor([int(r["label"]) for r in dev]))
    assert metrics == pytest.approx(result["dev"], abs=1e-6)  # re-scored: the run's own dev figures
    ours = logits.softmax(-1)
    theirs = plain_transformers_probabilities(best, dev, 32, trust=False)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("model_type", ENCODERS + ["qwen2"])
def test_cls_and_mean_pooling_over_every_encoder_load_with_trust_remote_code(
    model_type, pooling, checkpoints, data_dir, tmp_path
):
    if model_type in DECODERS and pooling == "cls":
        pytest.skip("a decoder takes no cls pooling (test_the_config_check_knows_the_architecture)")
    run = tmp_path / "run"
    overrides = (f"model.pooling={pooling}", "trainer.max_steps=2", "dataset.splits.test=null")
    afqmc.train(cfg_of(checkpoints[model_type], data_dir, *overrides), run)
    best = run / "checkpoints" / "best"
    config = json.loads((best / "config.json").read_text())
    assert config["pooling"] == pooling and "auto_map" in config and (best / "modeling_afqmc.py").is_file()
    dev = read_jsonl(data_dir / "dev.json")
    ours = Predictor(best).logits([(r["sentence1"], r["sentence2"]) for r in dev]).softmax(-1)
    theirs = plain_transformers_probabilities(best, dev, 32, trust=True)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    with pytest.raises(ValueError, match="trust_remote_code"):  # never a different model, silently
        plain_transformers_probabilities(best, dev[:1], 32, trust=False)


def batch_of(trainer: Trainer) -> dict:
    return next(iter(trainer.eval_loaders["dev"]))


@pytest.mark.parametrize("model_type", ENCODERS + DECODERS)
def test_segment_ids_only_where_the_model_has_token_types(model_type, checkpoints, data_dir, tmp_path):
    """The tiny BERT's tokenizer makes token_type_ids of 1 for the second text: a model with one token type (or
    none) must never get them, in training, in predict, or from the saved tokenizer in plain transformers."""
    trainer = Trainer(cfg_of(checkpoints[model_type], data_dir), tmp_path)
    trainer.setup()
    types = getattr(trainer.model.config, "type_vocab_size", None) or 0
    batch = batch_of(trainer)
    assert ("token_type_ids" in batch) == (types > 1), batch.keys()
    if types > 1:
        assert batch["token_type_ids"].max() == 1  # the second sentence's segment
    trainer.tokenizer.save_pretrained(tmp_path / "tok")
    from transformers import AutoTokenizer

    assert ("token_type_ids" in AutoTokenizer.from_pretrained(tmp_path / "tok")("a", "b")) == (types > 1)


@pytest.mark.parametrize("model_type", DECODERS)
def test_a_decoder_has_a_pad_token_and_scores_each_pairs_last_real_token(
    model_type, checkpoints, data_dir, tmp_path, caplog
):
    """Llama's tokenizer has no pad token: one is set, and said. The head scores the last real token: a pair's
    logits are the same alone as in a batch padded around it."""
    caplog.set_level("INFO")
    trainer = Trainer(cfg_of(checkpoints[model_type], data_dir), tmp_path)
    trainer.setup()
    assert trainer.tokenizer.pad_token is not None
    assert ("has no pad token" in caplog.text) == (model_type == "llama")
    model = trainer.model.eval()
    batch = batch_of(trainer)
    assert (batch["attention_mask"] == 0).any()  # some pairs padded
    with torch.no_grad():
        together = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for i in range(len(together)):
            n = int(batch["attention_mask"][i].sum())
            alone = model(
                input_ids=batch["input_ids"][i : i + 1, :n], attention_mask=batch["attention_mask"][i : i + 1, :n]
            )
            assert torch.allclose(alone.logits[0], together[i], atol=1e-5), i


def config_error(cfg) -> str:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert time.perf_counter() - start < 1.0
    return str(e.value)


def test_the_config_check_knows_the_architecture(checkpoints, data_dir, tmp_path):
    """Refused before anything loads, in under a second, naming what is allowed: an architecture transformers has
    no sequence-classification head for, one it does not know, a decoder's cls pooling, BERT's own module on
    another encoder. (tests/test_run_errors.py: the check imports neither torch nor transformers.)"""
    no_head = tmp_path / "vit"
    no_head.mkdir()
    (no_head / "config.json").write_text(json.dumps({"model_type": "vit", "max_position_embeddings": 512}))
    message = config_error(cfg_of(no_head, data_dir))
    assert (
        "'vit' model, which has no sequence-classification head" in message
        and "allowed for this model: cls, mean" in message
    )
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "no_such_model"}))
    assert "does not know; supported:" in config_error(cfg_of(unknown, data_dir))
    message = config_error(cfg_of(checkpoints["qwen2"], data_dir, "model.pooling=cls"))
    assert "a decoder" in message and "allowed for it: auto" in message
    message = config_error(cfg_of(checkpoints["roberta"], data_dir, "model=bert_pair_module"))
    assert "needs a BERT encoder" in message
    for model_type in ENCODERS + DECODERS:  # and what is supported passes
        check_config(cfg_of(checkpoints[model_type], data_dir))
    assert not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------- the loss and memory options
def test_label_smoothing_and_class_weights_are_the_loss(data_dir, tiny_bert_dir, tmp_path):
    cfg = cfg_of(tiny_bert_dir, data_dir, "trainer.label_smoothing=0.1", "trainer.class_weights=[1.0,3.0]")
    trainer = Trainer(cfg, tmp_path)
    trainer.setup()
    logits, labels = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 0, 1])
    expected = F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 3.0]), label_smoothing=0.1)
    assert torch.allclose(trainer.loss(logits, labels), expected)
    assert not torch.allclose(trainer.loss(logits, labels), F.cross_entropy(logits, labels))
    # split_by_length's pieces add up to the whole batch's weighted mean
    parts = [trainer.loss(logits[s], labels[s]) * trainer._share(labels[s], labels) for s in (slice(0, 2), slice(2, 6))]
    assert torch.allclose(sum(parts), expected)


def test_balanced_class_weights_come_from_the_train_split_and_are_recorded(tmp_path, tiny_bert_dir, caplog):
    caplog.set_level("INFO")
    rng = random.Random(1)
    rows = product_pairs(rng, 40)
    train = [r for r in rows if r["label"] == "0"][:9] + [r for r in rows if r["label"] == "1"][:3]  # 3:1
    write_jsonl(tmp_path / "d" / "train.json", train)
    write_jsonl(tmp_path / "d" / "dev.json", rows[:8])
    cfg = cfg_of(tiny_bert_dir, tmp_path / "d", "dataset.splits.test=null", "trainer.class_weights=balanced")
    afqmc.train(cfg, tmp_path / "run")
    assert summary(tmp_path / "run")["class_weights"] == pytest.approx([12 / (2 * 9), 12 / (2 * 3)])
    assert "class weights: 0 0.6667, 1 2.0000" in caplog.text


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.class_weights=[1.0]", "trainer.class_weights has 1 weights, dataset.label_map 2 labels"),
        ("trainer.class_weights=[1.0,-2.0]", "trainer.class_weights=[1.0, -2.0] is invalid"),
        ("trainer.class_weights=even", "'balanced' or a list of positive numbers"),
        ("trainer.label_smoothing=1.0", "trainer.label_smoothing=1.0 is invalid; expected a number >= 0 and < 1"),
    ],
)
def test_loss_options_out_of_range_are_config_errors(override, message, data_dir, tiny_bert_dir):
    assert message in config_error(cfg_of(tiny_bert_dir, data_dir, override))


@pytest.mark.parametrize("model_type", ["bert", "modernbert", "qwen2"])
def test_gradient_checkpointing_gives_the_same_gradient(model_type, checkpoints, data_dir, tmp_path):
    """Recomputed activations, the same dropout masks: the same gradients as without (dropout on, training mode)."""
    grads = []
    for on in (False, True):
        trainer = Trainer(
            cfg_of(checkpoints[model_type], data_dir, f"model.gradient_checkpointing={on}"), tmp_path / str(on)
        )
        trainer.setup()
        inner = next(m for m in trainer.model.modules() if getattr(m, "supports_gradient_checkpointing", False))
        assert inner.is_activation_checkpointing == on
        trainer.model.train()
        batch = batch_of(trainer)
        batch.pop("index")
        torch.manual_seed(0)
        trainer.loss(
            trainer.model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"]
        ).backward()
        grads.append([p.grad.clone() for p in trainer.model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_gradient_checkpointing_where_the_model_cannot_is_a_config_error(tiny_bert_dir):
    from afqmc.models.components import gradient_checkpointing

    with pytest.raises(ConfigError, match="model.gradient_checkpointing=true: the model of .* does not support it"):
        gradient_checkpointing(torch.nn.Linear(2, 2), str(tiny_bert_dir))


@pytest.mark.parametrize("model_type", ENCODERS + DECODERS)
def test_fast_dropout_where_the_attention_takes_it_and_the_same_model(model_type, checkpoints, data_dir, tmp_path):
    """trainer.fast_dropout swaps in its eager attention where the model's attention is pluggable (all but
    DeBERTa-v2's own); the model then computes what it did (eval: padding masked alike)."""
    from afqmc.models.fast_dropout import use_fast_dropout

    trainer = Trainer(cfg_of(checkpoints[model_type], data_dir, "trainer.fast_dropout=false"), tmp_path)
    trainer.setup()
    model, batch = trainer.model.eval(), batch_of(trainer)
    inputs = {k: v for k, v in batch.items() if k not in ("index", "labels")}
    with torch.no_grad():
        before = model(**inputs).logits
        assert use_fast_dropout(model) == (model_type != "deberta-v2")
        assert torch.allclose(model(**inputs).logits, before, atol=1e-6)


def test_an_afqmc_cls_or_mean_checkpoint_fine_tunes_further(checkpoints, data_dir, tmp_path):
    """A run's mean-pooled RoBERTa (model type afqmc_encoder) as model.checkpoint: its encoder and head go on
    training; its max_position_embeddings (inside) still bounds dataset.max_length; auto pooling is refused."""
    first = tmp_path / "first"
    afqmc.train(cfg_of(checkpoints["roberta"], data_dir, "model.pooling=mean", "trainer.max_steps=2"), first)
    best = first / "checkpoints" / "best"
    second = tmp_path / "second"
    afqmc.train(cfg_of(best, data_dir, "model.pooling=mean", "trainer.max_steps=2", "dataset.splits.test=null"), second)
    assert summary(second)["status"] == "completed"
    assert (
        json.loads((second / "checkpoints" / "best" / "config.json").read_text())["encoder"]["model_type"] == "roberta"
    )
    assert "expected an integer <= 64" in config_error(
        cfg_of(best, data_dir, "model.pooling=mean", "dataset.max_length=100")
    )
    assert "allowed for it: cls, mean" in config_error(cfg_of(best, data_dir))


def test_balanced_weights_count_a_streaming_split_in_one_pass():
    from afqmc.training.trainer import label_counts

    stream = iter([{"label": 0}, {"label": 1}, {"label": 0}])  # no .examples: read once, as a streaming split is
    assert label_counts(stream, 3) == [2, 1, 0]

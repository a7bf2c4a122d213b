"""The CUDA training loop on a real GPU: each precision, torch.compile, a SIGKILL and resume, predictions and the
best checkpoint reloaded on the CPU, and two encoders that are not BERT. Skipped without a GPU; run on a lent
one by benchmarks/gpu_check.sh (step 1). Tiny models built here, the package's smoke data: nothing downloaded.

Tolerances, and why: a GPU run is not bit-reproducible (bf16 autocast, TF32 matmuls, atomics in some backward
kernels), so runs that should agree are compared within LOSS_RTOL (relative, on every logged loss) and
METRIC_ATOL (absolute, on dev accuracy and F1: 3 of the smoke dev split's 100 pairs)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import afqmc

from .conftest import ROOT, SMOKE_PAIRS, kill_after_save, read_jsonl, records, run_py, summary

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

LOSS_RTOL = 2e-2
METRIC_ATOL = 0.03
CONFIDENT = 0.6  # predictions whose CPU probability is above this must carry the GPU run's label
SMOKE = afqmc.ASSETS / "smoke"
CUDA = ["experiment=smoke", "trainer.device=cuda", "trainer.save_every_steps=20"]


def train(run_dir, *overrides) -> dict:
    """python run.py on the smoke data on the GPU; the run's summary.json."""
    proc = run_py(*CUDA, f"hydra.run.dir={run_dir}", *overrides)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]  # (run.py's one-line error: stdout)
    return summary(run_dir)


def assert_trained(s: dict, precision: str) -> None:
    assert s["status"] == "completed" and s["device"].startswith("cuda") and s["precision"] == precision, s
    assert math.isfinite(s["dev"]["loss"]), s["dev"]


def close(a: dict, b: dict, keys) -> list[str]:
    """The keys whose values differ by more than the tolerances (the learning rate: not at all)."""
    out = []
    for k in keys:
        x, y = a.get(k), b.get(k)
        if k == "loss" and isinstance(x, float) and isinstance(y, float):
            ok = math.isclose(x, y, rel_tol=LOSS_RTOL)
        elif k != "lr" and isinstance(x, float) and isinstance(y, float):
            ok = abs(x - y) <= METRIC_ATOL
        else:
            ok = x == y
        if not ok:
            out.append(f"{k}: {x} vs {y}")
    return out


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """The smoke recipe (8 epochs) in bf16 with test predictions: the reference for the tests below."""
    run_dir = tmp_path_factory.mktemp("cuda") / "bf16"
    train(run_dir, "trainer.precision=bf16")
    return run_dir


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_trains_in_each_precision(precision, bf16_run, tmp_path):
    run_dir = bf16_run if precision == "bf16" else tmp_path / precision
    s = summary(run_dir) if precision == "bf16" else train(run_dir, f"trainer.precision={precision}")
    assert_trained(s, precision)
    losses = [r["loss"] for r in records(run_dir) if r["type"] == "train"]
    assert losses and all(math.isfinite(x) for x in losses), losses  # fp16: the GradScaler kept it finite


def test_compiled_run_trains_like_the_eager_one(bf16_run, tmp_path):
    """trainer.compile=true (lengths padded to multiples of 32, not 8): the same steps, a first loss within the
    tolerance, and a best checkpoint that the CPU reloads to the run's own dev figures (no compiled-module names in
    the saved weights, the compiled evaluation agreeing with an eager one)."""
    run_dir = tmp_path / "compiled"
    s = train(run_dir, "trainer.precision=bf16", "trainer.compile=true")
    assert_trained(s, "bf16")
    eager = [r for r in records(bf16_run) if r["type"] == "train"]
    compiled = [r for r in records(run_dir) if r["type"] == "train"]
    assert [r["step"] for r in compiled] == [r["step"] for r in eager]
    # the first logged loss (step 5): later, compiled dropout's own random masks and bf16 noise part the two runs
    assert math.isclose(compiled[0]["loss"], eager[0]["loss"], rel_tol=LOSS_RTOL), (compiled[0], eager[0])
    _, cpu_dev = cpu_predict(run_dir / "checkpoints" / "best", "dev", tmp_path / "dev.jsonl")
    assert not close(s["dev"], cpu_dev, ["accuracy", "f1_macro", "loss"]), (s["dev"], cpu_dev)


def test_sigkill_and_resume_ends_as_the_straight_run(bf16_run, tmp_path):
    """SIGKILL right after checkpoints/last is saved in epoch 2, then trainer.resume=true: the same records
    (steps, epochs) with losses and dev metrics within the tolerances, and the best within METRIC_ATOL."""
    killed = tmp_path / "killed"
    kill_after_save(60, *CUDA, "trainer.precision=bf16", f"hydra.run.dir={killed}")
    proc = run_py(f"hydra.run.dir={killed}", "trainer.resume=true")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "resuming from" in (killed / "run.log").read_text()
    straight, resumed = records(bf16_run), records(killed)
    assert [(r["type"], r.get("epoch"), r.get("step")) for r in resumed] == [
        (r["type"], r.get("epoch"), r.get("step")) for r in straight
    ]
    diffs = [f"step {a.get('step')} {d}" for a, b in zip(straight, resumed) for d in close(a, b, a)]
    assert not diffs, diffs
    a, b = summary(bf16_run), summary(killed)
    assert b["status"] == "completed" and abs(a["best"]["value"] - b["best"]["value"]) <= METRIC_ATOL, (a, b)
    assert not close(a["dev"], b["dev"], a["dev"]), (a["dev"], b["dev"])


def test_predictions_and_the_best_checkpoint_on_the_cpu(bf16_run, tmp_path):
    """The run's test predictions cover the test split; its best checkpoint, reloaded by afqmc.predict on the
    CPU (fp32), gives the same labels where it is confident and the run's dev figures within the tolerances."""
    gpu = read_jsonl(bf16_run / "predictions" / "afqmc_predict.json")
    assert len(gpu) == SMOKE_PAIRS["test"]
    best = bf16_run / "checkpoints" / "best"
    cpu, _ = cpu_predict(best, "test", tmp_path / "test.jsonl")
    assert [r["id"] for r in cpu] == [r["id"] for r in gpu]
    flips = [(g, c) for g, c in zip(gpu, cpu) if c["probability"] > CONFIDENT and c["label"] != g["label"]]
    assert not flips, flips
    assert sum(c["probability"] > CONFIDENT for c in cpu) >= len(cpu) // 2, "the smoke model should be trained"
    dev = summary(bf16_run)["dev"]
    _, cpu_dev = cpu_predict(best, "dev", tmp_path / "dev.jsonl")
    assert not close(dev, cpu_dev, ["accuracy", "f1_macro", "loss"]), (dev, cpu_dev)


def cpu_predict(checkpoint, split: str, out) -> tuple[list[dict], dict[str, float]]:
    """python -m afqmc.predict CHECKPOINT --file <smoke split> on the CPU (fp32), as on a host without a GPU:
    its predictions, and the metrics it prints (on standard output with --output) when the split has labels."""
    cmd = [sys.executable, "-m", "afqmc.predict", str(checkpoint), "--file", str(SMOKE / f"{split}.json")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, "--output", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    words = proc.stdout.split()  # "accuracy 0.8100 f1_macro 0.8095 ..."
    return read_jsonl(out), {k: float(v) for k, v in zip(words[::2], words[1::2])}


# ---------------------------------------------------------------- encoders that are not BERT
# These need model.checkpoint=DIR to load any transformers encoder or decoder (another issue); written as a user
# would run them: a checkpoint directory as the hub gives one (a *ForMaskedLM / *ForCausalLM, its tokenizer).
def smoke_texts() -> list[str]:
    return [
        r[k]
        for split in ("train", "dev", "test")
        for r in read_jsonl(SMOKE / f"{split}.json")
        for k in r
        if "sentence" in k
    ]


def tiny_roberta(path):
    """RoBERTa's architecture (positions after the padding index, one token type), a character vocabulary of the
    smoke data, a tokenizer that returns no token_type_ids (as RoBERTa's does)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForMaskedLM

    specials = {
        "bos_token": "<s>",
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
    }
    chars = sorted({c for t in smoke_texts() for c in t.lower() if not c.isspace()})
    vocab = {tok: i for i, tok in enumerate([*specials.values(), *chars])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True, lowercase=True)  # one token a character
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, model_input_names=["input_ids", "attention_mask"], **specials
    )
    config = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,  # RoBERTa's positions start after the padding index: max_length 64 + 2
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    RobertaForMaskedLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_qwen2(path):
    """Qwen2's architecture (a decoder: causal attention, grouped KV heads, no [CLS]) with its own tokenizer class,
    a byte-level BPE trained here on the smoke data; padding with <|endoftext|>, as Qwen2 pads."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet, show_progress=False
    )
    bpe.train_from_iterator(smoke_texts(), trainer)
    learned = json.loads(bpe.to_str())["model"]
    tok = Qwen2Tokenizer(vocab=learned["vocab"], merges=[tuple(m) for m in learned["merges"]], unk_token=None)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "build,pooling",
    [(tiny_roberta, "mean"), (tiny_qwen2, "mean"), (tiny_qwen2, "auto")],
    ids=["roberta-mean", "qwen2-mean", "qwen2-auto"],
)
def test_a_model_that_is_not_bert_trains_in_bf16(build, pooling, tmp_path):
    checkpoint = build(tmp_path / "model")
    s = train(
        tmp_path / "run",
        f"model.checkpoint={checkpoint}",
        "model.pretrained=true",
        f"model.pooling={pooling}",  # mean: afqmc's head over the encoder; auto: Qwen2's own, its last real token
        "trainer.precision=bf16",
        "trainer.epochs=2",
    )
    assert_trained(s, "bf16")
    assert len(read_jsonl(tmp_path / "run" / "predictions" / "afqmc_predict.json")) == SMOKE_PAIRS["test"]

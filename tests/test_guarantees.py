"""Never a wrong result, round two (issue 24): a run's record that nothing but the run writes, caches keyed
by everything they depend on, a job's identity without the keys that change nothing, checkpoints verified
wherever they are read, trackers that cannot lose a run, and one line where a command used to raise."""

import fcntl
import os
import shutil
from pathlib import Path

import pytest

from afqmc.runs import records as runs

from .conftest import compose_cfg, read_jsonl, run_py, summary
from .test_lifecycle import RECORD, TINY, one_line_error, snapshot


@pytest.fixture(scope="module")
def completed(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("completed") / "run"
    proc = run_py(*TINY, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture
def copied(completed, tmp_path):
    return shutil.copytree(completed, tmp_path / "run")


# ---------------------------------------------------------------- 1, 18: the record
@pytest.mark.slow
def test_a_refused_command_leaves_the_record_as_it_was(copied):
    before = snapshot(copied)
    assert set(before) == set(RECORD)
    fd = os.open(copied / runs.LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a run in progress holds the directory
    try:
        proc = run_py(*TINY, "trainer.overwrite=true", "optimizer.lr=0.5", "trainer.seed=9", f"hydra.run.dir={copied}")
        one_line_error(proc, "RunDirError", "in use by")
    finally:
        os.close(fd)
    assert snapshot(copied) == before
    proc = run_py(*TINY, "optimizer.lr=-1", "trainer.overwrite=true", f"hydra.run.dir={copied}")  # a config refused
    one_line_error(proc, "ConfigError", "optimizer.lr")
    assert snapshot(copied) == before
    proc = run_py(  # a resume that the record refuses, even with overwrite
        f"hydra.run.dir={copied}", "trainer.resume=true", "trainer.overwrite=true", "optimizer.lr=0.5"
    )
    one_line_error(proc, "ConfigError", "optimizer.lr: 0.002 -> 0.5")
    assert snapshot(copied) == before and summary(copied)["status"] == "completed"


@pytest.mark.slow
def test_a_resume_without_the_record_is_refused(copied):
    shutil.rmtree(copied / ".hydra")
    before = sorted(p.name for p in copied.iterdir())
    proc = run_py(f"hydra.run.dir={copied}", "trainer.resume=true")
    one_line_error(proc, "CheckpointError", "without its record", "trainer.overwrite=true")
    assert sorted(p.name for p in copied.iterdir()) == before and summary(copied)["status"] == "completed"


def test_the_record_is_written_by_the_run_with_the_config_it_trains(tmp_path):
    """Without Hydra (afqmc.train in Python) the run writes its record itself, once it holds the directory."""
    cfg = compose_cfg(TINY)
    with runs.claimed(tmp_path / "run", cfg):
        assert runs.read_overrides(tmp_path / "run" / runs.OVERRIDES) == []
        assert (tmp_path / "run" / runs.CONFIG).read_text() == runs.OmegaConf.to_yaml(cfg)


# ---------------------------------------------------------------- 3, 4: what a job is, what a resume may change
def test_free_keys_are_no_part_of_a_jobs_identity_nor_of_the_reports_groups(tmp_path):
    from afqmc.report import seed_groups

    job = ["optimizer.lr=1e-3", "trainer.seed=3"]
    assert runs.job_identity([*job, "logger=tensorboard", "trainer.resume=true"]) == runs.job_identity(job)
    assert runs.job_identity(["logger=[tensorboard,mlflow]", "+logger.mlflow.tracking_uri=x", *job]) == (
        runs.job_identity(job)
    )
    # a grown sweep's new job records trainer.resume=True: still one group of three seeds
    grid = [
        runs.Run(tmp_path / str(i), ["optimizer.lr=1e-3", f"trainer.seed={i}", *extra], "completed")
        for i, extra in ((1, []), (2, []), (3, ["trainer.resume=True", "logger=tensorboard"]))
    ]
    assert [len(members) for _, members in seed_groups(grid)] == [3]
    # a sweep resumed with a tracker added is the sweep's resume, not one new job with the default config
    runs.write_text(tmp_path / "sweep" / "0" / runs.OVERRIDES, "- optimizer.lr=1e-3\n")
    argv = ["run.py", "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", "trainer.resume=true", "logger=tensorboard"]
    assert runs.resume_argv(argv)[-1] == "hydra/sweeper=afqmc_resume"


def test_a_resume_may_drop_or_change_its_trackers(tmp_path):
    recorded = ["experiment=smoke", "logger=mlflow", "logger.mlflow.tracking_uri=file:///x", "optimizer.lr=1e-3"]
    runs.write_text(tmp_path / runs.OVERRIDES, "".join(f"- {o}\n" for o in recorded))
    for given in (["~logger"], ["logger=[]"], ["logger=tensorboard"]):
        assert runs.merge_overrides(recorded, given) == ["experiment=smoke", "optimizer.lr=1e-3", *given]
        argv = runs.resume_argv(["run.py", f"hydra.run.dir={tmp_path}", "trainer.resume=true", *given])
        assert argv[1:3] == ["experiment=smoke", "optimizer.lr=1e-3"] and argv[-1] == given[0]
        compose_cfg([a for a in argv[1:] if not a.startswith("hydra.")])  # Hydra composes it


def test_cpu_threads_is_refused_on_resume(tmp_path):
    """torch does not promise the same sums across thread counts: a resume with another count is refused."""
    from afqmc.errors import ConfigError

    run_dir = tmp_path / "run"
    with runs.claimed(run_dir, compose_cfg([*TINY, "trainer.cpu_threads=1"])):
        (run_dir / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"trainer.cpu_threads: 1 -> 2"):
        with runs.claimed(run_dir, compose_cfg([*TINY, "trainer.cpu_threads=2", "trainer.resume=true"])):
            pass


# ---------------------------------------------------------------- 8: a run that would keep no model
def test_no_dev_split_and_no_best_checkpoint_is_refused():
    from afqmc.config.schema import check_config
    from afqmc.errors import ConfigError

    cfg = compose_cfg([*TINY, "dataset.splits.dev=null", "trainer.save_best=false"])
    with pytest.raises(ConfigError, match=r"trainer.save_best=false with dataset.splits.dev=null would keep no model"):
        check_config(cfg)


# ---------------------------------------------------------------- 2: the encoded-split cache
def test_the_encoded_split_cache_is_keyed_by_what_the_encoding_depends_on(tmp_path, tiny_bert_dir):
    """One file read with each reading setting in turn, in one process as a sweep's jobs are: every encoding is
    the tokenizer's own on the texts that setting reads, none another setting's from the cache."""
    from transformers import AutoTokenizer

    from afqmc.data.components import build_dataset
    from afqmc.data.datasets import texts

    rows = ['"借呗"\t花呗\t额度\t1', '信用卡\t"逾期"\t还款\t0', "支付宝\t开通\t网商贷\t1"]
    (tmp_path / "train.tsv").write_text("a\tb\tc\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    base = ["dataset.format=tsv", f"dataset.root={tmp_path}", "dataset.splits.train=train.tsv"]
    base += ["dataset.columns.text_a=a", "dataset.columns.text_b=b", "dataset.columns.label=label"]
    settings = [
        [],
        ["dataset.columns.text_b=null"],
        ["dataset.columns.text_b=c"],
        ["dataset.columns.text_a=b", "dataset.columns.text_b=a"],
        ["dataset.quoting=csv"],
        ["dataset.header=false", "dataset.columns.text_a=2", "dataset.columns.text_b=0", "dataset.columns.label=3"],
        ["dataset.max_train_samples=2", "dataset.no_gold_label=[x]"],
    ]
    encodings = set()
    for extra in settings:
        extra = [*extra, "dataset.on_bad_line=skip"] if "dataset.header=false" in extra else extra
        split = build_dataset(compose_cfg([*base, *extra]).dataset, "train")
        split.encode(tokenizer, 32)
        fresh = tokenizer(*texts(split.examples), truncation=True, max_length=32)
        got = {n: [f[n] for f in split.features] for n in ("input_ids", "token_type_ids")}
        assert got == {n: fresh[n] for n in got}, extra
        encodings.add(repr(got))
    assert len(encodings) == len(settings)  # each setting read other texts (the header line, as data, is bad)


# ---------------------------------------------------------------- 5: checkpoints verified wherever read
def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def test_a_checkpoint_without_its_manifest_is_refused_unless_trusted(completed, tmp_path, monkeypatch):
    from afqmc.errors import CheckpointError
    from afqmc.training import checkpoint

    best = shutil.copytree(completed / "checkpoints" / "best", tmp_path / "best")
    (best / checkpoint.MANIFEST).unlink()
    flip_a_bit(best / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"no checkpoint.json.*{checkpoint.TRUST_UNVERIFIED}=1"):
        checkpoint.verify(best)
    monkeypatch.setenv(checkpoint.TRUST_UNVERIFIED, "1")  # the user says to trust it
    assert checkpoint.verify(best)["files"] == {}


def test_a_corrupt_afqmc_checkpoint_as_model_checkpoint_is_refused(completed, tmp_path):
    import afqmc
    from afqmc.errors import CheckpointError

    best = shutil.copytree(completed / "checkpoints" / "best", tmp_path / "best")
    flip_a_bit(best / "model.safetensors")
    cfg = compose_cfg([*TINY, f"model.checkpoint={best}"])
    with pytest.raises(CheckpointError, match="model.safetensors: its content differs"):
        afqmc.train(cfg, tmp_path / "run")


# ---------------------------------------------------------------- 6, 12, 19: afqmc.predict's inputs
def test_predict_refuses_what_it_would_answer_wrongly(completed, tmp_path, capsys):
    from afqmc import predict

    best = str(completed / "checkpoints" / "best")
    for flag, value in (("--batch-size", "-1"), ("--batch-size", "0"), ("--max-length", "-3")):
        with pytest.raises(SystemExit) as exit_:
            predict.main([best, "借呗", "花呗", flag, value])
        assert exit_.value.code == 2 and f"{value!r} is invalid; expected an integer >= 1" in capsys.readouterr().err
    for args, needle in (
        ([best, "借呗怎么还款"], "1 sentence(s) given to a sentence-pair model: give two sentences"),
        ([best, "借呗", "花呗", "--max-length", "100000"], "--max-length 100000 is invalid; expected at most"),
        ([str(tmp_path / "nope"), "借呗", "花呗"], "missing; expected a checkpoint directory"),
        ([str(tmp_path), "借呗", "花呗"], "not a checkpoint; expected a checkpoint directory"),
    ):
        assert predict.main(args) == 1
        err = capsys.readouterr().err
        assert needle in err and "trainer.overwrite" not in err and len(err.strip().splitlines()) == 1, err
    for text in ("", "\n  \n"):
        (tmp_path / "in.json").write_text(text)
        assert predict.main([best, "--file", str(tmp_path / "in.json")]) == 1
        assert "no examples (the file is empty or blank)" in capsys.readouterr().err
    predictor = predict.Predictor(completed)  # a run directory: its checkpoints/best
    predictor.texts_per_example = 1  # as a single-sentence model's
    with pytest.raises(predict.ConfigError, match="2 sentence.s. given to a single-sentence model: give one"):
        predictor([("借呗", "花呗")])
    assert predict.main([str(completed), "借呗", "花呗"]) == 0
    assert capsys.readouterr().out.startswith("label ")


# ---------------------------------------------------------------- 6, 13: afqmc.evaluate
def test_evaluate_refuses_model_overrides_and_says_in_one_line_what_it_cannot_read(copied, capsys):
    from afqmc import evaluate

    def fails(*args, needle):
        assert evaluate.main([str(copied), *args]) == 1
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err

    fails("model.pooling=mean", needle="model.pooling='mean': afqmc.evaluate scores the run's checkpoint")
    fails("dataset.root=${nope}", needle="ConfigError: ")
    (copied / "eval").write_text("")  # the directory it writes into cannot be made
    fails(needle=str(copied / "eval"))
    assert not any(copied.glob("eval/*"))
    config = copied / runs.CONFIG
    config.write_bytes(config.read_bytes().replace(b"0.002", "０.００２".encode("gbk")))
    fails(needle="not UTF-8")


# ---------------------------------------------------------------- 6, 19: data that read silently wrong
def test_a_sentence_of_control_characters_and_a_file_of_cr_line_endings_are_one_line(tmp_path):
    from afqmc.data.reading import read_examples
    from afqmc.errors import DataError

    tsv = ["dataset.format=tsv", "dataset.columns.text_a=a", "dataset.columns.text_b=b", "dataset.columns.label=label"]
    cases = (
        ([], '{"sentence1": "\\u0000\\u0000", "sentence2": "借呗", "label": "1"}\n', ":1: field 'sentence1' has only"),
        (tsv, "a\tb\tlabel\n借呗\t\x00\x00\t1\n", ":2: field 'b' has only control characters"),
        (tsv, "a\tb\tlabel\r借呗\t花呗\t1\r信用卡\t逾期\t0\r", ":1: a carriage return (\\r) before the line's end"),
    )
    for overrides, text, needle in cases:
        (tmp_path / "train").write_text(text, encoding="utf-8", newline="")
        cfg = compose_cfg(overrides).dataset
        with pytest.raises(DataError) as error:
            list(read_examples(tmp_path / "train", cfg, labeled=True))
        assert needle in str(error.value) and "信用卡" not in str(error.value)


# ---------------------------------------------------------------- 6: a submission CLUE could not score
def test_clue_submission_checks_the_count_of_predictions(tmp_path, capsys):
    """A predictions file cut short, and a smoke run's predictions as AFQMC's: refused, nothing written."""
    from afqmc.clue_submission import main as clue_submission
    from afqmc.files import write_json

    run = tmp_path / "run"
    lines = "".join(f'{{"id": {i}, "label": "0"}}\n' for i in range(50))
    runs.write_text(run / "predictions" / "afqmc_predict.json", lines)
    summary = {"status": "completed", "best": {"value": 0.5}, "predictions_lines": 50}
    write_json(run / "summary.json", summary)
    out = tmp_path / "clue.zip"
    assert clue_submission([str(run), "--out", str(out)]) == 1
    assert "50 predictions, but CLUE's afqmc test set has 3,861 lines" in capsys.readouterr().err
    runs.write_text(run / "predictions" / "afqmc_predict.json", "".join(lines.splitlines(True)[:10]))
    assert clue_submission([str(run), "--out", str(out)]) == 1
    assert "10 predictions, but the run predicted 50 test lines" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------- 7: trackers that cannot lose a run
class Flaky:
    """A tracker whose store breaks at step `fail_at` and whose end fails too."""

    def __init__(self, cfg, run, run_id):
        self.id, self.fail_at = None, cfg.fail_at

    def log(self, values, step):
        if step >= self.fail_at:
            raise OSError(28, "No space left on device", "flaky/events")

    def flush(self):
        pass

    def end(self, summary, status):
        raise RuntimeError("never reached: switched off at its first failure")


def _register_flaky():
    from afqmc.config.registry import LOGGERS

    try:
        LOGGERS.register("flaky")(Flaky)
    except ValueError:  # registered by an earlier test in this process
        pass


def test_a_failing_tracker_is_reported_once_and_the_run_goes_on(tmp_path, caplog):
    import afqmc

    _register_flaky()
    cfg = compose_cfg([*TINY, "+logger.flaky.fail_at=2"])
    with caplog.at_level("WARNING", logger="afqmc.runs.trackers"):
        afqmc.train(cfg, tmp_path / "run")
    warnings = [r.getMessage() for r in caplog.records if r.name == "afqmc.runs.trackers"]
    assert len(warnings) == 1 and "logger flaky failed while logging step 2" in warnings[0], warnings
    assert "No space left on device" in warnings[0] and "switched off" in warnings[0]
    assert summary(tmp_path / "run")["status"] == "completed"
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["type"] == "train"] == [1, 2, 3, 4]


def test_a_tracker_that_cannot_start_or_go_on_is_switched_off_in_seconds(tmp_path, caplog):
    """An MLflow server that refuses connections (it retried for 260 s), and a resumed MLflow run that its
    store no longer has: each reported once, and the run goes on without it."""
    from types import SimpleNamespace

    from afqmc.runs.trackers import start_trackers

    cases = (
        (["logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9"], None, "cannot connect"),
        (["logger=mlflow", f"logger.mlflow.tracking_uri={tmp_path / 'mlruns'}"], "0" * 32, "going on with its run"),
    )
    for overrides, resumed, needle in cases:
        caplog.clear()
        state = SimpleNamespace(step=0, trackers={"mlflow": resumed} if resumed else {})
        with caplog.at_level("WARNING", logger="afqmc.runs.trackers"):
            trackers = start_trackers(compose_cfg([*TINY, *overrides]), tmp_path / "run", state)
        assert trackers.trackers == {}
        (warning,) = [r.getMessage() for r in caplog.records if r.name == "afqmc.runs.trackers"]
        assert "logger mlflow failed while" in warning and needle in warning, warning


# ---------------------------------------------------------------- 9, 10, 11: one line, not a traceback
def test_overrides_hydra_cannot_parse_are_named_and_non_ascii_values_quoted():
    argv, quoted = runs.hydra_quoted(
        ["run.py", "dataset.root=/data/中文语料", "-m", "dataset.task=甲,乙", "trainer.seed=1"]
    )
    assert argv == ["run.py", "dataset.root='/data/中文语料'", "-m", "dataset.task='甲','乙'", "trainer.seed=1"]
    assert quoted == argv[1:2] + argv[3:4]
    assert compose_cfg([argv[1]]).dataset.root == "/data/中文语料"  # what the user meant
    for bad in ("optimizer.lr=1e-3,", "trainer.seed=[1", "trainer.seed=range(1", '+dataset.label_map={"0":0}'):
        argv = ["run.py", bad, "hydra.run.dir=x", "trainer.resume=true"]
        assert runs.resume_argv(argv) == argv  # left to Hydra, never a traceback here
        assert runs.unparsable(argv).startswith(f"{bad}: Hydra's override grammar refuses it (")
    assert runs.unparsable(["run.py", "dataset.root='/data/中文'", "trainer.seed=range(1,3)", "-m"]) is None


@pytest.mark.slow
def test_the_first_commands_fail_in_one_line(tmp_path):
    proc = run_py("dataset.root=/data/中文语料", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0 and "root: /data/中文语料" in proc.stdout, proc.stderr[-2000:]
    assert "quoted for Hydra" in proc.stderr

    def fails(*args, needle):
        proc = run_py(*TINY, *args, cwd=tmp_path)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "Traceback" not in out and needle in out, out[-3000:]

    fails("optimizer.lr=1e-3,", needle="ConfigError: optimizer.lr=1e-3,: Hydra's override grammar refuses it")
    fails("logger=null", "hydra.run.dir=r1", needle="ConfigError: logger=null: a config group takes an option")
    assert not (tmp_path / "r1").exists()
    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    (tmp_path / "conf" / "dataset" / "gbk.yaml").write_bytes("task: 中文\n".encode("gbk"))
    fails(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "dataset=gbk", needle="gbk.yaml: not UTF-8 text")
    (tmp_path / "r2" / "run.log").mkdir(parents=True)  # Hydra's log file cannot be opened
    fails("hydra.run.dir=r2", needle="RunDirError: " + str(tmp_path / "r2" / "run.log") + ": Is a directory")


def test_ctrl_c_while_the_trainer_is_built_leaves_a_summary(tmp_path, monkeypatch):
    import afqmc
    from afqmc.errors import Interrupted
    from afqmc.training import trainer

    def interrupted(self, cfg, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "__init__", interrupted)
    with pytest.raises(Interrupted):
        afqmc.train(compose_cfg(TINY), tmp_path / "run")
    assert summary(tmp_path / "run")["status"] == "interrupted"


def test_a_full_disk_while_saving_is_one_line_naming_the_file(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from afqmc.config.registry import MODELS
    from afqmc.errors import CheckpointError
    from afqmc.files import atomic_write, write_text
    from afqmc.training import checkpoint

    with pytest.raises(OSError) as error:  # a write that fills the disk names no file: atomic_write names it
        with atomic_write(tmp_path / "predictions.json") as tmp, open(tmp, "w") as f:
            f.write("x")
            raise OSError(28, "No space left on device")
    assert error.value.filename == str(tmp_path / "predictions.json") and not any(tmp_path.iterdir())
    write_text(tmp_path / "last" / "kept", "the copy before")
    component = MODELS.component("bert_pair_cls")
    for failure in (
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
        SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"),
    ):

        def full(model, path, failure=failure):
            raise failure

        monkeypatch.setitem(component.hooks, "save", full)
        with pytest.raises(CheckpointError, match=r"last: could not be written \(.*is the disk full\?"):
            checkpoint.save(tmp_path / "last", "bert_pair_cls", None, None)
        assert (tmp_path / "last" / "kept").read_text() == "the copy before"


# ---------------------------------------------------------------- 14: a report that lists what it cannot read
def test_the_report_lists_what_it_cannot_read_and_goes_on(tmp_path):
    import json

    from afqmc import report

    for name, dev, curve in (
        ("good", {"f1_macro": 0.7, "accuracy": 0.8}, [{"type": "eval", "epoch": 1, "step": 5, "f1_macro": 0.7}]),
        ("odd", {"f1_macro": "abc", "accuracy": [1]}, [{"type": "eval", "step": 5, "f1_macro": 0.6}]),
    ):
        run = tmp_path / name
        runs.write_text(run / runs.OVERRIDES, f"- trainer.seed={len(name)}\n")
        best = {"epoch": 1, "step": 5, "metric": "f1_macro", "value": 0.7}
        runs.write_text(run / "summary.json", json.dumps({"status": "completed", "best": best, "dev": dev}))
        runs.write_text(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in curve))
    for text in ("best_value: [unclosed\n", "null\n", "best_value: high\nbest_params: {}\n"):
        (tmp_path / "optimization_results.yaml").write_text(text)
        md = report.write_report(tmp_path).read_text()
        assert "optimization_results.yaml: unreadable" in md
    assert "summary.json: dev.f1_macro is 'abc', not a number" in md
    assert "metrics.jsonl: 1 dev records without an epoch left out" in md
    assert "0.7000" in md  # the good run is reported as ever
    shutil.rmtree(tmp_path / "curves.png", ignore_errors=True)
    (tmp_path / "report.csv").unlink()
    (tmp_path / "report.csv" / "x").mkdir(parents=True)  # a file the report cannot replace (as a read-only one)
    with pytest.raises(SystemExit) as exit_:
        report.main([str(tmp_path)])
    assert str(exit_.value.code).startswith("afqmc.report: ") and "report.csv" in str(exit_.value.code)


# ---------------------------------------------------------------- 15, 17, 19: messages that misled
@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["trainer.device=cuda"], "trainer.device='cuda' but CUDA is not available"),
        (["trainer.precision=fp16"], "trainer.precision=fp16 needs CUDA, which is not available"),
        (["trainer.precision=fp16", "trainer.device=cpu"], "trainer.precision=fp16 needs CUDA"),
    ],
)
def test_cuda_on_a_machine_without_it_is_a_config_error(overrides, needle, monkeypatch, tmp_path):
    """Refused before the run claims a directory: nothing written, nothing to block a re-run."""
    import torch

    import afqmc
    from afqmc.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=needle):
        afqmc.train(compose_cfg([*TINY, *overrides]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_random_bytes_in_state_pt_are_called_corrupt(tmp_path):
    from afqmc.errors import CheckpointError
    from afqmc.training.checkpoint import TrainState

    (tmp_path / "state.pt").write_bytes(bytes(range(256)) * 16)
    with pytest.raises(CheckpointError, match=r"state.pt: corrupt, not a torch file of tensors") as error:
        TrainState.load(tmp_path / "state.pt")
    assert "could run code" not in str(error.value)


def test_a_keep_last_never_resume_says_it_goes_on_from_the_older_checkpoint(tmp_path):
    from afqmc.training.checkpointer import Checkpointer

    keeper = Checkpointer.__new__(Checkpointer)  # (only what how_to_resume reads)
    keeper.out, keeper.keep_last = tmp_path, "never"
    assert "starts afresh" in keeper.how_to_resume()
    (tmp_path / "checkpoints" / "last").mkdir(parents=True)  # the checkpoint of an attempt before this one
    said = keeper.how_to_resume()
    assert "starts afresh" not in said and "is older; go on from it with: python run.py hydra.run.dir=" in said


# ---------------------------------------------------------------- 16: the printed resume command of a search
@pytest.mark.slow
def test_the_resume_command_of_an_optuna_search_works(tmp_path):
    """`python run.py -m hydra.sweep.dir=SWEEP trainer.resume=true`, as a stopped search prints it: each job's
    recorded overrides hold hparams_search=afqmc_optuna, whose sampler override Hydra refused under the sweeper
    that resumes (a job recorded by hand here, as an Optuna search records it, completed: it is skipped)."""
    import json

    from omegaconf import OmegaConf

    job = tmp_path / "sweep" / "0"
    overrides = ["optimizer.lr=2e-05", "hparams_search=afqmc_optuna", *TINY]
    runs.write_text(job / runs.CONFIG, OmegaConf.to_yaml(compose_cfg(overrides)))
    runs.write_text(job / runs.OVERRIDES, "".join(f"- {o}\n" for o in overrides))
    best = {"epoch": 1, "step": 4, "metric": "f1_macro", "value": 0.5}
    runs.write_text(job / "summary.json", json.dumps({"status": "completed", "best": best}))
    proc = run_py("-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", "trainer.resume=true", cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "completed: skipped" in (job / "run.log").read_text()

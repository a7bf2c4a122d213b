"""A run's lifecycle never gives a wrong or mixed result: resume by directory with the run's own config,
records never rewritten, sweep jobs matched by their overrides, one process per run directory, and
corrupt or changed files named in one line before anything uses them."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from afqmc.config.identity import config_snapshot
from afqmc.errors import CheckpointError, RunDirError
from afqmc.files import sha256
from afqmc.runs import records as runs
from afqmc.training import checkpoint
from afqmc.training.checkpoint import TrainState

from .conftest import (
    ENV,
    ROOT,
    compose_cfg,
    read_jsonl,
    records,
    run_py,
    signal_at,
    smoke_steps,
    summary,
    torchrun_py,
)

# 4 optimizer steps, checkpoints/last after each, a train record each step
TINY = [
    "experiment=smoke",
    "dataset.max_train_samples=64",
    "trainer.epochs=1",
    "trainer.predict=false",
    "trainer.log_every=1",
]
RECORD = (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "summary.json")


def snapshot(run_dir: Path, names=RECORD) -> dict:
    return {name: (run_dir / name).read_bytes() for name in names if (run_dir / name).exists()}


def one_line_error(proc, *needles):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if "Error" in line]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), errors
    return errors[0]


def interrupt(run_dir: Path, *args, cwd=ROOT) -> str:
    """python run.py ARGS, stopped with Ctrl-C in its second step; returns its output."""
    proc = signal_at(2, signal.SIGINT, *args, f"hydra.run.dir={run_dir}", cwd=cwd)
    assert proc.returncode == 130, proc.stdout[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run of 50 steps stopped by Ctrl-C in its second, on a copy of the smoke data, with paths relative to
    where it ran (so that a copy of that directory is the same run); its printed hint."""
    base = tmp_path_factory.mktemp("interrupted")
    shutil.copytree(ROOT / "afqmc" / "assets" / "smoke", base / "data")
    args = [
        "experiment=smoke",
        "dataset.root=data",
        "trainer.epochs=1",
        "trainer.predict=false",
        "trainer.log_every=1",
        "trainer.save_every_steps=null",
    ]
    out = interrupt(Path("run"), *args, cwd=base)
    return base / "run", out


@pytest.fixture
def stopped(interrupted, tmp_path):
    """A copy of the interrupted run and its data (run/ and data/ in one directory), to change at will."""
    run_dir = shutil.copytree(interrupted[0].parent, tmp_path / "copy") / "run"
    state = checkpoint.TrainState.load(run_dir / "checkpoints" / "last" / "state.pt")
    assert state.step >= 2 and summary(run_dir)["status"] == "interrupted"
    return run_dir


@pytest.fixture(scope="module")
def completed(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("completed") / "run"
    proc = run_py(*TINY, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def resume(run_dir, *extra):
    """python run.py hydra.run.dir=RUN trainer.resume=true EXTRA, from the directory holding RUN."""
    return run_py(f"hydra.run.dir={run_dir}", "trainer.resume=true", *extra, cwd=run_dir.parent)


# ---------------------------------------------------------------- 1, 2, 3: resume by directory, records
@pytest.mark.slow
def test_the_printed_hint_resumes_the_run_with_its_own_overrides(stopped, interrupted):
    hint = interrupted[1].split("go on with: ")[1].splitlines()[0]
    assert hint == f"python run.py hydra.run.dir={interrupted[0]} trainer.resume=true"
    command = shlex.split(hint.replace(str(interrupted[0]), str(stopped)))
    record = snapshot(stopped, RECORD[:3])
    proc = subprocess.run(
        [sys.executable, str(ROOT / command[1]), *command[2:]],
        cwd=stopped.parent,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary(stopped)["status"] == "completed" and summary(stopped)["train"]["steps"] == smoke_steps(1)
    assert snapshot(stopped, RECORD[:3]) == record  # the record is the run's own, untouched


@pytest.mark.slow
def test_a_resume_with_another_config_is_refused_and_changes_nothing(stopped, completed, tmp_path):
    for run_dir in (stopped, completed):  # an interrupted run and a completed one, which resume would skip
        before = snapshot(run_dir)
        proc = resume(run_dir, "optimizer.lr=0.5", "trainer.seed=9")
        one_line_error(proc, "ConfigError", "optimizer.lr: 0.002 -> 0.5", "trainer.seed: 42 -> 9")
        assert snapshot(run_dir) == before


@pytest.mark.slow
def test_a_fresh_run_refuses_a_directory_holding_a_run(completed, tmp_path):
    run_dir = shutil.copytree(completed, tmp_path / "run")
    before = snapshot(run_dir)
    proc = run_py(*TINY, "optimizer.lr=1e-3", f"hydra.run.dir={run_dir}")
    one_line_error(proc, "RunDirError", "holds a run already (completed)", "trainer.overwrite=true")
    assert snapshot(run_dir) == before

    proc = run_py(*TINY, "optimizer.lr=1e-3", "trainer.overwrite=true", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in records(run_dir) if r["type"] == "train"] == [1, 2, 3, 4]  # one run's records
    assert "optimizer.lr=1e-3" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    log = (run_dir / "run.log").read_text()
    assert log.count("device: cpu") == 1 and "holds a run" not in log  # one run's log


@pytest.mark.slow
def test_sweep_jobs_are_matched_by_their_overrides(tmp_path):
    proc = run_py("-m", *TINY, "optimizer.lr=1e-3,2e-3", "trainer.seed=1,2", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = {d.name: snapshot(d) for d in tmp_path.iterdir() if (d / "summary.json").exists()}
    assert len(first) == 4
    # another grid, its arguments in another order: the four runs are skipped, two new ones train
    proc = run_py(
        "-m",
        *TINY,
        "trainer.seed=1,2,3",
        "optimizer.lr=0.001,2e-3",
        f"hydra.sweep.dir={tmp_path}",
        "trainer.resume=true",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {d.name: d for d in tmp_path.iterdir() if (d / "summary.json").exists()}
    assert len(jobs) == 6 and all(snapshot(jobs[name]) == files for name, files in first.items())
    for run_dir in jobs.values():  # each directory's config is the one its record and its summary belong to
        config = compose_cfg([*TINY, *runs.read_overrides(run_dir / ".hydra" / "overrides.yaml")])
        assert config_snapshot(config) == {
            **config_snapshot(runs.OmegaConf.load(run_dir / ".hydra" / "config.yaml")),
            "trainer.resume": config.trainer.resume,
        }
    pairs = sorted(
        (cfg.optimizer.lr, cfg.trainer.seed)
        for cfg in (runs.OmegaConf.load(d / ".hydra" / "config.yaml") for d in jobs.values())
    )
    assert pairs == [(1e-3, 1), (1e-3, 2), (1e-3, 3), (2e-3, 1), (2e-3, 2), (2e-3, 3)]  # none twice, none missing
    report = (tmp_path / "report.csv").read_text().splitlines()
    assert len(report) == 7 and "failed" not in "".join(report)

    # the sweep by its directory alone: every job again with its own overrides, all of them completed
    proc = run_py("-m", f"hydra.sweep.dir={tmp_path}", "trainer.resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum("completed: skipped" in (d / "run.log").read_text() for d in jobs.values()) == 6
    assert len((tmp_path / "report.csv").read_text().splitlines()) == 7


# ---------------------------------------------------------------- 4: one process per directory
HOLD_LOCK = (
    "import fcntl, os, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
    "f.write(f'PID {os.getpid()} on here'); f.flush(); print('held', flush=True); time.sleep(60)"
)


def test_a_second_process_is_refused_naming_the_holder_and_a_stale_lock_is_taken(tmp_path):
    cfg = compose_cfg(TINY)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=rf"{tmp_path} is in use by PID {holder.pid} on here"):
            with runs.claimed(tmp_path, cfg):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert f"PID {holder.pid}" in (tmp_path / ".lock").read_text()  # left by a process that no longer lives
    with runs.claimed(tmp_path, cfg):
        assert (tmp_path / ".lock").read_text().startswith(f"PID {os.getpid()} ")


# ---------------------------------------------------------------- 6, 8, 9, 10: files checked before use
@pytest.mark.slow
def test_metrics_cut_short_or_changed_stop_the_resume_without_nul_bytes(stopped):
    metrics = stopped / "metrics.jsonl"
    whole = metrics.read_bytes()
    metrics.write_bytes(whole[: len(whole) // 3])
    one_line_error(
        resume(stopped), "CheckpointError", "metrics.jsonl", "records written before the checkpoint are lost"
    )
    assert metrics.read_bytes() == whole[: len(whole) // 3]  # refused, not padded with NUL bytes
    metrics.write_bytes(whole.replace(b'"step": 1,', b'"step": 7,', 1))
    one_line_error(resume(stopped), "CheckpointError", "metrics.jsonl", "the records were changed")


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["half the lines", "one sentence"])
def test_a_resume_on_changed_data_is_refused(stopped, edit):
    train = stopped.parent / "data" / "train.json"
    lines = train.read_text().splitlines(keepends=True)
    if edit == "half the lines":
        train.write_text("".join(lines[: len(lines) // 2]))
        now = len(lines) // 2
    else:  # as many examples as before: only the fingerprint tells
        row = json.loads(lines[0])
        row["sentence1"] += "吗"
        train.write_text(json.dumps(row, ensure_ascii=False) + "\n" + "".join(lines[1:]))
        now = len(lines)
    one_line_error(resume(stopped), "DataError", "the data changed", f"train: {len(lines)} examples", f"-> {now}, ")


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_a_flipped_bit_in_a_checkpoint_is_found_on_resume(stopped):
    flip_a_byte(stopped / "checkpoints" / "last" / "model.safetensors")
    one_line_error(resume(stopped), "CheckpointError", "model.safetensors: its content differs from what was written")


@pytest.mark.slow  # (its fixture runs run.py)
def test_a_flipped_bit_in_the_best_checkpoint_is_found_on_reload(interrupted, tmp_path):
    best = shutil.copytree(interrupted[0] / "checkpoints" / "last", tmp_path / "best")
    checkpoint.load_model(best)
    flip_a_byte(best / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.safetensors: its content differs from what was written"):
        checkpoint.load_model(best)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def pickle_of_an_object(path: Path) -> None:
    torch.save({"epoch": 1, "evil": Path("/")}, path)  # a class instance: weights_only refuses it


CORRUPTIONS = {
    "truncated state": ("state.pt", truncate),
    "empty state": ("state.pt", lambda p: p.write_bytes(b"")),
    "garbled state": ("state.pt", flip_a_byte),
    "object pickle": ("state.pt", pickle_of_an_object),
    "truncated weights": ("model.safetensors", truncate),
    "garbled weights header": ("model.safetensors", lambda p: p.write_bytes(b"\xff" * 64 + p.read_bytes()[64:])),
    "missing weights": ("model.safetensors", lambda p: p.unlink()),
}


# a flipped bit inside a tensor leaves a valid file: only its checksum shows it
@pytest.mark.parametrize(
    "corruption,checksums",
    [(c, k) for c in CORRUPTIONS for k in ("kept", "rewritten") if (c, k) != ("garbled state", "rewritten")],
)
@pytest.mark.slow  # (its fixture runs run.py)
def test_a_corrupt_checkpoint_is_one_checkpoint_error_naming_the_file(interrupted, tmp_path, corruption, checksums):
    """Found by its checksum, or, where checkpoint.json was rewritten to match, by the loaders themselves."""
    last = shutil.copytree(interrupted[0] / "checkpoints" / "last", tmp_path / "last")
    name, corrupt = CORRUPTIONS[corruption]
    corrupt(last / name)
    if checksums == "rewritten":
        manifest = json.loads((last / "checkpoint.json").read_text())
        manifest["files"] = {f: sha256(last / f) for f in manifest["files"] if (last / f).exists()}
        (last / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as e:
        checkpoint.load_model(last)
        TrainState.load(last / "state.pt")
    message = str(e.value)
    named = str(last / name) if checksums == "kept" else str(last)  # (the loaders may name the directory alone)
    assert named in message and name in message and "trainer.overwrite=true" in message, message
    assert "\n" not in message
    assert "weights_only=False" not in message


@pytest.mark.slow
def test_checkpoints_last_as_a_file_and_a_bad_summary_are_one_line(stopped, tmp_path):
    shutil.rmtree(stopped / "checkpoints" / "last")
    (stopped / "checkpoints" / "last").write_text("not a checkpoint")
    one_line_error(resume(stopped), "CheckpointError", "checkpoints/last: not a directory")
    assert summary(stopped)["status"] == "interrupted"  # a resume that fails before training leaves it

    (stopped / "summary.json").write_text('{"status": "completed"}')
    one_line_error(resume(stopped), "CheckpointError", "summary.json: summary.json says completed but has no best")
    assert (stopped / "summary.json").read_text() == '{"status": "completed"}'


# ---------------------------------------------------------------- 12, 13: bad paths and YAML
@pytest.mark.parametrize("run_dir,needle", [("/proc/afqmc-run", "/proc/afqmc-run"), ("FILE", "FILE")])
def test_a_run_directory_that_cannot_be_made_is_one_line(tmp_path, run_dir, needle):
    if run_dir == "FILE":
        run_dir = needle = str(tmp_path / "a-file")
        Path(run_dir).write_text("")
    one_line_error(run_py(*TINY, f"hydra.run.dir={run_dir}"), "RunDirError", needle)


def test_an_interpolation_of_a_missing_key_is_one_line(tmp_path):
    one_line_error(
        run_py(*TINY, "dataset.name=${nonexistent}", f"hydra.run.dir={tmp_path / 'r'}"),
        "ConfigError",
        "dataset.name",
        "nonexistent",
    )


@pytest.mark.parametrize(
    "value,needle",
    [
        ("!!python/object/apply:os.system ['touch RAN']", "python/object/apply:os.system"),
        ("!custom 3", "!custom"),
        ("!!set {a, b}", "trainer.epochs: Value 'set' is not a supported primitive type"),
    ],
)
def test_yaml_tags_are_one_line_and_never_constructed(tmp_path, value, needle):
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "tagged.yaml").write_text(f"# @package _global_\ntrainer:\n  epochs: {value}\n")
    proc = run_py(
        "experiment=tagged",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
    )
    line = one_line_error(proc, "ConfigError", needle)
    assert not (tmp_path / "RAN").exists() and line.strip() != "ConfigError:"


@pytest.mark.slow  # (its fixture runs run.py)
def test_the_report_lists_an_unreadable_run_and_goes_on(completed, tmp_path):
    from afqmc.report import write_report

    shutil.copytree(completed, tmp_path / "good")
    bad_metrics = shutil.copytree(completed, tmp_path / "bad-metrics")
    (bad_metrics / "metrics.jsonl").write_bytes(b'{"type": "eval", "x": "\xff\xfe"}\n')
    bad_overrides = shutil.copytree(completed, tmp_path / "bad-overrides")
    (bad_overrides / ".hydra" / "overrides.yaml").write_text("- [unclosed\n")
    write_report(tmp_path)
    rows = {r.split(",")[0]: r for r in (tmp_path / "report.csv").read_text().splitlines()[1:]}
    assert ",completed," in rows["good"]
    assert ",unreadable," in rows["bad-metrics"] and "UnicodeDecodeError" in rows["bad-metrics"]
    assert ",unreadable," in rows["bad-overrides"] and "overrides.yaml: unreadable" in rows["bad-overrides"]
    assert "3 runs, 1 completed, 0 failed, 2 unreadable." in (tmp_path / "report.md").read_text()


# ---------------------------------------------------------------- 18, 19: torchrun and sweeps
def test_the_resume_hint_names_the_command_of_each_case(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    assert runs.resume_command(tmp_path) == f"python run.py hydra.run.dir={tmp_path} trainer.resume=true"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert runs.resume_command(tmp_path) == (
        f"torchrun --standalone --nproc_per_node=4 run.py hydra.run.dir={tmp_path} trainer.resume=true"
    )
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert runs.resume_command(tmp_path).startswith("the same torchrun command on each node, with run.py")
    cfg = compose_cfg([f"hydra.sweep.dir={tmp_path}"], hydra=True)
    cfg.hydra.mode = RunMode.MULTIRUN
    monkeypatch.setattr(HydraConfig.instance(), "cfg", cfg)
    assert runs.resume_command(tmp_path / "3").startswith(
        f"python run.py -m hydra.sweep.dir={tmp_path} trainer.resume=true"
    )


@pytest.mark.slow
def test_torchrun_resumes_each_ranks_own_loss(tmp_path):
    args = [
        "experiment=smoke",
        "dataset.max_train_samples=256",
        "trainer.predict=false",
        "trainer.log_every=1",
        "trainer.save_every_steps=null",
    ]  # 8 batches a rank: 8 steps
    straight = torchrun_py(*args, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_dir = tmp_path / "stopped"
    # Ctrl-C reaches the workers (each rank's in its second step); the ranks agree to stop at the next log step
    proc = signal_at(2, signal.SIGINT, *args, f"hydra.run.dir={run_dir}", cwd=tmp_path, torchrun=True)
    out = proc.stdout
    hint = next(line for line in out.splitlines() if "go on with: " in line).split("go on with: ")[1]
    assert hint == f"torchrun --standalone --nproc_per_node=2 run.py hydra.run.dir={run_dir} trainer.resume=true"
    stopped = read_jsonl(run_dir / "metrics.jsonl")
    assert 2 <= stopped[-1]["step"] < 8
    resumed = torchrun_py(f"hydra.run.dir={run_dir}", "trainer.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert records(run_dir) == records(tmp_path / "straight")  # every rank's loss as if never stopped

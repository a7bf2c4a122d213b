"""Run directories: claimed by one run at a time, matched to their sweep jobs, resumed with their own
config, and read back (how each ended, its dev curve).

A run directory is one holding `.hydra/overrides.yaml`, its record: the run writes it as soon as it
holds the directory's lock and its config is checked (write_record), so a run that crashed before writing
anything else is still found, and reported as failed. Nothing else writes it: a refused process leaves
the record as it was, a resumed run keeps it, and must have the config it records (check_record).
Light on purpose (no torch, no matplotlib): run.py imports it before anything heavy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from afqmc.config.identity import FREE_KEYS, config_changes, config_snapshot, is_free
from afqmc.errors import CheckpointError, ConfigError, RunDirError, error_line
from afqmc.files import write_json, write_text

SUMMARY = "summary.json"
RECORD = Path(".hydra")
OVERRIDES = RECORD / "overrides.yaml"
CONFIG = RECORD / "config.yaml"
LOCK = ".lock"
NO_DEV = "no dev split (dataset.splits.dev=null): the best checkpoint is the last"  # summary.json's best.note
RUN_FILES = (SUMMARY, "metrics.jsonl", "checkpoints", "predictions")  # what a run leaves besides its record and log
KEEP_ON_OVERWRITE = {LOCK, "run.log"}


def write_failed_summary(run_dir, exc: BaseException, status: str = "failed") -> None:
    """summary.json for a run that raised (or was interrupted), so that a report lists it and says why."""
    write_json(Path(run_dir) / SUMMARY, {"status": status, "error": error_line(exc)})


def outcome(run_dir: Path) -> str:
    """'best f1_macro 0.7312 (epoch 3), predictions: PATH' from a completed run's summary.json."""
    summary, _ = read_summary(run_dir)
    best = summary.get("best") or {}
    where = f"epoch {best.get('epoch')}" + (f", step {best['step']}" if best.get("step") is not None else "")
    value = best.get("value")
    said = f"{NO_DEV} ({where})" if value is None else f"best {best.get('metric')} {value:.4f} ({where})"
    return f"{said}, predictions: {summary.get('predictions') or 'none'}"


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RUN_FILES)


# ---------------------------------------------------------------- overrides
def read_overrides(path: Path) -> list[str]:
    """A record's overrides.yaml: a list of strings, or a CheckpointError naming the file."""
    try:
        overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path}: unreadable ({error_line(e)})") from None
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise CheckpointError(f"{path}: expected a list of overrides, got {type(overrides).__name__}")
    return overrides


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def override_key(override) -> str:
    return override.key_or_group if override.package is None else f"{override.key_or_group}@{override.package}"


def job_identity(overrides: list[str]) -> dict:
    """What tells a job from another: its overrides as {key: (kind, value)}, values parsed (1e-3 is 0.001),
    without the keys a resume may change."""
    return {
        override_key(o): (o.type.name, str(o.value()))
        for o in _parse(overrides)
        if not is_free(override_key(o)) and not o.key_or_group.startswith("hydra")
    }


def merge_overrides(recorded: list[str], given: list[str]) -> list[str]:
    """The recorded overrides, each replaced by a given one of the same key, then the other given ones. A
    given free group (`logger=[]`, `~logger`, `logger=tensorboard`) drops the recorded keys inside it
    (`logger.mlflow.tracking_uri=...`), which would name a tracker no longer chosen."""
    given_keys = {override_key(o) for o in _parse(given)}

    def replaced(key: str) -> bool:
        return key in given_keys or (is_free(key) and key.lstrip("~+").split(".")[0] in given_keys)

    return [text for text, o in zip(recorded, _parse(recorded)) if not replaced(override_key(o))] + given


# ---------------------------------------------------------------- Hydra resolvers (afqmc/__init__.py)
_JOB_DIRS: dict[tuple, str] = {}


def job_subdir(root) -> str:
    """hydra.sweep.subdir: the directory of the sweep whose record has this job's overrides, so that a
    re-run sweep finds each job's run whatever its number; else a new one, named by the job's number or,
    when that is taken, the next free number (mkdir is atomic: jobs run in parallel never share one)."""
    hydra = root.hydra
    sweep_dir, overrides = Path(str(hydra.sweep.dir)), list(hydra.overrides.task)
    key = (str(sweep_dir.resolve()), tuple(overrides))
    if key not in _JOB_DIRS:
        _JOB_DIRS[key] = _matching_job(sweep_dir, overrides) or _new_job_dir(sweep_dir, int(hydra.job.num))
    return _JOB_DIRS[key]


def _matching_job(sweep_dir: Path, overrides: list[str]) -> str | None:
    identity = job_identity(overrides)
    for record in sorted(sweep_dir.glob(f"*/{OVERRIDES.as_posix()}")):
        try:
            if job_identity(read_overrides(record)) == identity:
                return record.parent.parent.name
        except CheckpointError:
            continue  # an unreadable record is no job's
    return None


def _new_job_dir(sweep_dir: Path, num: int) -> str:
    while True:
        try:
            (sweep_dir / str(num)).mkdir(parents=True)
            return str(num)
        except FileExistsError:
            num += 1


def write_record(run_dir: Path, cfg) -> None:
    """The run's record, .hydra/ as Hydra would write it (config.yaml, hydra.yaml, overrides.yaml), written
    here and not by Hydra (conf/config.yaml sets hydra.output_subdir to null): only by the process that holds
    the directory's lock, after the config check, with the config this run trains. overrides.yaml goes last:
    it is what makes a directory a run's (find_runs). Without Hydra (afqmc.train in Python) the overrides
    are none."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.instance().cfg if HydraConfig.initialized() else None
    output_dir = OmegaConf.select(hydra, "hydra.runtime.output_dir") if hydra is not None else None
    if output_dir is None or Path(output_dir).resolve() != run_dir.resolve():
        hydra = None  # (another run's, left in this process: not this one's record)
    overrides = list(hydra.hydra.overrides.task) if hydra is not None else []
    write_text(run_dir / CONFIG, OmegaConf.to_yaml(cfg))
    if hydra is not None:
        write_text(run_dir / RECORD / "hydra.yaml", OmegaConf.to_yaml(hydra))
    write_text(run_dir / OVERRIDES, yaml.safe_dump(overrides, allow_unicode=True, sort_keys=False))


# ---------------------------------------------------------------- resume by directory (run.py)
def _given(argv: list[str]) -> dict:
    overrides = [a for a in argv if _is_override(a)]
    return {override_key(o): o for o in _parse(overrides)}


def _is_override(arg: str) -> bool:
    """key=value, +key=value, group=option, or a deletion (~key, ~group), as Hydra reads the command line."""
    return ("=" in arg and not arg.startswith("-")) or arg.startswith("~")


def hydra_quoted(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv, the overrides quoted): an override whose value has characters beyond ASCII (a Chinese path, the
    first command many users type) unquoted, which Hydra's grammar refuses, quoted as Hydra needs, each value
    of a sweep list apart (`dataset.root=/data/中文,/b/语料` -> `dataset.root='/data/中文','/b/语料'`). A value
    with quotes, brackets, braces, parentheses, `$` or a backslash is Hydra's own syntax: left to Hydra."""
    from hydra.errors import OverrideParseException

    out, quoted = [], []
    for arg in argv:
        key, _, value = arg.partition("=")
        if _is_override(arg) and not value.isascii() and not set(value) & set("'\"[]{}()$\\"):
            try:
                _parse([arg])
            except OverrideParseException:
                arg = f"{key}=" + ",".join(f"'{v}'" for v in value.split(","))
                quoted.append(arg)
        out.append(arg)
    return out, quoted


def unparsable(argv: list[str]) -> str | None:
    """'OVERRIDE: why' for the first override that Hydra's grammar refuses, None when it takes them all."""
    from hydra.errors import OverrideParseException

    for arg in argv[1:]:
        if _is_override(arg):
            try:
                _parse([arg])
            except OverrideParseException as e:
                why = str(e).splitlines()[0]
                return (
                    f"{arg}: Hydra's override grammar refuses it ({why}); quote a value that holds special "
                    "characters (key='a,b'), or see https://hydra.cc/docs/advanced/override_grammar/basic/"
                )
    return None


def resume_argv(argv: list[str]) -> list[str]:
    """`python run.py hydra.run.dir=RUN trainer.resume=true`: the run's recorded overrides, then the given
    ones (a given key replaces a recorded one; check_record then refuses any change resume does not allow).
    A sweep re-run with no sweep of its own (`-m hydra.sweep.dir=SWEEP trainer.resume=true`) gets the
    sweeper that launches the sweep's recorded jobs again (hydra_plugins/afqmc_resume_sweeper)."""
    from hydra.errors import OverrideParseException

    try:
        given = _given(argv)
    except OverrideParseException:
        return argv  # Hydra refuses it in one line (run.py's cli)
    if not (given.get("trainer.resume") and given["trainer.resume"].value() is True):
        return argv
    if "-m" in argv or "--multirun" in argv:
        if "hydra.sweep.dir" not in given or any(not is_free(k) and not k.startswith("hydra") for k in given):
            return argv  # the sweep's own command again: each job finds its directory (job_subdir)
        sweep_dir = Path(str(given["hydra.sweep.dir"].value()))
        if not recorded_jobs(sweep_dir):
            raise ConfigError(
                f"hydra.sweep.dir={sweep_dir}: no sweep jobs to resume there (job directories hold "
                f"{OVERRIDES}); give the sweep's arguments to start it"
            )
        jobs = recorded_jobs(sweep_dir)
        searchpath = [] if "hydra.searchpath" in given else recorded_searchpath(jobs[0][0])  # the sweep's
        return [*argv, *searchpath, "hydra/sweeper=afqmc_resume"]
    if "hydra.run.dir" not in given:
        return argv
    run_dir = Path(str(given["hydra.run.dir"].value()))
    record = run_dir / OVERRIDES
    if not record.is_file():
        _refuse_unrecorded(run_dir)
        return argv  # nothing recorded, nothing run: a fresh start (trainer.resume=true starts from scratch)
    run_py, *args = argv
    recorded = read_overrides(record) + ([] if "hydra.searchpath" in given else recorded_searchpath(run_dir))
    return [
        run_py,
        *merge_overrides(recorded, [a for a in args if _is_override(a)]),
        *[a for a in args if not _is_override(a)],
    ]


def recorded_searchpath(run_dir: Path) -> list[str]:
    """The run's hydra.searchpath as an override (`hydra.searchpath=['file:///home/me/conf']`), or none: Hydra
    records it in .hydra/hydra.yaml, not among the overrides, and without it a resume cannot find a config
    group option of the user's own (dataset=mine). A relative `file://` path is made absolute from the
    directory the run was started in."""
    try:
        hydra = OmegaConf.load(run_dir / RECORD / "hydra.yaml").hydra
        entries = OmegaConf.to_container(hydra.searchpath) or []
        cwd = Path(str(hydra.runtime.cwd))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException):
        return []  # no record of it (a run from afqmc.train in Python): none to give
    if not entries:
        return []
    relative = [e.startswith("file://") and not e[len("file://") :].startswith("/") for e in entries]
    absolute = [f"file://{cwd / e[len('file://') :]}" if rel else e for e, rel in zip(entries, relative)]
    quoted = ",".join("'" + e.replace("\\", "\\\\").replace("'", "\\'") + "'" for e in absolute)
    return [f"hydra.searchpath=[{quoted}]"]


def recorded_jobs(sweep_dir: Path) -> list[tuple[Path, list[str]]]:
    """(job directory, its recorded overrides) for each job of a sweep directory, in find_runs' order."""
    return [(run_dir, read_overrides(run_dir / OVERRIDES)) for run_dir in find_runs(sweep_dir) if run_dir != sweep_dir]


def resume_command(run_dir: Path) -> str:
    """The command that goes on with this run: the sweep's under a multirun, torchrun's under torchrun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep_dir = HydraConfig.get().sweep.dir
        return (
            f"python run.py -m hydra.sweep.dir={shlex.quote(str(sweep_dir))} trainer.resume=true (with the "
            "sweep's hydra/launcher options)"
        )
    args = f"run.py hydra.run.dir={shlex.quote(str(run_dir))} trainer.resume=true"
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world == 1:
        return f"python {args}"
    if world == local:
        return f"torchrun --standalone --nproc_per_node={local} {args}"
    return f"the same torchrun command on each node, with {args}"


# ---------------------------------------------------------------- one run per directory
@contextmanager
def claimed(run_dir: Path, cfg):
    """Holds the run directory for this process (an flock on RUN/.lock, which the kernel releases when
    the process ends, however it ends), after checking that the run may use it: a resume must have the
    config the run recorded; a fresh run takes a directory that holds no run, or replaces it with
    trainer.overwrite=true."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process"
            raise RunDirError(
                f"{run_dir} is in use by {holder} ({lock}): one run at a time in a directory; "
                "wait for it to end, or give another hydra.run.dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        resume = OmegaConf.select(cfg, "trainer.resume", default=False)
        if resume:
            check_record(run_dir, cfg)
        elif holds_run(run_dir):
            if not OmegaConf.select(cfg, "trainer.overwrite", default=False):
                raise RunDirError(
                    f"{run_dir} holds a run already ({_status(run_dir)}): trainer.resume=true goes on "
                    "with it, trainer.overwrite=true replaces it, or give another hydra.run.dir"
                )
            _clear(run_dir)
        if not (resume and (run_dir / OVERRIDES).is_file()):  # a resumed run's record stays as it was
            write_record(run_dir, cfg)
        yield
    finally:
        os.close(fd)


def discard(run_dir: Path) -> None:
    """A run directory that no run claimed (its config was refused): Hydra's log goes, and the directory
    too when nothing else is in it. One that holds a run or a record is left as it is."""
    if holds_run(run_dir) or (run_dir / LOCK).exists() or (run_dir / RECORD).exists():
        return
    (run_dir / "run.log").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()


def _status(run_dir: Path) -> str:
    summary, error = read_summary(run_dir)
    return summary.get("status", "") if isinstance(summary.get("status"), str) and not error else error


def _clear(run_dir: Path) -> None:
    """trainer.overwrite=true: the old run's files go (its record is written anew after this)."""
    for path in run_dir.iterdir():
        if path.name not in KEEP_ON_OVERWRITE:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (run_dir / "run.log").write_text("", encoding="utf-8")


def check_record(run_dir: Path, cfg) -> None:
    """A resumed run's config must be the one its directory records, but for the keys resume may change."""
    path = run_dir / CONFIG
    if not path.is_file():
        _refuse_unrecorded(run_dir)
        return  # nothing here: the run starts from scratch
    try:
        recorded = config_snapshot(OmegaConf.load(path))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as e:
        raise CheckpointError(f"{path}: unreadable ({error_line(e)})") from None
    changes = config_changes(recorded, config_snapshot(cfg))
    if changes:
        raise ConfigError(
            f"trainer.resume=true, but {run_dir} was started with another config: {'; '.join(changes)}. Resume it "
            f"with its own: python run.py hydra.run.dir={shlex.quote(str(run_dir))} trainer.resume=true (only "
            f"{', '.join(sorted(FREE_KEYS))} may be given besides)"
        )


def _refuse_unrecorded(run_dir: Path) -> None:
    """A resume of a run whose record is gone: its config is unknown, and the defaults would be a wrong guess."""
    if holds_run(run_dir):
        raise CheckpointError(
            f"trainer.resume=true, but {run_dir} holds a run without its record ({run_dir / CONFIG} is missing), "
            "so its config is unknown: start it afresh with trainer.overwrite=true, or give another hydra.run.dir"
        )


# ---------------------------------------------------------------- read back
@dataclass
class Run:
    path: Path
    overrides: list[str]  # the command-line overrides of this run, as Hydra recorded them
    status: str  # completed | failed | interrupted | unreadable
    error: str = ""  # first line of what went wrong (failed runs)
    summary: dict = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)  # metrics.jsonl's dev records: one per epoch, or per N steps

    def get(self, *keys):
        """A nested summary value (e.g. get("dev", "f1_macro")), None when absent."""
        value = self.summary
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value


def find_runs(root) -> list[Path]:
    """Every run directory at or below root, in a stable order (job 2 before job 10)."""
    dirs = {p.parent.parent for p in Path(root).glob(f"**/{OVERRIDES.as_posix()}")}
    return sorted(dirs, key=lambda p: [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.parts])


def load_run(path: Path) -> Run:
    """A run as its directory says; one whose files cannot be read is `unreadable`, with why."""
    try:
        overrides = read_overrides(path / OVERRIDES)
        curve, left_out = _dev_curve(path)
    except (CheckpointError, OSError, UnicodeDecodeError) as e:
        return Run(path, [], "unreadable", error_line(e))
    summary, error = read_summary(path)
    status = "completed" if not error else "interrupted" if summary.get("status") == "interrupted" else "failed"
    problems = _not_numbers(summary)
    if left_out:
        problems.append(f"metrics.jsonl: {left_out} dev records without an epoch left out")
    return Run(path, overrides, status, "; ".join(filter(None, [error, *problems])), summary, curve)


# what the report reads as numbers: a value of another type there is listed and left out, never a traceback
NUMBERS = {
    "best": ("epoch", "step", "value"),
    "dev": None,
    "train": ("seconds", "samples_per_second"),
    "stopped_early": ("step",),
}


def _not_numbers(summary: dict) -> list[str]:
    """'summary.json: dev.f1_macro is 'abc', not a number' for each such value, which becomes None."""
    problems = []
    for part, keys in NUMBERS.items():
        values = summary.get(part)
        if not isinstance(values, dict):
            continue
        for key in keys or list(values):
            value = values.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                problems.append(f"{SUMMARY}: {part}.{key} is {value!r}, not a number")
                values[key] = None
    return problems


def completed_summary(run_dir) -> dict | None:
    """The summary of a run that completed; None for one that failed, was killed or never ran. A summary
    that says completed but lacks what a completed run records is an error, not a completed run."""
    summary, error = read_summary(Path(run_dir))
    if error and summary.get("status") == "completed":
        raise CheckpointError(f"{Path(run_dir) / SUMMARY}: {error}; start the run afresh with trainer.overwrite=true")
    return None if error else summary


def read_summary(path: Path) -> tuple[dict, str]:
    """(summary, error); the error is empty for a completed run."""
    file = path / SUMMARY
    if not file.is_file():
        return {}, f"no {SUMMARY}: the run was killed, or is still running"
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # (a UnicodeDecodeError is a ValueError)
        return {}, f"unreadable {SUMMARY}: {e}"
    if not isinstance(summary, dict):
        return {}, f"unreadable {SUMMARY}: expected a JSON object, got {type(summary).__name__}"
    if summary.get("status") == "completed":
        best = summary.get("best")
        if not (isinstance(best, dict) and (isinstance(best.get("value"), (int, float)) or best.get("note") == NO_DEV)):
            return summary, f"{SUMMARY} says completed but has no best value"
        return summary, ""
    error = summary.get("error")
    return summary, error if isinstance(error, str) and error else f"{SUMMARY} has status {summary.get('status')!r}"


def _dev_curve(path: Path) -> tuple[list[dict], int]:
    """(metrics.jsonl's dev records, how many were left out for lacking an integer epoch)."""
    records, left_out = [], 0
    if (path / "metrics.jsonl").is_file():
        for line in (path / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if isinstance(record, dict) and record.get("type") == "eval" and record.get("split", "dev") == "dev":
                if not isinstance(record.get("epoch"), int) or not isinstance(record.get("step", 0), int):
                    left_out += 1
                    continue
                records.append({k: v for k, v in record.items() if not isinstance(v, str) or k in ("type", "split")})
    return records, left_out

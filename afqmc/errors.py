"""The framework's own errors: each message says what was wrong, where, and what is expected."""

import signal


def first_line(e: BaseException) -> str:
    """The first line of an exception's message ('' for none)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def error_line(e: BaseException) -> str:
    """'<ExceptionType>: <first line of the message>': one line fits a log line or a report's table cell."""
    line = first_line(e)
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


class AfqmcError(Exception):
    """Base class: run.py prints these without a traceback."""


class ConfigError(AfqmcError):
    """A config key has a value the framework cannot use."""


class DataError(AfqmcError):
    """A data file is missing or has a bad line."""


class SubmissionError(AfqmcError):
    """Runs that cannot make a CLUE submission (python -m afqmc.clue_submission)."""


class ModelLoadError(AfqmcError):
    """model.checkpoint cannot be loaded."""


class TrainingError(AfqmcError):
    """Training cannot go on: the loss is no longer a finite number."""


class Interrupted(AfqmcError):
    """A stop signal (afqmc/training/signals.py): checkpoints/last is saved; run.py marks the summary
    interrupted and exits with 128 + the signal's number, as a shell reports a process that a signal ended
    (130: Ctrl-C)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)


class CheckpointError(AfqmcError):
    """A checkpoint or a run's record on disk is missing, corrupt or does not match: the message names the file."""


class RunDirError(AfqmcError):
    """The run directory cannot be used: another process holds it, or it holds another run."""


class SweepError(AfqmcError):
    """Jobs of a sweep failed, or were stopped and not run again: each is named with its directory and error."""

"""Stop signals: a run stops at the next step boundary, with checkpoints/last saved."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Ctrl-C; SIGTERM, how Slurm (and most process managers) end a job: preemption, scancel, scontrol requeue,
# the time limit; SIGUSR2, the warning that the Slurm launcher has sbatch send before the time limit
# (conf/hydra/launcher/slurm.yaml, afqmc/runs/launcher.py).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


def signal_name(signum: int) -> str:
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


@dataclass
class StopFlag:
    signum: int | None = None  # the first stop signal received


@contextlib.contextmanager
def stop_signals():
    """A stop signal sets a flag instead of ending the process wherever Python happens to be, perhaps halfway
    through an optimizer step: the loop stops at the next step boundary, with a state worth saving.

    A second Ctrl-C stops at once, with a KeyboardInterrupt that run.py records as interrupted. A repeated SIGTERM or
    SIGUSR2 changes nothing: Slurm sends SIGTERM twice (srun forwards its own), and its grace period ends in
    a SIGKILL anyway."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():  # e.g. a joblib worker: no signals there
        yield flag
        return

    def handler(signum, frame):
        if flag.signum is None:
            flag.signum = signum
            log.warning(
                "%s: saving checkpoints/last after this step, then stopping (Ctrl-C again: stop now)",
                signal_name(signum),
            )
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt(f"{signal_name(signum)} again: stopped at once, checkpoints/last not saved")
        else:
            log.warning("%s again: already stopping after this step", signal_name(signum))

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for signum, handler in previous.items():  # None: set outside Python, which Python cannot put back
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

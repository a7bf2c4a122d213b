"""Hydra callbacks, registered under hydra.callbacks in conf/config.yaml.

Imported by every run, single or multirun: keep it light (the report's imports wait until it is written).
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """Writes report.md, report.csv and curves.png (afqmc/report.py) into the sweep directory.

    Hydra calls on_multirun_end only when every job succeeded: a job that raises stops the sweep
    first. So the report is also written at exit when the sweep did not get that far, and the
    failed run shows in it. A failing report only logs a warning: the runs' own files are the results.
    """

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config, **kwargs) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        atexit.register(self._write)

    def on_multirun_end(self, config, **kwargs) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self._write()

    def _write(self) -> None:
        if self.sweep_dir is None:
            return  # already written (or no multirun started in this process)
        sweep_dir, self.sweep_dir = self.sweep_dir, None
        from afqmc.runs.records import find_runs

        if sweep_dir.is_dir() and not find_runs(sweep_dir):
            return  # no job ran (e.g. the launcher refused the sweep before submitting): nothing to report
        try:
            from afqmc.report import write_report

            log.info("sweep report: %s", write_report(sweep_dir))
        except Exception as e:  # noqa: BLE001  (any failure here must leave the sweep's results alone)
            log.warning(
                "could not write the sweep report in %s (%s: %s); run: python -m afqmc.report %s",
                sweep_dir,
                type(e).__name__,
                e,
                sweep_dir,
            )

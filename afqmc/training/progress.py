"""Progress of a long pass (scoring a split, predicting a file): a tqdm bar on a terminal, else a log
line every tenth of the way, so that a log file shows it too without a line per batch."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator

log = logging.getLogger(__name__)
QUIET_BELOW = 10  # passes shorter than this many batches log no progress lines


def progress(items: Iterable, total: int, desc: str, unit: str = "batches") -> Iterator:
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
        return
    if total < QUIET_BELOW:  # a short pass logs nothing (a bar still shows it)
        yield from items
        return
    every = -(-total // 10)  # at most ten lines a pass
    for done, item in enumerate(items, start=1):
        yield item
        if done % every == 0 or done == total:
            log.info("%s: %d/%d %s", desc, done, total, unit)


class OffTheBar(logging.Filter):
    """The console handler's filter (conf/hydra/job_logging/afqmc.yaml): a line a progress bar already
    shows (logged with extra={"bar": True}) stays off the console, and still goes to run.log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "bar", False)

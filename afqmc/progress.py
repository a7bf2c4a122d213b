"""Progress of a long pass (scoring a split, predicting a file): a tqdm bar on a terminal, else a log
line every tenth of the way, so that a log file shows it too without a line per batch."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator

log = logging.getLogger(__name__)


def progress(items: Iterable, total: int, desc: str, unit: str = "batches") -> Iterator:
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
        return
    every = max(1, total // 10)
    for done, item in enumerate(items, start=1):
        yield item
        if done % every == 0 or done == total:
            log.info("%s: %d/%d %s", desc, done, total, unit)

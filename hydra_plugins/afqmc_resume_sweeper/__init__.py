"""ResumeSweeper (hydra/sweeper=afqmc_resume): a sweep's recorded jobs again, each with its own overrides.

run.py picks it for `python run.py -m hydra.sweep.dir=SWEEP trainer.resume=true` given no sweep of its
own: the jobs are those the sweep directory records, whatever sweeper (grid, Optuna) first made them,
and each lands in its own directory again (afqmc.runs.records.job_subdir matches the overrides). It lives here
because Hydra instantiates sweepers from the hydra_plugins namespace package only.
"""

from __future__ import annotations

from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from afqmc.runs.records import merge_overrides, recorded_jobs


class ResumeSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None):
        super().__init__(max_batch_size=max_batch_size, params=None)

    def sweep(self, arguments: list[str]):
        """arguments: the command line's overrides (trainer.resume=true and what resume lets change)."""
        jobs = [
            merge_overrides(recorded, arguments) for _, recorded in recorded_jobs(Path(self.config.hydra.sweep.dir))
        ]
        self.overrides = list(self.split_overrides_to_chunks(jobs, self.max_batch_size))
        returns, first = [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            results = self.launcher.launch(batch, initial_job_idx=first)
            for r in results:
                _ = r.return_value  # a failed job raises here, as with Hydra's own sweeper
            first += len(batch)
            returns.append(results)
        return returns

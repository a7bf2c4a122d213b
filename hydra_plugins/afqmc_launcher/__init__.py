"""Hydra takes launchers only from the hydra_plugins namespace package: this one is
afqmc/runs/launcher.py's Slurm launcher, which conf/hydra/launcher/slurm.yaml names."""

from afqmc.runs import launcher


class SlurmLauncher(launcher.SlurmLauncher):
    pass

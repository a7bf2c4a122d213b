"""What a run leaves and who reads it: run directories, model cards, trackers, the Slurm launcher, sweep reports."""

#!/usr/bin/env bash
# Gather here, where PyPI answers, what benchmarks/gpu_check.sh needs on a lent GPU machine that reaches no
# registry: the wheels its image lacks (hydra-core, omegaconf, antlr4; it has torch, transformers, accelerate,
# tqdm, pyyaml) and copies of the bert-base-chinese config + tokenizer and the AFQMC data from ../shared (which
# does not travel). All of it goes to .gpu/ (git-ignored), the one path to carry: benchmarks/README.md.
#   bash benchmarks/gpu_wheels.sh        # in the repository, with the project's venv active
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEST=.gpu
rm -rf "$DEST/wheels" "$DEST/shared"
mkdir -p "$DEST/wheels" "$DEST/shared/models" "$DEST/shared/data"

# The versions this environment runs (and the tests passed with), not whatever is newest.
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
# Pure-Python wheels; --python-version: the device's python is 3.12 (a py3-none-any wheel fits any).
# hydra-submitit-launcher: hydra_plugins/afqmc_launcher imports it, and Hydra imports every plugin on each run
# (without it, each run warns); submitit (and its cloudpickle): the ddp step maps a Slurm task's variables to ranks.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$DEST/wheels" \
    "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)" \
    "hydra-submitit-launcher==$(version hydra-submitit-launcher)" \
    "submitit==$(version submitit)" "cloudpickle==$(version cloudpickle)"
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 pins) exists only as an sdist: build its py3-none-any wheel.
"$PY" -m pip wheel -q --no-deps -w "$DEST/wheels" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"

# ../shared's files are read-only: plain copies, so that a rerun can delete them.
cp -r --no-preserve=mode ../shared/models/bert-base-chinese-vocab "$DEST/shared/models/"
cp -r --no-preserve=mode ../shared/data/afqmc "$DEST/shared/data/"

ls -l "$DEST/wheels"
echo "carry: $DEST ($(du -sh --apparent-size "$DEST" | cut -f1)); the working tree that travels with it:" \
    "$(git ls-files -co --exclude-standard -z | du -ch --apparent-size --files0-from=- | tail -1 | cut -f1)"

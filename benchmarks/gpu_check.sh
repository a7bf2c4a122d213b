#!/usr/bin/env bash
# The GPU checks of the CUDA training loop, in one device call (benchmarks/README.md has the exact call):
#   0 setup: the carried wheels installed offline, versions, the GPU
#   1 cuda_tests: tests/test_cuda.py (each precision, compile, SIGKILL + resume, predictions, CPU reload, non-BERT)
#   2 throughput: this framework vs the HF Trainer (dynamic padding, group_by_length), bf16, eager then compiled
#   3 epoch: one full AFQMC train epoch of a random-init bert-base, wall time
#   4 ddp: two ranks with NCCL, if the machine has two GPUs (else skipped, saying so)
#   5 profile: torch.profiler over 20 training steps (dry run: 5), the top kernels in profile_kernels.txt
# Each step runs under its own time limit and the next one starts whatever happened; each writes $OUT/<n>_<step>.log
# ending in "RESULT <step> ok|skipped|failed|timeout rc=.. seconds=.. limit=..", and $OUT/summary.tsv gets one
# row per step. At most 8 files in $OUT: all that a device call brings back.
#
#   OUT=DIR bash benchmarks/gpu_check.sh     # on the GPU machine, with .gpu carried (bash benchmarks/gpu_wheels.sh)
#   bash benchmarks/gpu_check.sh --dry-run   # any CPU: every step in its CPU form, tiny sizes, $OUT a temp dir
#   OUT=DIR bash benchmarks/gpu_check.sh epoch profile   # setup and the steps named, alone
set -u
cd "$(dirname "$0")/.."

# Seconds per step: 530 in all, so that the whole script ends well inside a device call's 600 s.
LIMITS=(setup=30 cuda_tests=150 throughput=150 epoch=110 ddp=40 profile=50)
SKIP=99 # a step's exit status for "skipped" (with a line saying why)

DRY=0
ONLY=() # steps named on the command line: those alone (and setup), e.g. to rerun one in the time left
for arg in "$@"; do
    case $arg in
    --dry-run) DRY=1 ;;
    setup | cuda_tests | throughput | epoch | ddp | profile) ONLY+=("$arg") ;;
    *) echo "usage: [OUT=DIR] bash benchmarks/gpu_check.sh [--dry-run] [STEP...] (steps: ${LIMITS[*]%=*})" >&2 && exit 2 ;;
    esac
done
if [[ -z ${OUT:-} ]]; then
    ((DRY)) || { echo "OUT is not set: say where the results go (the device call sets it)" >&2 && exit 2; }
    OUT=$(mktemp -d -t gpu_check.XXXXXX)
fi
mkdir -p "$OUT"
WORK=$(mktemp -d -t gpu_check_work.XXXXXX) # run directories and checkpoints: too many and too big for $OUT
trap 'rm -rf "$WORK"' EXIT

PY=${PYTHON:-python3} # on the device image: the python that has torch
SITE=$WORK/site       # the carried wheels go here, not into the image's environment
export DRY OUT WORK PY SITE SKIP PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH} # the package from this checkout, no install needed

# What the steps run on. The real run: bert-base-chinese's architecture (config + tokenizer, random weights)
# and the AFQMC data, from .gpu/shared (carried) or ../shared (here). The dry run: the package's tiny BERT and
# smoke pairs, so that it needs nothing outside the repository and takes seconds; and no GPU, even where one is.
first() { for p in "$@"; do [[ -e $p ]] && echo "$p" && return; done; }
BERT_BASE=$(first .gpu/shared/models/bert-base-chinese-vocab ../shared/models/bert-base-chinese-vocab)
AFQMC=$(first .gpu/shared/data/afqmc ../shared/data/afqmc)
if ((DRY)); then
    export CUDA_VISIBLE_DEVICES=
    export MODEL=afqmc/assets/tiny-bert PAIRS=afqmc/assets/smoke MAXLEN=64 DEVICE=cpu SAMPLES=48 PROFILE_STEPS=5
    export EPOCH_SIZE="dataset.max_train_samples=64 dataset.max_eval_samples=32"
    export DDP_SIZE="dataset.max_train_samples=64 dataset.max_eval_samples=32"
else
    export MODEL=$BERT_BASE PAIRS=$AFQMC MAXLEN=128 DEVICE=cuda SAMPLES=${GPU_CHECK_SAMPLES:-4096} PROFILE_STEPS=20
    export EPOCH_SIZE="" DDP_SIZE="dataset.max_train_samples=2048"
fi

needs_assets() {
    [[ -n $MODEL && -n $PAIRS ]] && return 0
    echo "no bert-base-chinese-vocab or AFQMC data: run bash benchmarks/gpu_wheels.sh on the dev machine and carry .gpu"
    return 1
}

step_setup() {
    echo "$(uname -n): $(nproc) cores; dry run: $DRY; python: $(command -v "$PY")"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
    if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .gpu/wheels/*.whl || return 1
        echo "installed into $SITE: $(cd .gpu/wheels && echo *.whl)"
    elif ((DRY)); then
        echo "no .gpu/wheels (bash benchmarks/gpu_wheels.sh makes it): this environment's hydra-core and omegaconf"
    else
        echo "no .gpu/wheels: run bash benchmarks/gpu_wheels.sh on the dev machine and carry .gpu" && return 1
    fi
    echo "model: ${MODEL:-missing}; data: ${PAIRS:-missing} (real run: ${BERT_BASE:-missing}, ${AFQMC:-missing})"
    "$PY" - <<'EOF' || return 1
import hydra, omegaconf, torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, hydra {hydra.__version__}, "
      f"omegaconf {omegaconf.__version__}, hydra from {hydra.__file__}")
if torch.cuda.is_available():
    print(f"{torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
else:
    print("no GPU visible")
EOF
    "$PY" run.py experiment=smoke --cfg job >/dev/null && echo "run.py composes its config" # imports, configs
}

step_cuda_tests() {
    # on the GPU machine -n 4 --dist load: the tests' runs spread over four workers (a file's tests would all go
    # to one); in the dry run they are only collected and skipped, and workers would take longer to start
    local workers=(-n 4 --dist load)
    ((DRY)) && workers=(-n 0)
    "$PY" -m pytest -p no:cacheprovider -m cuda "${workers[@]}" -rs -v --durations=0 tests/test_cuda.py \
        | tee "$WORK/pytest.txt"
    local rc=${PIPESTATUS[0]}
    # all skipped (no GPU) exits 0 too: say skipped, not ok
    if ((rc == 0)) && ! tail -1 "$WORK/pytest.txt" | grep -q " passed"; then
        echo "skipped: no CUDA GPU visible" && return "$SKIP"
    fi
    return "$rc"
}

step_throughput() {
    needs_assets || return 1
    # the same first $SAMPLES train pairs, batch 32, each loop in a fresh process, one after the other: eager,
    # then with torch.compile (compile warm-up counted in); on the CPU (dry run) eager only: inductor's C++
    # build would take minutes there
    local compiled=--also-compiled
    ((DRY)) && compiled= && echo "dry run: the compiled round left out on the CPU"
    "$PY" benchmarks/throughput.py --model "$MODEL" --data "$PAIRS" --device "$DEVICE" --bf16 --random \
        --samples "$SAMPLES" --batch-size 32 --max-length "$MAXLEN" --loops afqmc,trainer_grouped $compiled
}

step_epoch() {
    needs_assets || return 1
    # one epoch as a user runs it (bf16 on the GPU: precision auto), with dev scoring, the best checkpoint and the
    # test predictions; checkpoints/last is not written (keep_last=never: six 1.2 GB saves would be timed too)
    local start=$SECONDS
    # shellcheck disable=SC2086
    "$PY" run.py dataset.root="$PAIRS" model.checkpoint="$MODEL" model.pretrained=false model.pooling=cls \
        dataset.max_length="$MAXLEN" trainer.epochs=1 trainer.batch_size=32 trainer.device="$DEVICE" \
        trainer.keep_last=never hydra.run.dir="$WORK/epoch" $EPOCH_SIZE || return 1
    echo "wall time of run.py: $((SECONDS - start)) s"
    cat "$WORK/epoch/summary.json"
}

step_ddp() {
    # the Slurm launcher's ranks from a task's Slurm variables, set by hand (task 1 of 2 on one node): RANK 1,
    # LOCAL_RANK 1, and its GPU, cuda_device (1 with two GPUs; 0 with one, as where Slurm binds a GPU to a task)
    SUBMITIT_EXECUTOR=slurm SLURM_JOB_ID=1 SLURM_NTASKS=2 SLURM_JOB_NUM_NODES=1 SLURM_JOB_NODELIST=localhost \
        SLURM_PROCID=1 SLURM_LOCALID=1 SLURM_NODEID=0 "$PY" -m afqmc.runs.launcher || return 1
    local gpus=0
    ((DRY)) || gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
    if ((!DRY && gpus < 2)); then
        echo "skipped: $gpus GPU(s) on this machine; two ranks with NCCL need two" && return "$SKIP"
    fi
    needs_assets || return 1
    ((DRY)) && echo "dry run: two CPU ranks with gloo"
    local start=$SECONDS
    # shellcheck disable=SC2086
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 run.py dataset.root="$PAIRS" \
        model.checkpoint="$MODEL" model.pretrained=false model.pooling=cls dataset.max_length="$MAXLEN" \
        trainer.epochs=1 trainer.device="$DEVICE" trainer.predict=false trainer.keep_last=never \
        hydra.run.dir="$WORK/ddp" $DDP_SIZE || return 1
    echo "wall time of torchrun: $((SECONDS - start)) s"
    cat "$WORK/ddp/summary.json"
    "$PY" -c "import json, sys; s = json.load(open(sys.argv[1])); sys.exit(s['world_size'] != 2)" "$WORK/ddp/summary.json"
}

step_profile() {
    needs_assets || return 1
    local bf16=--bf16
    ((DRY)) && bf16= # CPU bf16 is slow without AVX512-BF16; the dry run checks the script, not the numbers
    "$PY" benchmarks/profile_steps.py --model "$MODEL" --data "$PAIRS" --device "$DEVICE" $bf16 --random \
        --steps "$PROFILE_STEPS" --batch-size 32 --max-length "$MAXLEN" --out "$OUT/profile_kernels.txt"
}
export -f needs_assets step_setup step_cuda_tests step_throughput step_epoch step_ddp step_profile
export BERT_BASE AFQMC

printf 'step\tstatus\trc\tseconds\tlimit_s\n' >"$OUT/summary.tsv"
failed=0
n=0
for entry in "${LIMITS[@]}"; do
    name=${entry%=*} limit=${entry#*=}
    log=$OUT/${n}_$name.log
    n=$((n + 1))
    [[ ${#ONLY[@]} -gt 0 && $name != setup && " ${ONLY[*]} " != *" $name "* ]] && continue
    echo "== step $((n - 1)): $name (limit ${limit}s) $(date -Is)" | tee "$log"
    start=$(date +%s.%N)
    # its own process group, all of it killed at the limit (SIGTERM, then SIGKILL 5 s later)
    timeout -k 5 "$limit" bash -c "step_$name" >>"$log" 2>&1
    rc=$?
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
    0) status=ok ;;
    "$SKIP") status=skipped ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
    esac
    [[ $status == failed || $status == timeout ]] && failed=1
    echo "RESULT $name $status rc=$rc seconds=$seconds limit=$limit" | tee -a "$log"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$seconds" "$limit" >>"$OUT/summary.tsv"
done
echo "results in $OUT:" && { column -t "$OUT/summary.tsv" 2>/dev/null || cat "$OUT/summary.tsv"; }
exit "$failed"

#!/usr/bin/env bash
# The GPU checks in one run, each under its own time cap, for a short lease on a GPU machine:
#
#     bash benchmarks/gpu.sh [LOG]          # LOG: where the whole output also goes (default gpu.log)
#
# 1. the test suite with CUDA visible (tests that pick `--device auto` then run on the GPU);
# 2. the prepared benchmarks of benchmarks/README.md, "On a GPU machine": captioning throughput against the
#    original's loop (bf16 autocast, --fast), decoding alone by worker count, indexing end to end, a training step's throughput and memory,
#    `describe` on many short files, and `serve` with the text tower on the GPU.
# A step that fails or runs out of time is reported and the next one runs. SCALE=small shrinks every step to
# seconds (to try the script on a CPU machine: DEVICE=cpu SCALE=small). The tests run in 12 processes (pytest-xdist).
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:-gpu.log}
device=${DEVICE:-cuda}
small=$([[ ${SCALE:-full} == small ]] && echo 1 || echo 0)

step() {  # step SECONDS NAME COMMAND...
    local cap=$1 name=$2
    shift 2
    echo "=== $name (cap ${cap}s): $*"
    local began=$SECONDS
    timeout --kill-after=10 "$cap" "$@"
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - began)) s"
}

pick() { if ((small)); then echo "$1"; else echo "$2"; fi; }

{
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    step 30 doctor python3 -m pengi_search doctor --json
    # One OpenMP thread per test process: 12 processes of 16 threads each on 16 cores ran a quarter of the suite
    # in 120 s on the H200 machine (the suite takes about 2 minutes on 2 cores).
    OMP_NUM_THREADS=1 step "$(pick 60 120)" tests python3 -m pytest -q -p no:cacheprovider \
        $(pick "tests/test_fast_mode.py" "-n 12 tests")
    step "$(pick 60 100)" generate python3 benchmarks/bench_generate.py --device "$device" \
        --dtype "$(pick fp32 bf16)" --clips "$(pick 2 512)" --reference-clips "$(pick 1 8)" --fast \
        --max-len "$(pick 4 30)" $(pick "--size tiny" "")
    step "$(pick 60 40)" decode python3 benchmarks/bench_decode.py --files "$(pick 4 200)" --workers "$(pick 0,1 0,1,8)"
    step "$(pick 60 90)" index-e2e python3 benchmarks/bench_index_e2e.py --device "$device" \
        --files "$(pick 2 200)" --seconds 20 --workers "$(pick 1 8)" --max-len "$(pick 4 30)"
    step "$(pick 60 60)" train python3 benchmarks/bench_train.py --device "$device" --dtype "$(pick fp32 bf16)" \
        --steps "$(pick 1 10)" $(pick "--batch 2" "")
    step "$(pick 60 70)" describe python3 benchmarks/bench_cli.py --device "$device" --files "$(pick 2 256)" \
        --threads "$(pick 2 8)"
    step "$(pick 90 150)" serve python3 benchmarks/bench_serve.py --device "$device" --windows "$(pick 2000 100000)" \
        --index-type hnsw --requests "$(pick 40 1000)" --solo-requests "$(pick 10 50)" --workers 2
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
} 2>&1 | tee "$log"

#!/usr/bin/env bash
# The suite's checks that need a CUDA device (CI has none), in one script:
#   1. the `gpu`-marked tests (tests/test_gpu.py: CUDA equals CPU, nested attention, training
#      steps with and without deterministic algorithms);
#   2. `bench run --model ours --dataset synthetic` from a cold cache on the GPU (Lightning picks
#      it: train.accelerator=auto), which trains the tiny CLIP, BLIP2 and ours there, then
#      `bench run --model blip2` on the same cache; result files and logs go to OUT_DIR.
#
# Usage: scripts/gpu_checks.sh OUT_DIR   (from the repository root; PYTHON names the interpreter,
# default python3: the suite installed in it, or its dependencies, since the script puts the
# repository on PYTHONPATH).
set -uo pipefail
out=${1:?usage: scripts/gpu_checks.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
py=${PYTHON:-python3}
"$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || { echo "gpu_checks.sh: $py sees no CUDA device (torch.cuda.is_available() is False)" >&2; exit 2; }
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
bench() { "$py" -c 'import sys; from benchmark.cli import main; sys.argv[0] = "bench"; sys.exit(main())' "$@"; }
status=0

nvidia-smi > "$out/nvidia_smi.txt" 2>&1
"$py" -c 'import torch, lightning, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
"lightning", lightning.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name(0))' \
    | tee "$out/versions.txt"

"$py" -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider 2>&1 | tee "$out/pytest_gpu.log" || status=1

for model in ours blip2; do
    start=$(date +%s.%N)
    bench run --model "$model" --dataset synthetic --cache-dir "$cache" --results-dir "$out/results" --no-progress \
        > "$out/bench_run_$model.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || status=1
    echo "bench run --model $model: rc $rc, $("$py" -c "print(round($(date +%s.%N) - $start, 1))") s" \
        | tee -a "$out/bench_run_times.txt"
    tail -5 "$out/bench_run_$model.log"
done
exit $status

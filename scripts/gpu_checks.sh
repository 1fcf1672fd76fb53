#!/usr/bin/env bash
# The suite's checks that need a CUDA device (CI has none), in one script:
#   1. the `gpu`-marked tests (tests/test_gpu.py: CUDA equals CPU, nested attention, training
#      steps with and without deterministic algorithms);
#   2. `bench run --model ours --dataset synthetic` from a cold cache on the GPU (Lightning picks
#      it: train.accelerator=auto), which trains the tiny CLIP, BLIP2 and ours there, then
#      `bench run --model blip2` on the same cache; result files and logs go to OUT_DIR.
#
# Usage: scripts/gpu_checks.sh OUT_DIR   (from the repository root; `bench` on PATH, or the
# repository on PYTHONPATH, which the script adds).
set -uo pipefail
out=${1:?usage: scripts/gpu_checks.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cache=$(mktemp -d)
bench() { python3 -c 'import sys; from benchmark.cli import main; sys.argv[0] = "bench"; sys.exit(main())' "$@"; }
status=0

nvidia-smi > "$out/nvidia_smi.txt" 2>&1
python3 -c 'import torch, lightning, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
"lightning", lightning.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name(0))' \
    | tee "$out/versions.txt"

python3 -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider 2>&1 | tee "$out/pytest_gpu.log" || status=1

for model in ours blip2; do
    start=$(date +%s.%N)
    bench run --model "$model" --dataset synthetic --cache-dir "$cache" --results-dir "$out/results" --no-progress \
        > "$out/bench_run_$model.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || status=1
    echo "bench run --model $model: rc $rc, $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s" \
        | tee -a "$out/bench_run_times.txt"
    tail -5 "$out/bench_run_$model.log"
done
rm -rf "$cache"
exit $status

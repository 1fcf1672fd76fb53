#!/usr/bin/env bash
# Full-shape training steps on one GPU (issue 25, item 7): does every model train at batch 32 in
# bf16 within 80 GB, with and without train.grad_checkpointing, and is ours within 1.1x BLIP2's memory?
#   1. `gpu_train.py prepare`: a random-weight Blip2ForImageTextRetrieval at the layout of
#      Salesforce/blip2-itm-vit-g (EVA ViT-g/14 224 px, 39 layers; 12-layer Q-Former, 32 queries; 4.7 GB
#      float32) and a random CLIP ViT-L/14, written once (on the GPU) and reused by every model;
#   2. `gpu_train.py model --name M` per model (clip blip2 ours dynamicvit crossget), each in its own
#      process: the model built from the checkpoint through its full-size path, trained by a Lightning
#      Trainer (precision bf16-mixed, gradient clipping 1.0) for WARMUP + STEPS steps at BATCH, first
#      without then with gradient checkpointing (the first model freed before the second is built);
#      peak memory (torch.cuda.max_memory_allocated, reset per case) and steps/s (median timed step,
#      CUDA synchronised) in OUT_DIR/runs/M.json; BLIP2 and ours train on cached-feature-shaped fp16
#      tokens [B, 257, 1408] (their default cache_features), the others on pixels [B, 3, 224, 224];
#   3. OUT_DIR/summary.md + summary.json (rewritten after each model, so a cut-off run leaves what was
#      done): a row per (model, setting) and the targets PASS/FAIL.
# Outputs under OUT_DIR: versions.txt, nvidia_smi.txt, stage_times.tsv, prepare.json, runs/*.json,
# logs/*.log, summary.md, summary.json.
#
# Usage: scripts/gpu_train_check.sh OUT_DIR [--cpu-smoke]   (from the repository root)
#   --cpu-smoke (or GPU_TRAIN_CPU_SMOKE=1): no CUDA needed; tiny shapes (the same structures with 4 ViT
#   layers of width 32 at 32 px, a 2-layer Q-Former, 8 queries), batch 8, 1 warm-up + 2 timed steps, so the
#   whole pipeline runs on a CPU in a minute or two (memory is then not measured). Without it a
#   machine without CUDA is refused (exit 2).
# Environment:
#   PYTHON    interpreter with the suite's dependencies (default python3; the repository is put on PYTHONPATH)
#   MODELS    models to run, in order (default "clip blip2 ours dynamicvit crossget")
#   BATCH     batch size (default 32; 8 with --cpu-smoke); WARMUP / STEPS: warm-up and timed steps (default 3 / 10)
#   WORK_DIR  where the checkpoints go (default: a temporary folder, removed at exit)
#   LIMIT_GB  the memory target in GB = 1e9 bytes (default 80); RATIO: ours / BLIP2 (default 1.1)
# Budget on one H100: set-up ~1 min (writing the 4.7 GB checkpoint), then per model one process
# (imports, two loads of its checkpoint, 2 x 13 steps): about 10 minutes in all (not yet measured).
# Exit status: 0 when the script completed (whatever the runs gave), 2 without CUDA (unless
# --cpu-smoke), 1 when the set-up crashed.
set -uo pipefail

out="" smoke=${GPU_TRAIN_CPU_SMOKE:-0}
for arg in "$@"; do
    case $arg in
        --cpu-smoke) smoke=1 ;;
        -*) echo "gpu_train_check.sh: unknown option $arg (usage: scripts/gpu_train_check.sh OUT_DIR [--cpu-smoke])" >&2; exit 2 ;;
        *) [ -z "$out" ] && out=$arg || { echo "gpu_train_check.sh: one OUT_DIR only" >&2; exit 2; } ;;
    esac
done
[ -n "$out" ] || { echo "usage: scripts/gpu_train_check.sh OUT_DIR [--cpu-smoke]" >&2; exit 2; }

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
if [ "$smoke" = 1 ]; then
    scale=tiny image_size=32 device=cpu warmup=${WARMUP:-1} steps=${STEPS:-2} batch=${BATCH:-8}
    device_label="CPU (--cpu-smoke, tiny shapes)"
else
    "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' || {
        echo "gpu_train_check.sh: $py sees no CUDA device (torch.cuda.is_available() is False); this check needs" \
             "one GPU. Use --cpu-smoke to run the pipeline at tiny shapes on the CPU." >&2
        exit 2
    }
    scale=full image_size=224 device=cuda warmup=${WARMUP:-3} steps=${STEPS:-10}
    device_label=$("$py" -c 'import torch; print(torch.cuda.get_device_name(0))')
fi
models=${MODELS:-clip blip2 ours dynamicvit crossget}
batch=${batch:-${BATCH:-32}}
limit=${LIMIT_GB:-80}
ratio=${RATIO:-1.1}

mkdir -p "$out/logs" "$out/runs" || exit 1
: > "$out/stage_times.tsv"
if [ -n "${WORK_DIR:-}" ]; then
    work=$WORK_DIR; mkdir -p "$work" || exit 1
else
    work=$(mktemp -d) || exit 1
    trap 'rm -rf "$work"' EXIT
fi
now() { date +%s.%N; }
elapsed() { "$py" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
stage() {  # stage NAME LOG COMMAND...: run, time, log; appends to stage_times.tsv
    local name=$1 log=$2 start rc
    shift 2
    start=$(now)
    "$@" > "$log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$(elapsed "$start")" "$rc" >> "$out/stage_times.tsv"
    tail -3 "$log"
    return $rc
}

{ nvidia-smi || echo "nvidia-smi: not available"; } > "$out/nvidia_smi.txt" 2>&1
"$py" -c 'import torch, lightning, transformers, platform
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda, "lightning",
      lightning.__version__, "transformers", transformers.__version__,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")' > "$out/versions.txt" 2>&1
cat "$out/versions.txt"

stage prepare "$out/logs/prepare.log" "$py" scripts/gpu_train.py prepare --scale "$scale" --work "$work" \
    --out "$out" --device "$device" \
    || { echo "gpu_train_check.sh: the set-up failed, see $out/logs/prepare.log" >&2; exit 1; }

for model in $models; do
    stage "train $model" "$out/logs/train_$model.log" "$py" scripts/gpu_train.py model --name "$model" \
        --work "$work" --out "$out" --device "$device" --image-size "$image_size" --batch "$batch" \
        --warmup "$warmup" --steps "$steps" --precision bf16-mixed
    "$py" scripts/gpu_train.py summary --out "$out" --order "${models// /,}" --device-label "$device_label" \
        --batch "$batch" --precision bf16-mixed --limit-gb "$limit" --ratio "$ratio" > "$out/logs/summary.log" 2>&1 \
        || echo "gpu_train_check.sh: the summary failed, see $out/logs/summary.log" >&2
done
cat "$out/summary.md" 2>/dev/null
exit 0

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

name=gpu_train_check.sh out="" smoke=${GPU_TRAIN_CPU_SMOKE:-0}
source "$(dirname "$0")/gpu_common.sh"
if [ "$smoke" = 1 ]; then
    scale=tiny image_size=32 device=cpu warmup=${WARMUP:-1} steps=${STEPS:-2} batch=${BATCH:-8}
else
    scale=full image_size=224 device=cuda warmup=${WARMUP:-3} steps=${STEPS:-10}
fi
models=${MODELS:-clip blip2 ours dynamicvit crossget}
batch=${batch:-${BATCH:-32}}
limit=${LIMIT_GB:-80}
ratio=${RATIO:-1.1}

gpu_prepare_out runs
device_label=$(gpu_device_label)

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

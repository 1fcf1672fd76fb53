# Shared by scripts/gpu_eval_check.sh and scripts/gpu_train_check.sh (sourced, not run): argument
# parsing (OUT_DIR [--cpu-smoke]), the environment, the CUDA check, the work folder, stage timing and
# the machine record. The sourcing script sets `name` (its file name) and `smoke` (its smoke default)
# first; afterwards out, py, smoke, work and the functions now / elapsed / stage are set.

for arg in "$@"; do
    case $arg in
        --cpu-smoke) smoke=1 ;;
        -*) echo "$name: unknown option $arg (usage: scripts/$name OUT_DIR [--cpu-smoke])" >&2; exit 2 ;;
        *) [ -z "${out:-}" ] && out=$arg || { echo "$name: one OUT_DIR only" >&2; exit 2; } ;;
    esac
done
[ -n "${out:-}" ] || { echo "usage: scripts/$name OUT_DIR [--cpu-smoke]" >&2; exit 2; }

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}

if [ "$smoke" != 1 ]; then
    "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' || {
        echo "$name: $py sees no CUDA device (torch.cuda.is_available() is False); this check needs" \
             "one GPU. Use --cpu-smoke to run the pipeline at tiny shapes on the CPU." >&2
        exit 2
    }
fi

# gpu_prepare_out SUBDIR...: the output folders, an empty stage_times.tsv, the work folder (WORK_DIR or a
# temporary one removed at exit), nvidia-smi and the versions.
gpu_prepare_out() {
    local sub
    for sub in logs "$@"; do mkdir -p "$out/$sub" || exit 1; done
    : > "$out/stage_times.tsv"
    if [ -n "${WORK_DIR:-}" ]; then
        work=$WORK_DIR; mkdir -p "$work" || exit 1
    else
        work=$(mktemp -d) || exit 1
        trap 'rm -rf "$work"' EXIT
    fi
    { nvidia-smi || echo "nvidia-smi: not available"; } > "$out/nvidia_smi.txt" 2>&1
    "$py" -c 'import torch, lightning, transformers, platform
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda, "lightning",
      lightning.__version__, "transformers", transformers.__version__,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")' > "$out/versions.txt" 2>&1
    cat "$out/versions.txt"
}

gpu_device_label() {
    if [ "$smoke" = 1 ]; then echo "CPU (--cpu-smoke, tiny shapes)"; else "$py" -c 'import torch; print(torch.cuda.get_device_name(0))'; fi
}

now() { date +%s.%N; }
elapsed() { "$py" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
stage() {  # stage NAME LOG COMMAND...: run, time, log; appends to stage_times.tsv
    local stage_name=$1 log=$2 start rc
    shift 2
    start=$(now)
    "$@" > "$log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$stage_name" "$(elapsed "$start")" "$rc" >> "$out/stage_times.tsv"
    tail -3 "$log"
    return $rc
}

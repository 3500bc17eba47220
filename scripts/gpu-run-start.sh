# Sourced by the scripts that run on a lent GPU machine (gpu-sft-probe.sh, gpu-grpo-runs.sh)
# after they set `budget` (seconds for the whole script): $OUT and its log.txt, say (a
# timed line into the log) and left (seconds of the budget left); then the machine's node
# and Vulkan loader (.gpu/boot.sh; GPU_BOOT=0 skips it for a dry run elsewhere), the
# trimmed node_modules and the packed benchmark, images and checkpoints
# (scripts/gpu-sft-pack.sh), and the adapter as `retrv doctor` reports it.
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
begin=$(date +%s)
log="$OUT/log.txt"
say() { echo "== $* (t+$(($(date +%s) - begin)) s)" | tee -a "$log"; }
left() { echo $((begin + budget - $(date +%s))); }

[ "${GPU_BOOT:-1}" = 1 ] && source .gpu/boot.sh
[ -d node_modules/webgpu ] || tar -xJf .gpu/nm-train.tar.xz
tar -xJf .gpu/probe.tar.xz
export RETRV_TUNING_CACHE=$PWD/runs/gpu/tuning.json
mkdir -p runs/gpu
say "adapter"
timeout 60 node --import tsx bin/retrv.ts doctor 2>&1 | tee -a "$log"

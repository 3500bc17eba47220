#!/usr/bin/env bash
# The benchmark run for a bare NVIDIA machine lent through the device tool (see
# ../shared/gpu/README.md): node and the Vulkan loader come in .gpu/ (prepare.sh), a
# trimmed node_modules as .gpu/nm.tar.xz. Writes every JSON result and the log under
# $OUT (default ./gpu-out). Order: what matters most first, so a cut-off run still
# returns the headline numbers.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
[ "${GPU_BOOT:-1}" = 1 ] && source .gpu/boot.sh
[ -d node_modules/webgpu ] || tar -xJf .gpu/nm.tar.xz
export RETRV_TUNING_CACHE="$OUT/tuning.json"
log="$OUT/log.txt"
step() { echo "== $* ($(date +%T))" | tee -a "$log"; }
bench() { timeout "$1" node --import tsx bench/run.ts "${@:2}" 2>&1 | grep -v '^Warning: maxDynamic' | tee -a "$log"; }

step "adapter"
timeout 30 node --import tsx bin/retrv.ts doctor 2>&1 | tee -a "$log"
step "pytorch f32 reference"
timeout 90 python3 bench/peers/torch_matmul.py --sizes 1024,2048,4096 > "$OUT/torch.json" 2>>"$log"; cat "$OUT/torch.json" | tee -a "$log"
step "matmul, tuned, with peers"
bench 200 --suite matmul --sizes 1024,2048,4096 --tune --max-time 1.5 --min-samples 5 --out "$OUT/matmul.json"
step "training throughput and MFU"
bench 120 --suite train-presets --tune --max-time 2 --min-samples 3 --out "$OUT/train-presets.json"
step "fused kernels, attention, model presets"
bench 100 --suite fused,attention,model --max-time 1 --min-samples 3 --out "$OUT/fused.json"
step "done"

#!/usr/bin/env bash
# The K = 8 probe for a lent GPU machine (see ../shared/gpu/README.md): does the
# answer-only SFT of task 4 learn to pick among 8 candidates with more steps or larger
# batches than lavapipe affords? Four runs side by side (each process is bound by its own
# host time per dispatch: on an H200 four at once ran at 397 ms per step at batch 8,
# against 316-346 ms for one alone), each sized from a short calibration run so that
# training ends on time, then each evaluated on the validation queries of task 4.
# Packed by scripts/gpu-sft-pack.sh; writes under $OUT: log.txt, tests.txt (the test
# suite on this adapter), results.tar.xz (logs, evaluations, final checkpoints).
# PROBE_SECONDS: the whole script's budget (default 520). For a dry run elsewhere:
# GPU_BOOT=0 PROBE_TESTS=0 CALIB_STEPS=3 EVAL_LIMIT=5.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
begin=$(date +%s)
budget=${PROBE_SECONDS:-520}
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

# The test suite on this adapter, beside the runs (one worker; it shares the cores).
tests_pid=none
if [ "${PROBE_TESTS:-1}" = 1 ]; then
  (timeout "$((budget - 60))" node node_modules/vitest/vitest.mjs run > "$OUT/tests.txt" 2>&1; echo "exit $?" >> "$OUT/tests.txt") &
  tests_pid=$!
fi

base=runs/tiny-3k-cmp/align/final
common="--base $base --tasks 4 --easy-share 0.5 --lr 3e-3"
declare -A args=(
  [k8]="$common --K 8"
  [k8-noicm]="$common --K 8 --no-icm"
  [k16-cur]="$common --K 16 --k-start 4"
  [k8-b32]="$common --K 8 --batch 32"
)
# k16-cur's lists grow 4 -> 8 -> 16: calibrate it at 16, its slowest.
declare -A calibArgs=([k16-cur]="$common --K 16")
declare -A evalK=([k8]=8 [k8-noicm]=8 [k16-cur]=16 [k8-b32]=8)

say "calibration: ${CALIB_STEPS:-30} steps of each, side by side"
calib_begin=$(date +%s)
for r in "${!args[@]}"; do
  timeout 150 node --import tsx train/experiments/sft-answer-only.ts ${calibArgs[$r]:-${args[$r]}} --steps "${CALIB_STEPS:-30}" --out "runs/gpu/calib-$r" > "runs/gpu/calib-$r.out" 2>&1 &
done
wait_runs() { for p in $(jobs -pr); do [ "$p" = "$tests_pid" ] || wait "$p"; done; }
wait_runs
calib_s=$(($(date +%s) - calib_begin))
# Steps for each run: the time left for training (all but 110 s kept for evaluation), less
# its start-up (the calibration's wall time less its steps), over its median step time,
# with a tenth kept back.
train_s=$(($(left) - 110))
declare -A steps
for r in "${!args[@]}"; do
  read -r ms startup_ms < <(node -e '
    const L = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => JSON.parse(l).ms);
    const M = L.slice(Math.min(5, L.length - 1)).sort((a, b) => a - b);
    console.log(Math.round(M[M.length >> 1]), Math.round(Math.max(0, process.argv[2] * 1000 - L.reduce((a, v) => a + v, 0))));
  ' "runs/gpu/calib-$r/log.jsonl" "$calib_s" 2>/dev/null || echo 0 0)
  [ "$ms" -gt 0 ] 2>/dev/null || { say "calibration of $r failed:"; tail -5 "runs/gpu/calib-$r.out" | tee -a "$log"; continue; }
  steps[$r]=$(((train_s * 1000 - startup_ms) * 9 / 10 / ms))
  say "$r: median ${ms} ms/step, start-up ${startup_ms} ms -> ${steps[$r]} steps in ${train_s} s"
done

say "training"
for r in "${!steps[@]}"; do
  timeout "$((train_s + 30))" node --import tsx train/experiments/sft-answer-only.ts ${args[$r]} --steps "${steps[$r]}" --out "runs/gpu/$r" > "runs/gpu/$r.out" 2>&1 &
done
wait_runs
pack() { tar -cJf "$OUT/results.tar.xz" --exclude='runs/gpu/calib-*/final' runs/gpu; }
pack
for r in "${!steps[@]}"; do say "$r: $(tail -1 runs/gpu/$r/log.jsonl 2>/dev/null)"; done

say "evaluation on 150 validation queries of task 4"
for r in "${!steps[@]}"; do
  ckpt=runs/gpu/$r/final
  [ -d "$ckpt" ] || ckpt=runs/gpu/$r/checkpoint
  timeout "$(($(left) - 10))" node --import tsx bin/retrv.ts eval --queries runs/exp/val4.jsonl --pool data/emoji-mbeir/pool.jsonl \
    --image-root node_modules --ckpt "$ckpt" --retriever runs/tiny-3k/retriever/final --k "${evalK[$r]}" --limit "${EVAL_LIMIT:-150}" \
    $([[ $r == *noicm* ]] && echo --no-icm) --out "runs/gpu/$r-eval.json" > "runs/gpu/$r-eval.out" 2>&1 &
done
wait_runs
for r in "${!steps[@]}"; do say "$r eval:"; tail -4 "runs/gpu/$r-eval.out" | tee -a "$log"; done
pack
say "done"

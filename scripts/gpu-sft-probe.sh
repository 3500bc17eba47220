#!/usr/bin/env bash
# SFT runs side by side on a lent GPU machine (see ../shared/gpu/README.md), named by a
# spec file (PROBE_SPEC, default scripts/gpu-probe-b32.spec). Each process is bound by its
# own host time per dispatch (on an H200 four at once ran at 397 ms per step at batch 8,
# against 316-346 ms for one alone), so several at once cost little. Each run is sized from
# a short calibration run so that training ends on time, then evaluated on validation
# queries.
# Packed by scripts/gpu-sft-pack.sh; writes under $OUT: log.txt, tests.txt (the test
# suite on this adapter), results.tar.xz (logs, evaluations, final checkpoints).
# PROBE_SECONDS: the whole script's budget (default 520); PROBE_EVAL=0 skips the
# evaluation. For a dry run elsewhere: GPU_BOOT=0 PROBE_TESTS=0 CALIB_STEPS=3 EVAL_LIMIT=5,
# in a copy of the tree (it unpacks the shrunk images into node_modules).
set -uo pipefail
budget=${PROBE_SECONDS:-520}
source scripts/gpu-run-start.sh

# The test suite on this adapter, beside the runs (one worker; it shares the cores).
tests_pid=none
if [ "${PROBE_TESTS:-1}" = 1 ]; then
  (timeout "$((budget - 60))" node node_modules/vitest/vitest.mjs run > "$OUT/tests.txt" 2>&1; echo "exit $?" >> "$OUT/tests.txt") &
  tests_pid=$!
fi

base=${PROBE_BASE:-runs/tiny-3k-cmp/align/final}
eval_retriever=${EVAL_RETRIEVER:-runs/tiny-3k/retriever/final}
# The runs: a spec file fills args, calibArgs, kind, ckpt (an SFT-stage run's input, default
# $base), evalK, evalQueries, evalFlags and tfArgs (train/experiments/answer-given-trace.ts's
# arguments after the checkpoint: a teacher-forced check beside the evaluation). See
# scripts/gpu-probe-k8.spec (session 8), gpu-probe-b32.spec (9), gpu-probe-nameless.spec (10),
# gpu-probe-xfit.spec (14). maxSteps caps a run's steps (to compare with a run elsewhere).
# rvArgs: retriever runs (train/experiments/retriever-variants.ts with these flags, which
# fix their steps and evaluate on validation themselves), started at once and given the
# whole budget, beside the calibrated runs.
declare -A args calibArgs kind ckpt evalK evalQueries evalFlags tfArgs maxSteps rvArgs
source "${PROBE_SPEC:-scripts/gpu-probe-b32.spec}"
rv_pids=""
for r in "${!rvArgs[@]}"; do
  timeout "$(($(left) - 25))" node --import tsx train/experiments/retriever-variants.ts ${rvArgs[$r]} --out "runs/gpu/$r" > "runs/gpu/$r.out" 2>&1 &
  rv_pids="$rv_pids $!"
done

# launch <seconds> <run> <steps> <out dir> <args>: an answer-only run (kind ao, args are its
# flags), the pipeline's SFT stage with traces (kind sft, args a JSON object whose sections
# override those of train/configs/tiny-3k-easy.json), or train/sft-stage.ts itself (kind
# stage, args its flags, input ckpt[run]); logOf/finalOf say where each kind writes.
launch() {
  local t=$1; shift
  if [ "${kind[$1]:-ao}" = stage ]; then
    timeout "$t" node --import tsx train/sft-stage.ts --base "${ckpt[$1]:-$base}" $4 --steps "$2" --out "$3" --quiet
  elif [ "${kind[$1]:-ao}" = sft ]; then
    node -e '
      const fs = require("fs"), c = JSON.parse(fs.readFileSync("train/configs/tiny-3k-easy.json", "utf8"));
      for (const [k, v] of Object.entries(JSON.parse(process.argv[1]))) Object.assign(c[k], v);
      c.sft.steps = Number(process.argv[2]);
      fs.writeFileSync(process.argv[3], JSON.stringify(c));
    ' "$4" "$2" "$3.json" && timeout "$t" node --import tsx bin/retrv.ts train --stage sft --config "$3.json" --run "$3" --ckpt "${ckpt[$1]:-$base}" --quiet
  else
    timeout "$t" node --import tsx train/experiments/sft-answer-only.ts $4 --steps "$2" --out "$3"
  fi
}
logOf() { if [ "${kind[$1]:-ao}" = sft ]; then echo "$2/sft/log.jsonl"; else echo "$2/log.jsonl"; fi; }
finalOf() { if [ "${kind[$1]:-ao}" = sft ]; then echo "$2/sft"; else echo "$2"; fi; }

say "calibration: ${CALIB_STEPS:-30} steps of each, side by side"
calib_begin=$(date +%s)
for r in "${!args[@]}"; do
  launch 150 "$r" "${CALIB_STEPS:-30}" "runs/gpu/calib-$r" "${calibArgs[$r]:-${args[$r]}}" > "runs/gpu/calib-$r.out" 2>&1 &
done
wait_runs() { for p in $(jobs -pr); do [ "$p" = "$tests_pid" ] || [[ " $rv_pids " == *" $p "* ]] || wait "$p"; done; }
wait_runs
calib_s=$(($(date +%s) - calib_begin))
# Steps for each run: the time left for training (all but EVAL_SECONDS, default 110, kept for evaluation, 20 for
# packing with PROBE_EVAL=0, when the checkpoints are evaluated elsewhere), less
# its start-up (the calibration's wall time less its steps), over its median step time,
# with a tenth kept back.
train_s=$(($(left) - $([ "${PROBE_EVAL:-1}" = 1 ] && echo "${EVAL_SECONDS:-110}" || echo 20)))
declare -A steps
for r in "${!args[@]}"; do
  read -r ms startup_ms < <(node -e '
    const L = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => JSON.parse(l).ms);
    const M = L.slice(Math.min(5, L.length - 1)).sort((a, b) => a - b);
    console.log(Math.round(M[M.length >> 1]), Math.round(Math.max(0, process.argv[2] * 1000 - L.reduce((a, v) => a + v, 0))));
  ' "$(logOf $r runs/gpu/calib-$r)" "$calib_s" 2>/dev/null || echo 0 0)
  [ "$ms" -gt 0 ] 2>/dev/null || { say "calibration of $r failed:"; tail -5 "runs/gpu/calib-$r.out" | tee -a "$log"; continue; }
  steps[$r]=$(((train_s * 1000 - startup_ms) * 9 / 10 / ms))
  [ -z "${maxSteps[$r]:-}" ] || [ "${steps[$r]}" -le "${maxSteps[$r]}" ] || steps[$r]=${maxSteps[$r]}
  say "$r: median ${ms} ms/step, start-up ${startup_ms} ms -> ${steps[$r]} steps in ${train_s} s"
done

say "training"
for r in "${!steps[@]}"; do
  launch "$((train_s + 30))" "$r" "${steps[$r]}" "runs/gpu/$r" "${args[$r]}" > "runs/gpu/$r.out" 2>&1 &
done
wait_runs
# The SFT runs' optimizer states stay behind (the device tool brings back 16 MiB per file);
# each retriever run comes back alone, its newest checkpoint only, optimizer included, so
# that a run cut short can be resumed elsewhere.
pack() {
  local skip=()
  for r in "${!rvArgs[@]}"; do
    skip+=(--exclude="runs/gpu/$r")
    ls -d "runs/gpu/$r"/*/step-* 2>/dev/null | sort | head -n -1 | xargs -r rm -rf
    tar -cJf "$OUT/$r.tar.xz" "runs/gpu/$r" "runs/gpu/$r.out"
  done
  tar -cJf "$OUT/results.tar.xz" --exclude='runs/gpu/calib-*' --exclude='optimizer.safetensors' "${skip[@]}" runs/gpu
}
pack
for r in "${!steps[@]}"; do say "$r: $(tail -1 "$(logOf $r runs/gpu/$r)" 2>/dev/null)"; done

[ "${PROBE_EVAL:-1}" = 1 ] || { say "done (no evaluation)"; exit 0; }
say "evaluation on validation queries"
for r in "${!steps[@]}"; do
  model=$(finalOf $r runs/gpu/$r)/final
  [ -d "$model" ] || model=$(finalOf $r runs/gpu/$r)/checkpoint
  timeout "$(($(left) - 10))" node --import tsx bin/retrv.ts eval --queries "${evalQueries[$r]:-runs/exp/val4.jsonl}" --pool data/emoji-mbeir/pool.jsonl \
    --image-root node_modules --ckpt "$model" --retriever "$eval_retriever" --k "${evalK[$r]}" --limit "${EVAL_LIMIT:-150}" \
    ${evalFlags[$r]:-} --out "runs/gpu/$r-eval.json" > "runs/gpu/$r-eval.out" 2>&1 &
  [ -z "${tfArgs[$r]:-}" ] || timeout "$(($(left) - 10))" node --import tsx train/experiments/answer-given-trace.ts "$model" ${tfArgs[$r]} --queries "${EVAL_LIMIT:-150}" > "runs/gpu/$r-tf.out" 2>&1 &
done
wait_runs
for r in "${!steps[@]}"; do
  say "$r eval:"; tail -4 "runs/gpu/$r-eval.out" | tee -a "$log"
  [ -z "${tfArgs[$r]:-}" ] || tail -1 "runs/gpu/$r-tf.out" | tee -a "$log"
done
for p in $rv_pids; do wait "$p"; done
for r in "${!rvArgs[@]}"; do say "$r:"; tail -12 "runs/gpu/$r.out" | tee -a "$log"; done
pack
say "done"

#!/usr/bin/env bash
# GRPO runs side by side on a lent GPU machine (see ../shared/gpu/README.md), named by a
# spec file (GRPO_SPEC). A GRPO step is bound by host time per dispatch, so each run is a
# process of its own and several share the machine's cores. Every run checkpoints as its
# spec says (--save-every), so a run the time limit cuts short comes back resumable.
# Packed by scripts/gpu-sft-pack.sh (PACK_BASE / PACK_CKPTS / PACK_FILES name what the
# spec's runs read); run with carry [".gpu"] and the command
#   GRPO_SPEC=scripts/gpu-grpo-<name>.spec bash scripts/gpu-grpo-runs.sh
# Writes under $OUT: log.txt, and <run>.tar.xz per run (its log.jsonl, its output, and
# final/ or, when cut short, checkpoint/ with the optimizer state).
# RUN_SECONDS: the whole script's budget (default 480). For a dry run elsewhere, in a copy
# of the tree without node_modules: GPU_BOOT=0 GRPO_STEPS=2.
set -uo pipefail
budget=${RUN_SECONDS:-480}
source scripts/gpu-run-start.sh

# The spec fills args (train/grpo.ts flags per run) and ckpt (each run's start).
declare -A args ckpt
source "${GRPO_SPEC:?name a spec file}"
say "starting ${#args[@]} runs: ${!args[*]}"
for r in "${!args[@]}"; do
  timeout "$(($(left) - 30))" node --import tsx train/grpo.ts --ckpt "${ckpt[$r]}" ${args[$r]} --out "runs/gpu/$r" --quiet > "runs/gpu/$r.out" 2>&1 &
done
wait
for r in "${!args[@]}"; do
  say "$r: $(grep -c . "runs/gpu/$r/log.jsonl" 2>/dev/null || echo 0) steps logged"
  tail -2 "runs/gpu/$r.out" | tee -a "$log"
  # One archive per run keeps each file under the device tool's size limit.
  tar -cJf "$OUT/$r.tar.xz" "runs/gpu/$r" "runs/gpu/$r.out"
done
say "done"

#!/usr/bin/env bash
# Step time of the answer-only SFT (task 4, K = 8) on a lent GPU machine, one process at a
# time, A B A B: the committed tree in .gpu/old.tar.xz (`git archive <rev> | xz`) against
# the working tree, at batch 8 and 32. Needs .gpu/ as scripts/gpu-sft-pack.sh leaves it.
# Prints (and writes to $OUT/ab.txt) the median ms of each run's steps after the fourth.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
[ "${GPU_BOOT:-1}" = 1 ] && source .gpu/boot.sh
[ -d node_modules/webgpu ] || tar -xJf .gpu/nm-train.tar.xz
[ -d data/emoji-mbeir ] || tar -xJf .gpu/probe.tar.xz
old=$(mktemp -d)
tar -xJf .gpu/old.tar.xz -C "$old"
for d in node_modules data runs; do ln -s "$PWD/$d" "$old/$d"; done
here=$PWD
for round in $(seq "${AB_ROUNDS:-2}"); do
  for b in 8 32; do
    for tree in old new; do
      dir=$here; [ $tree = old ] && dir=$old
      run=/tmp/ab-$tree-$b-$round
      (cd "$dir" && timeout 60 node --import tsx train/experiments/sft-answer-only.ts --base runs/tiny-3k-cmp/align/final \
        --tasks 4 --K 8 --batch $b --steps "${AB_STEPS:-20}" --easy-share 0.5 --lr 3e-3 --out $run > $run.out 2>&1)
      node -e '
        const L = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => JSON.parse(l)).slice(4);
        const ms = L.map((r) => r.ms).sort((a, b) => a - b);
        console.log(`${process.argv[2]} batch ${process.argv[3]} round ${process.argv[4]}: ${Math.round(ms[ms.length >> 1])} ms/step (median of ${ms.length}), last loss ${L.at(-1).loss.toFixed(4)}`);
      ' "$run/log.jsonl" $tree $b $round 2>&1 | tee -a "$OUT/ab.txt"
    done
  done
done

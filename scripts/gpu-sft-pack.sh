#!/usr/bin/env bash
# Packs what scripts/gpu-sft-probe.sh needs on a bare GPU machine into .gpu/ (ignored by
# git), inside the device tool's 64 MiB: node and the Vulkan loader (../shared/gpu/prepare.sh),
# a node_modules without the peers' and the data packages' weight (nm-train.tar.xz), and
# the benchmark, the base checkpoints (and those named in PACK_CKPTS), the validation
# queries and the benchmark's images at the model's 32 px (probe.tar.xz;
# scripts/shrink-images.ts measures the rounding).
# Then: device run with carry [".gpu"] and the command `bash scripts/gpu-sft-probe.sh`.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
bash ../shared/gpu/prepare.sh >/dev/null
[ -s .gpu/nm-train.tar.xz ] || tar -cf - \
  --exclude='node_modules/onnxruntime-node' --exclude='node_modules/onnxruntime-web' \
  --exclude='node_modules/@huggingface' --exclude='node_modules/@lancedb' --exclude='node_modules/@tensorflow' \
  --exclude='node_modules/emojibase-data' --exclude='node_modules/emoji-datasource-*' \
  --exclude='node_modules/@typescript' --exclude='node_modules/typescript' --exclude='node_modules/@img' \
  --exclude='node_modules/webgpu/dist/darwin-*' --exclude='node_modules/webgpu/dist/linux-arm64' \
  --exclude='node_modules/webgpu/dist/win32-*' --exclude='node_modules/lightningcss*' \
  --exclude='node_modules/apache-arrow' --exclude='node_modules/web-streams-polyfill' --exclude='node_modules/openai' \
  --exclude='node_modules/.cache' --exclude='node_modules/.vite' node_modules | xz -T0 -6 > .gpu/nm-train.tar.xz
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
npx tsx scripts/shrink-images.ts --bench data/emoji-mbeir --image-root node_modules --size 32 --out "$stage/node_modules"
mkdir -p "$stage/runs/exp" "$stage/data"
cp -r data/emoji-mbeir "$stage/data/"
# The recorded image root is this machine's node_modules: point it nowhere so that the
# loader falls back to the project's node_modules (found by the packages' package.json).
node -e 'const f=process.argv[1],m=JSON.parse(require("fs").readFileSync(f,"utf8"));m.image_root="/nonexistent/image-root";require("fs").writeFileSync(f,JSON.stringify(m,null,2))' "$stage/data/emoji-mbeir/meta.json"
for v in google twitter; do cp node_modules/emoji-datasource-$v/package.json "$stage/node_modules/emoji-datasource-$v/"; done
# PACK_BASE: the runs' default start (the probe's PROBE_BASE); PACK_RETRIEVER: the first
# stage its evaluation reranks (the probe's EVAL_RETRIEVER).
for c in "${PACK_BASE:-runs/tiny-3k-cmp/align/final}" "${PACK_RETRIEVER:-runs/tiny-3k/retriever/final}"; do
  mkdir -p "$stage/$(dirname "$c")" && cp -rL "$c" "$stage/$c"
done
for f in runs/exp/val4.jsonl runs/exp/val6.jsonl; do [ ! -f "$f" ] || cp "$f" "$stage/runs/exp/"; done
# PACK_CKPTS: more final/ folders to start runs from (e.g. "runs/exp/t4-k16-b32-cont/final");
# PACK_FILES: more single files the runs read (e.g. a first-stage rankings file).
for c in ${PACK_CKPTS:-} ${PACK_FILES:-}; do mkdir -p "$stage/$(dirname "$c")" && cp -rL "$c" "$stage/$c"; done
# Runs start from a checkpoint's weights, not its optimizer state.
find "$stage/runs" -name optimizer.safetensors -delete
tar -C "$stage" -cf - node_modules data runs | xz -T0 -6 > .gpu/probe.tar.xz
du -sh --apparent-size .gpu

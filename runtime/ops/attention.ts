// Fused scaled-dot-product attention with grouped-query heads, causal / padding / additive
// masks and a KV-cache query offset. The forward keeps an online softmax per query row
// (shaders/attention_fwd.wgsl) and saves only the row logsumexp; the backward recomputes
// the scores (FlashAttention-2 style): dQ per query row, dK/dV per key row summing over the
// grouped query heads, so no [Tq, Tk] matrix is ever stored and no float atomics are needed.
// Three kernel families (ATTENTION_KERNELS): `tiled` (the *_tiled.wgsl kernels) for GPUs,
// where a workgroup stages tiles of K / V (backward: also Q / dO) in workgroup memory for a
// block of rows; `rows` (attention_fwd / _bwd_q / _bwd_kv.wgsl, one row per invocation),
// and `sg` (the *_sg.wgsl kernels) for CPU adapters with subgroups, where the lanes of a
// subgroup share every K / V (backward: Q / dO) load.
import { assertDType } from '../dtype.ts';
import { Params, getEngine } from '../engine.ts';
import { Tensor, empty, shapeStr } from '../tensor.ts';
import { noGrad, record } from '../autograd.ts';
import { contiguous } from './copy.ts';
import { grid1d } from './util.ts';

export interface AttentionOptions {
  /** Query i (absolute position qOffset + i) sees keys j <= qOffset + i. */
  causal?: boolean;
  /** [B, Tk] f32, i32 or u32: nonzero = attend, 0 = padded key. */
  keyPadding?: Tensor;
  /** f32 additive mask broadcastable to [B, Hq, Tq, Tk] (e.g. 0 / -Infinity; values below -1e30 exclude the key). */
  mask?: Tensor;
  /** Score scale, default 1 / sqrt(D). */
  scale?: number;
  /** Absolute position of query 0 for causal masking, default Tk - Tq (queries are the last Tq positions). */
  qOffset?: number;
  /**
   * Forward kernel: 'auto' (default) picks by adapter, or a name from ATTENTION_KERNELS
   * (tests and benchmarks force each variant; one the adapter cannot run throws).
   */
  kernel?: AttentionKernel;
}

/**
 * Kernel variants (measured: bench/attention-log.md); the backward of a call uses the family
 * of its forward.
 * tiled: FlashAttention-2 style (attention_*_tiled.wgsl): a workgroup owns a block of
 *   query (dK/dV: key) rows and walks K / V (Q / dO) tiles staged in workgroup memory,
 *   C = 8 invocations per row; tile sizes by head size within 32 KiB (tiledConfig). The
 *   default on hardware adapters.
 * rows: one query (backward: key) row per invocation, every lane loads its own K / V rows
 *   (attention_fwd / _bwd_q / _bwd_kv.wgsl); runs anywhere.
 * sg: the lanes of a subgroup share K / V (backward: Q / dO) loads via subgroupShuffle
 *   (attention_*_sg.wgsl), R rows per lane, by default the most (<= 4) that keep
 *   R * ceil(D / 4) <= 64 vec4 per lane forward, 32 backward (more spilled state was 2-8x
 *   slower on lavapipe). The default on CPU adapters with subgroups. sg-kb4 (R = 1, blocks
 *   of 4 keys: below lavapipe's subgroup of 8) exists so that tests run the
 *   subgroup-larger-than-block and one-row paths.
 */
export const ATTENTION_KERNELS: Record<string, { shader: string; R?: number; KB?: number }> = {
  tiled: { shader: 'attention_fwd_tiled' },
  rows: { shader: 'attention_fwd' },
  sg: { shader: 'attention_fwd_sg' },
  'sg-kb4': { shader: 'attention_fwd_sg', R: 1, KB: 4 },
};
export type AttentionKernelName = 'tiled' | 'rows' | 'sg' | 'sg-kb4';
export type AttentionKernel = 'auto' | AttentionKernelName;

/** The adapter's smallest subgroup size, 0 without subgroups. */
function subgroupMin(): number {
  const ctx = getEngine().ctx;
  if (!ctx.hasSubgroups) return 0;
  return (ctx.adapter.info as unknown as { subgroupMinSize?: number }).subgroupMinSize ?? 0;
}

/** Why this adapter cannot run a variant, or null. */
export function attentionKernelBlocker(name: AttentionKernelName): string | null {
  const v = ATTENTION_KERNELS[name];
  if (!v) throw new RangeError(`attention: unknown kernel '${name}' (expected 'auto' or one of ${Object.keys(ATTENTION_KERNELS).join(', ')})`);
  if (v.shader !== 'attention_fwd_sg') return null;
  const min = subgroupMin();
  if (min < (v.KB ?? 4)) return `attention kernel ${name} needs subgroups of at least ${v.KB ?? 4} invocations, which this adapter lacks`;
  return null;
}

/** The default forward kernel for this adapter (measured: bench/attention-log.md). */
export function pickAttentionKernel(): AttentionKernelName {
  const ctx = getEngine().ctx;
  if (!ctx.isSoftware) return 'tiled';
  return attentionKernelBlocker('sg') ? 'rows' : 'sg';
}

/** Tile config of the tiled kernels: rows per block, keys (backward: rows) per tile, invocations per row. */
interface TiledConfig {
  BQ: number;
  BK: number;
  C: number;
}

// Largest tiles first; BQ and BK are multiples of C.
const TILED_CONFIGS: TiledConfig[] = [
  { BQ: 16, BK: 32, C: 8 },
  { BQ: 16, BK: 16, C: 8 },
  { BQ: 16, BK: 8, C: 8 },
  { BQ: 8, BK: 8, C: 8 },
  { BQ: 4, BK: 4, C: 4 },
];

/**
 * The largest tiled config whose workgroup memory fits min(32 KiB, the adapter's limit) for
 * rows of maxD elements of width w (1 or 4), or null. Staged rows hold maxD / w + 1 elements
 * of w floats (one pad element against bank conflicts). Forward: Q block, K and V tiles,
 * probabilities and per-row partial maxima; backward (the dQ and dK/dV kernels share a
 * config): two row blocks and two tiles of rows, and two [BQ, BK] tiles.
 */
function tiledConfig(maxD: number, w: number, pass: 'fwd' | 'bwd'): TiledConfig | null {
  const lim = getEngine().ctx.limits;
  const bytes = Math.min(32768, lim.maxComputeWorkgroupStorageSize);
  const row = 4 * w * (maxD / w + 1);
  return (
    TILED_CONFIGS.find(({ BQ, BK, C }) => {
      const need = pass === 'fwd' ? row * (BQ + 2 * BK) + 4 * (BQ * BK + BQ * C) : row * 2 * (BQ + BK) + 8 * BQ * BK;
      return need <= bytes && Math.max(BQ, BK) * C <= lim.maxComputeInvocationsPerWorkgroup;
    }) ?? null
  );
}

/** Tile config of an sg kernel: rows (or keys) per lane, lanes per workgroup, keys per block. */
interface SgConfig {
  R: number;
  WG: number;
  KB: number;
  DC: number;
}

/**
 * Config of the subgroup kernels for head sizes up to 4 * DC: R (rows per lane) is the largest
 * power of two <= 4 with R * DC <= budget. Past the measured budget the spilled per-lane state
 * made the kernels 2-8x slower on lavapipe (bench/attention-log.md).
 */
function sgConfig(name: AttentionKernelName, maxD: number, budget: number): SgConfig {
  const v = ATTENTION_KERNELS[name];
  const DC = MAX_D_CHOICES.find((c) => c >= Math.max(maxD, 1))! / 4;
  const R = v.R ?? Math.min(4, Math.max(1, 2 ** Math.floor(Math.log2(budget / DC))));
  // Keys per block: the lanes that share loads, a power of two no larger than the
  // adapter's smallest subgroup (so lanes 0..KB-1 of every subgroup exist).
  const KB = 2 ** Math.floor(Math.log2(Math.min(v.KB ?? 32, subgroupMin())));
  // 32 rows per workgroup (a tight causal range, enough workgroups for the cores), and never
  // fewer lanes than a key block.
  return { R, WG: Math.max(32 / R, KB), KB, DC };
}

/** Largest head size the kernels' private arrays hold. */
export const ATTENTION_MAX_HEAD_DIM = 256;
const MAX_D_CHOICES = [16, 32, 64, 128, 256];

const FLAG_CAUSAL = 1;
const FLAG_MASK = 2;
const FLAG_PADDING = 4;

interface Dims {
  B: number;
  Hq: number;
  Hkv: number;
  Tq: number;
  Tk: number;
  D: number;
  Dv: number;
}

function checkInputs(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Dims {
  const op = 'attention';
  const names: [string, Tensor][] = [['q', q], ['k', k], ['v', v]];
  for (const [name, t] of names) {
    assertDType(op, name, t.dtype, ['f32']);
    if (t.rank !== 4) throw new RangeError(`${op}: ${name} must be [B, H, T, D], got shape ${shapeStr(t.shape)}`);
  }
  const [B, Hq, Tq, D] = q.shape;
  const [Bk, Hkv, Tk, Dk] = k.shape;
  const [Bv, Hv, Tv, Dv] = v.shape;
  const all = `q ${shapeStr(q.shape)}, k ${shapeStr(k.shape)}, v ${shapeStr(v.shape)}`;
  if (Bk !== B || Bv !== B) throw new RangeError(`${op}: batch sizes differ (${all})`);
  if (Dk !== D) throw new RangeError(`${op}: q and k head sizes differ (${all})`);
  if (Hv !== Hkv) throw new RangeError(`${op}: k and v head counts differ (${all})`);
  if (Tv !== Tk) throw new RangeError(`${op}: k and v sequence lengths differ (${all})`);
  if (Hkv === 0 || Hq % Hkv !== 0) {
    throw new RangeError(`${op}: query heads (${Hq}) must be a multiple of kv heads (${Hkv}) (${all})`);
  }
  if (D > ATTENTION_MAX_HEAD_DIM || Dv > ATTENTION_MAX_HEAD_DIM) {
    throw new RangeError(`${op}: head sizes above ${ATTENTION_MAX_HEAD_DIM} are not supported (${all})`);
  }
  const full = [B, Hq, Tq, Tk];
  if (opts.mask) {
    const m = opts.mask;
    assertDType(op, 'mask', m.dtype, ['f32']);
    const ok = m.rank <= 4 && m.shape.every((d, i) => d === 1 || d === full[4 - m.rank + i]);
    if (!ok) throw new RangeError(`${op}: mask of shape ${shapeStr(m.shape)} does not broadcast to [B, Hq, Tq, Tk] = ${shapeStr(full)}`);
  }
  if (opts.keyPadding) {
    const p = opts.keyPadding;
    assertDType(op, 'keyPadding', p.dtype, ['f32', 'i32', 'u32']);
    const ok = p.rank === 2 && (p.shape[0] === B || p.shape[0] === 1) && p.shape[1] === Tk;
    if (!ok) throw new RangeError(`${op}: keyPadding has shape ${shapeStr(p.shape)}, expected [B, Tk] = ${shapeStr([B, Tk])}`);
  }
  if (opts.qOffset !== undefined && !Number.isInteger(opts.qOffset)) throw new RangeError(`${op}: qOffset must be an integer, got ${opts.qOffset}`);
  if (opts.scale !== undefined && !Number.isFinite(opts.scale)) throw new RangeError(`${op}: scale must be finite, got ${opts.scale}`);
  return { B, Hq, Hkv, Tq, Tk, D, Dv };
}

/** Strides of a broadcast view as the kernel sees it: 0 on size-1 (broadcast) dims, right-aligned. */
function alignedStrides(t: Tensor, rank: number): number[] {
  const out = new Array<number>(rank).fill(0);
  for (let i = 0; i < t.rank; i++) out[rank - t.rank + i] = t.shape[i] === 1 ? 0 : t.strides[i];
  return out;
}

/**
 * Element strides (b, h, t) of a k/v operand whose rows are dense (unit stride along the
 * head dim): size-1 dims get stride 0 so they never affect indexing or alignment checks.
 */
function rowStrides(t: Tensor): [number, number, number] {
  const s = (i: number) => (t.shape[i] === 1 ? 0 : t.strides[i]);
  return [s(0), s(1), s(2)];
}

/** True when the kernels can read t in place: each row of the head dim is dense. */
function rowDense(t: Tensor): boolean {
  return t.shape[3] <= 1 || t.strides[3] === 1;
}

/** The params shared by the forward, dQ and dK/dV kernels (layout in attention_fwd.wgsl). */
function attentionParams(
  rows: number,
  dims: Dims,
  flags: number,
  qOffset: number,
  scale: number,
  dvBase: number,
  qc: Tensor,
  kc: Tensor,
  vc: Tensor,
  mask: Tensor | undefined,
  pad: Tensor | undefined,
  kpMask = 0,
  kb = 0,
): Params {
  const ms = mask ? alignedStrides(mask, 4) : [0, 0, 0, 0];
  const ps = pad ? alignedStrides(pad, 2) : [0, 0];
  return new Params()
    .u32(rows, dims.Hq, dims.Tq, dims.Tk)
    .u32(dims.D, dims.Dv, dims.Hq / dims.Hkv, flags)
    .i32(qOffset)
    .f32(scale)
    .u32(dims.Hkv, dvBase)
    .u32(mask ? mask.offset : 0, ...ms)
    .u32(pad ? pad.offset : 0, ...ps)
    .u32(qc.offset, kc.offset, vc.offset, kpMask)
    .u32(...rowStrides(kc), ...rowStrides(vc))
    .u32(kb);
}

/**
 * Kernel variant: rows as vec4 when both head sizes (and the buffer offsets) allow it,
 * which cuts the loop trips and loads by 4 (about 4x faster on lavapipe); else scalars.
 */
function defines(dims: Dims, pad: Tensor | undefined, ...ts: Tensor[]): Record<string, string | number> {
  const need = Math.max(dims.D, dims.Dv, 1);
  const maxD = MAX_D_CHOICES.find((c) => c >= need)!;
  const kpt = pad ? pad.dtype : 'f32';
  const aligned = (t: Tensor) => t.offset % 4 === 0 && (t.rank !== 4 || rowStrides(t).every((x) => x % 4 === 0));
  if (dims.D % 4 === 0 && dims.Dv % 4 === 0 && ts.every(aligned)) {
    return { MAX_D: maxD / 4, KPT: kpt, VT: 'vec4<f32>', W: 4, DOT: 'dot(a, b)' };
  }
  return { MAX_D: maxD, KPT: kpt, VT: 'f32', W: 1, DOT: 'a * b' };
}

/**
 * Attention: softmax(scale * q k^T + bias) v for q [B, Hq, Tq, D], k [B, Hkv, Tk, D],
 * v [B, Hkv, Tk, Dv] -> [B, Hq, Tq, Dv]. Query head h reads kv head floor(h / (Hq / Hkv)).
 * A query row that sees no key (all padded / masked) gives 0 and zero gradients.
 * Gradients flow to q, k and v (not to mask or keyPadding).
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): Tensor {
  const dims = checkInputs(q, k, v, opts);
  const { B, Hq, Hkv, Tq, Tk, D, Dv } = dims;
  const scale = opts.scale ?? 1 / Math.sqrt(Math.max(D, 1));
  const qOffset = opts.qOffset ?? Tk - Tq;
  const mask = opts.mask;
  const pad = opts.keyPadding;
  const flags = (opts.causal ? FLAG_CAUSAL : 0) | (mask ? FLAG_MASK : 0) | (pad ? FLAG_PADDING : 0);
  const label = `attention q ${shapeStr(q.shape)} k ${shapeStr(k.shape)} v ${shapeStr(v.shape)}`;

  // Inputs may be views (the model passes permuted projections). The forward kernel wants q
  // dense; k and v only need dense rows (any b / h / t strides), so a KV cache can pass
  // views of its preallocated [B, Hkv, maxLen, D] buffers without a copy.
  const inPlace = (t: Tensor) => (rowDense(t) ? t.view(t.shape, t.strides, t.offset) : contiguous(t));
  const [qc, kc, vc] = noGrad(() => [contiguous(q), inPlace(k), inPlace(v)]);
  const rows = B * Hq * Tq;
  const out = empty([B, Hq, Tq, Dv]);
  const lse = empty([B, Hq, Tq]);
  const def = defines(dims, pad, qc, kc, vc);
  // Unused mask / padding slots get a read-only buffer the kernel never reads.
  const maskBuf = mask ? mask.buf : qc.buf;
  const padBuf = pad ? pad.buf : qc.buf;
  const forced = opts.kernel && opts.kernel !== 'auto';
  let kname = forced ? opts.kernel as AttentionKernelName : pickAttentionKernel();
  const blocked = attentionKernelBlocker(kname);
  if (blocked) throw new RangeError(`attention: ${blocked}`);
  // The tiled kernels need workgroup memory for their tiles: `auto` falls back to `rows`
  // on an adapter with too little for this head size.
  const W = Number(def.W);
  const tiledFwd = kname === 'tiled' ? tiledConfig(Number(def.MAX_D) * W, W, 'fwd') : null;
  const tiledBwd = kname === 'tiled' ? tiledConfig(Number(def.MAX_D) * W, W, 'bwd') : null;
  if (kname === 'tiled' && !(tiledFwd && tiledBwd)) {
    const why = `attention kernel tiled: head size ${Math.max(D, Dv)} needs more workgroup memory than this adapter's ${getEngine().ctx.limits.maxComputeWorkgroupStorageSize} bytes`;
    if (forced) throw new RangeError(why);
    kname = 'rows';
  }
  const kernel = ATTENTION_KERNELS[kname];
  const sg = kernel.shader === 'attention_fwd_sg';
  const tiled = kernel.shader === 'attention_fwd_tiled';
  /** Defines of a tiled kernel: the row variant plus the tile config. */
  const tiledDefines = (c: TiledConfig) => ({ ...def, ...c, NA: Math.ceil(Number(def.MAX_D) / c.C) });
  // Key padding is read as u32 words by the sg kernels: a nonzero f32 flag has a nonzero
  // non-sign bit.
  const kpMask = pad && pad.dtype === 'f32' ? 0x7fffffff : 0xffffffff;
  const kv4 = def.W === 4;
  if (sg) {
    const { R, WG, KB, DC } = sgConfig(kname, Math.max(D, Dv), 64);
    getEngine().dispatch({
      shader: kernel.shader,
      defines: { DC, KB, R, WG, KT: kv4 ? 'vec4<f32>' : 'f32', KV4: String(kv4) },
      params: attentionParams(rows, dims, flags, qOffset, scale, 0, qc, kc, vc, mask, pad, kpMask, KB),
      buffers: [qc.buf, kc.buf, vc.buf, maskBuf, padBuf, out.buf, lse.buf],
      workgroups: [Math.ceil((Tq * (Hq / Hkv)) / (WG * R)), B * Hkv],
      label: `${label} (${kname})`,
    });
  } else if (tiled) {
    const c = tiledFwd!;
    getEngine().dispatch({
      shader: 'attention_fwd_tiled',
      defines: tiledDefines(c),
      params: attentionParams(rows, dims, flags, qOffset, scale, 0, qc, kc, vc, mask, pad),
      buffers: [qc.buf, kc.buf, vc.buf, maskBuf, padBuf, out.buf, lse.buf],
      workgroups: [Math.ceil(Tq / c.BQ), B * Hq],
      label: `${label} (tiled)`,
    });
  } else {
    getEngine().dispatch({
      shader: 'attention_fwd',
      defines: def,
      params: attentionParams(rows, dims, flags, qOffset, scale, 0, qc, kc, vc, mask, pad),
      buffers: [qc.buf, kc.buf, vc.buf, maskBuf, padBuf, out.buf, lse.buf],
      workgroups: grid1d(rows, 64),
      label,
    });
  }

  const save = [qc, kc, vc, out, lse, ...(mask ? [mask] : []), ...(pad ? [pad] : [])];
  const y = record(
    out,
    'attention',
    [q, k, v],
    (g, saved) => {
      const [qs, ksIn, vsIn, os, ls] = saved;
      // The rows kernels index k and v densely: copy strided (cache) views first. The sg
      // and tiled kernels read them in place.
      const ks = sg || tiled || ksIn.isContiguous() ? ksIn : contiguous(ksIn);
      const vs = sg || tiled || vsIn.isContiguous() ? vsIn : contiguous(vsIn);
      const ms = mask ? saved[5] : undefined;
      const ps = pad ? saved[mask ? 6 : 5] : undefined;
      const gc = contiguous(g);
      const eng = getEngine();
      const ld = empty([rows, 2]);
      eng.dispatch({
        shader: 'attention_bwd_d',
        params: new Params().u32(rows, Dv),
        buffers: [os.buf, gc.buf, ls.buf, ld.buf],
        workgroups: grid1d(rows, 64),
        label: `${label} backward (D)`,
      });
      const mb = ms ? ms.buf : qs.buf;
      const pb = ps ? ps.buf : qs.buf;
      const dq = empty([B, Hq, Tq, D]);
      // dK and dV share one buffer (binding limit); both are returned as dense views of it.
      const kRows = B * Hkv * Tk;
      const nK = kRows * D;
      const dkv = empty([nK + kRows * Dv]);
      if (sg) {
        // dQ: a lane holds q, dO and dq per row; dK/dV: k, v, dk and dv per key, so the
        // budget is half the forward's (measured: bench/attention-log.md; D 64: R = 2,
        // D 128: R = 1, which ran 1.4x faster there than R = 2).
        const cb = sgConfig(kname, Math.max(D, Dv), 32);
        eng.dispatch({
          shader: 'attention_bwd_q_sg',
          defines: { DC: cb.DC, KB: cb.KB, R: cb.R, WG: cb.WG, KT: kv4 ? 'vec4<f32>' : 'f32', KV4: String(kv4) },
          params: attentionParams(rows, dims, flags, qOffset, scale, 0, qs, ks, vs, ms, ps, kpMask, cb.KB),
          buffers: [qs.buf, ks.buf, vs.buf, mb, pb, gc.buf, ld.buf, dq.buf],
          workgroups: [Math.ceil((Tq * (Hq / Hkv)) / (cb.WG * cb.R)), B * Hkv],
          label: `${label} backward (dq, ${kname})`,
        });
        const qv4 = D % 4 === 0 && Dv % 4 === 0 && qs.offset % 4 === 0;
        eng.dispatch({
          shader: 'attention_bwd_kv_sg',
          defines: { DC: cb.DC, KB: cb.KB, R: cb.R, WG: cb.WG, QT: qv4 ? 'vec4<f32>' : 'f32', QV4: String(qv4) },
          params: attentionParams(kRows, dims, flags, qOffset, scale, nK, qs, ks, vs, ms, ps, kpMask, cb.KB),
          buffers: [qs.buf, ks.buf, vs.buf, mb, pb, gc.buf, ld.buf, dkv.buf],
          workgroups: [Math.ceil(Tk / (cb.WG * cb.R)), B * Hkv],
          label: `${label} backward (dk, dv, ${kname})`,
        });
      } else if (tiled) {
        // dQ per block of BQ query rows over key tiles of BK; dK/dV per block of BK keys
        // over query tiles of BQ (of every head of the group).
        const c = tiledBwd!;
        eng.dispatch({
          shader: 'attention_bwd_q_tiled',
          defines: tiledDefines(c),
          params: attentionParams(rows, dims, flags, qOffset, scale, 0, qs, ks, vs, ms, ps),
          buffers: [qs.buf, ks.buf, vs.buf, mb, pb, gc.buf, ld.buf, dq.buf],
          workgroups: [Math.ceil(Tq / c.BQ), B * Hq],
          label: `${label} backward (dq, tiled)`,
        });
        eng.dispatch({
          shader: 'attention_bwd_kv_tiled',
          defines: tiledDefines(c),
          params: attentionParams(kRows, dims, flags, qOffset, scale, nK, qs, ks, vs, ms, ps),
          buffers: [qs.buf, ks.buf, vs.buf, mb, pb, gc.buf, ld.buf, dkv.buf],
          workgroups: [Math.ceil(Tk / c.BK), B * Hkv],
          label: `${label} backward (dk, dv, tiled)`,
        });
      } else {
        eng.dispatch({
          shader: 'attention_bwd_q',
          defines: def,
          params: attentionParams(rows, dims, flags, qOffset, scale, 0, qs, ks, vs, ms, ps),
          buffers: [qs.buf, ks.buf, vs.buf, mb, pb, gc.buf, ld.buf, dq.buf],
          workgroups: grid1d(rows, 64),
          label: `${label} backward (dq)`,
        });
        eng.dispatch({
          shader: 'attention_bwd_kv',
          defines: def,
          params: attentionParams(kRows, dims, flags, qOffset, scale, nK, qs, ks, vs, ms, ps),
          buffers: [qs.buf, ks.buf, vs.buf, mb, pb, gc.buf, ld.buf, dkv.buf],
          workgroups: grid1d(kRows, 64),
          label: `${label} backward (dk, dv)`,
        });
      }
      const dk = dkv.view([B, Hkv, Tk, D], undefined, 0);
      const dv = dkv.view([B, Hkv, Tk, Dv], undefined, nK);
      dkv.dispose();
      ld.dispose();
      gc.dispose();
      if (ks !== ksIn) ks.dispose();
      if (vs !== vsIn) vs.dispose();
      return [dq, dk, dv];
    },
    save,
  );
  // record() keeps its own views of what the backward needs.
  lse.dispose();
  qc.dispose();
  kc.dispose();
  vc.dispose();
  return y;
}

// Matrix multiply and linear, forward and backward side by side.
//
// matmul(a, b): a [..., M, K] (or [..., K, M] with transposeA) times b [..., K, N] (or
// [..., N, K] with transposeB) -> [..., M, N], batch dims broadcast numpy-style.
// Operands are read in place through their strides: a transpose flag only swaps which
// stride belongs to which axis, so backward (dA = g B^T, dB = A^T g) needs no transposes.
// A view whose last two dims both lack a unit stride is copied first.
//
// Kernels: each invocation keeps a register tile; only matmul_tiled uses workgroup memory.
// - shaders/matmul_sg.wgsl / matmul_sg_scalar.wgsl, for CPU adapters (lavapipe), where a
//   storage load costs per lane and element: a workgroup shares its rows, and a subgroup
//   splits the loads of A among its lanes and passes them around with subgroupShuffle.
// - shaders/matmul_vec4.wgsl / matmul_scalar.wgsl, for other adapters: 2D workgroups.
// - shaders/matmul_tiled.wgsl: 128x128 (or smaller) blocks whose panels are staged in
//   workgroup memory, the classic GPU form; the tuner picks it where it wins.
// - shaders/matmul_tiled_db.wgsl: the same with two panel buffers (one barrier per K step),
//   warp-shaped invocation tiles and clamp-friendly workgroup arrays, up to 8x16 outputs
//   per invocation (reasons in its header and bench/matmul-log.md).
// - split-K (splitk* variants) for skinny products (small M * N, long K): the sg or vec4
//   kernel computes K slices into an f32 temporary, shaders/matmul_splitk_reduce.wgsl sums
//   them (+ bias); the tuner is offered them only for such classes (splitKOffered).
// The vec4 forms (sg, vec4) need each operand's unit-stride axis to be a multiple of 4 long,
// with 4-aligned offsets and other strides; the scalar forms take any layout and f16.
// Kernel choice (`auto`): the autotuner's cached winner for the call's shape class
// (runtime/tune.ts; matmulClassKey says what a class is), else a fixed per-adapter default
// (pickKernel). Looking the cache up is synchronous and never touches the GPU.
// Measurements and the reasons behind each choice: bench/matmul-log.md.
import { Params, getEngine } from '../engine.ts';
import { Tensor, empty, shapeStr } from '../tensor.ts';
import { noGrad, record } from '../autograd.ts';
import { contiguous } from './copy.ts';
import { sumTo } from './reduce.ts';
import { assertFloat, checkF16, collapseDims, enableFor, grid1d, padTo } from './util.ts';
import { tunedKernel } from '../tune.ts';

interface Variant {
  shader: 'matmul_sg' | 'matmul_sg_scalar' | 'matmul_vec4' | 'matmul_scalar' | 'matmul_tiled' | 'matmul_tiled_db';
  TM: number;
  TN: number;
  WGX: number;
  WGY: number;
  /** K step of the panels staged in workgroup memory (matmul_tiled, matmul_tiled_db). */
  BK?: number;
  /** Invocations of one 32-wide warp along N (matmul_tiled_db only; 32 / LX along M). */
  LX?: number;
  /** Split-K: at most S slices of K, each run as its own batch entry into f32 partials, then summed (matmul_vec4 / matmul_sg only). */
  S?: number;
}

/**
 * Kernel variants by name. `auto` takes the autotuner's winner for the call's shape class
 * when runtime/tune.ts has one cached for this adapter, else a fixed choice per adapter,
 * layout and size (measurements in bench/matmul-log.md):
 * sg-*: CPU adapters with subgroups, vec4 layouts (rows shared across the SIMD lanes, see
 *   matmul_sg.wgsl); sgs-*: the same with scalar loads, for any layout and for f16;
 * vec4-*: vec4 layouts, 2D workgroups (vec4-4x8 is the default on other adapters; 8x8 has
 *   more reuse per invocation, -r64 puts 64 invocations along one row tile for skinny M);
 * scalar-4x4: any layout, any adapter;
 * tile-BMxBN-kBK: vec4 layouts, panels staged in workgroup memory (matmul_tiled.wgsl), for
 *   GPUs with real shared memory;
 * tiledb-BMxBN-TMxTN-kBK: the same double-buffered, TM x TN outputs per invocation
 *   (matmul_tiled_db.wgsl; 128 or 64 invocations where BM * BN / (TM * TN) says so).
 * splitkS-vec4-TMxTN / splitkS-sg-TMxTN: split-K for skinny products (small M * N, long
 *   K): K is cut into at most S slices of a multiple of 4, the vec4 / sg kernel computes
 *   each slice's partial product into an f32 temporary [S, batch, M, N] (one dispatch, the
 *   slice riding on workgroup z), and matmul_splitk_reduce.wgsl sums the slices in order
 *   (+ bias) into C. Offered to the tuner only for splitKClass classes.
 * The tuner may pick any variant that can run a layout, so every one is covered by
 * test/runtime/matmul.test.ts. Bump MATMUL_KERNEL_SET_VERSION when a variant changes.
 */
export const MATMUL_KERNELS = {
  'sg-32x4': { shader: 'matmul_sg', TM: 32, TN: 4, WGX: 64, WGY: 1 },
  'sg-16x4': { shader: 'matmul_sg', TM: 16, TN: 4, WGX: 64, WGY: 1 },
  'sg-8x4': { shader: 'matmul_sg', TM: 8, TN: 4, WGX: 64, WGY: 1 },
  'sgs-32x4': { shader: 'matmul_sg_scalar', TM: 32, TN: 4, WGX: 64, WGY: 1 },
  'sgs-16x4': { shader: 'matmul_sg_scalar', TM: 16, TN: 4, WGX: 64, WGY: 1 },
  'sgs-8x4': { shader: 'matmul_sg_scalar', TM: 8, TN: 4, WGX: 64, WGY: 1 },
  'vec4-4x8': { shader: 'matmul_vec4', TM: 4, TN: 8, WGX: 8, WGY: 8 },
  'vec4-8x8': { shader: 'matmul_vec4', TM: 8, TN: 8, WGX: 8, WGY: 8 },
  'vec4-4x4-r64': { shader: 'matmul_vec4', TM: 4, TN: 4, WGX: 64, WGY: 1 },
  'scalar-4x4': { shader: 'matmul_scalar', TM: 4, TN: 4, WGX: 8, WGY: 8 },
  'tile-128x128-k8': { shader: 'matmul_tiled', TM: 8, TN: 8, WGX: 16, WGY: 16, BK: 8 },
  'tile-128x128-k16': { shader: 'matmul_tiled', TM: 8, TN: 8, WGX: 16, WGY: 16, BK: 16 },
  'tile-128x64-k16': { shader: 'matmul_tiled', TM: 8, TN: 4, WGX: 16, WGY: 16, BK: 16 },
  'tile-64x64-k16': { shader: 'matmul_tiled', TM: 4, TN: 4, WGX: 16, WGY: 16, BK: 16 },
  // Double-buffered (bench/matmul-log.md, kernel set v4, says why each is here).
  'tiledb-128x128-8x8-k8': { shader: 'matmul_tiled_db', TM: 8, TN: 8, WGX: 16, WGY: 16, BK: 8, LX: 8 },
  'tiledb-128x128-8x8-k16': { shader: 'matmul_tiled_db', TM: 8, TN: 8, WGX: 16, WGY: 16, BK: 16, LX: 8 },
  'tiledb-128x128-8x16-k8': { shader: 'matmul_tiled_db', TM: 8, TN: 16, WGX: 8, WGY: 16, BK: 8, LX: 4 },
  'tiledb-128x256-8x16-k8': { shader: 'matmul_tiled_db', TM: 8, TN: 16, WGX: 16, WGY: 16, BK: 8, LX: 4 },
  'tiledb-128x64-8x8-k16': { shader: 'matmul_tiled_db', TM: 8, TN: 8, WGX: 8, WGY: 16, BK: 16, LX: 8 },
  'tiledb-64x64-8x8-k16': { shader: 'matmul_tiled_db', TM: 8, TN: 8, WGX: 8, WGY: 8, BK: 16, LX: 8 },
  'tiledb-64x64-4x4-k16': { shader: 'matmul_tiled_db', TM: 4, TN: 4, WGX: 16, WGY: 16, BK: 16, LX: 8 },
  // Split-K (kernel set v5): one pipeline per base kernel, S is a host-side choice.
  'splitk4-vec4-4x4': { shader: 'matmul_vec4', TM: 4, TN: 4, WGX: 8, WGY: 8, S: 4 },
  'splitk8-vec4-4x4': { shader: 'matmul_vec4', TM: 4, TN: 4, WGX: 8, WGY: 8, S: 8 },
  'splitk16-vec4-4x4': { shader: 'matmul_vec4', TM: 4, TN: 4, WGX: 8, WGY: 8, S: 16 },
  'splitk32-vec4-4x4': { shader: 'matmul_vec4', TM: 4, TN: 4, WGX: 8, WGY: 8, S: 32 },
  'splitk2-sg-8x4': { shader: 'matmul_sg', TM: 8, TN: 4, WGX: 64, WGY: 1, S: 2 },
  'splitk4-sg-8x4': { shader: 'matmul_sg', TM: 8, TN: 4, WGX: 64, WGY: 1, S: 4 },
  'splitk4-sg-16x4': { shader: 'matmul_sg', TM: 16, TN: 4, WGX: 64, WGY: 1, S: 4 },
} as const satisfies Record<string, Variant>;

/**
 * Version of the kernel set: part of the tuning cache's adapter key, so winners measured
 * with other kernels are not reused. Bump it whenever a variant or a matmul shader changes.
 */
export const MATMUL_KERNEL_SET_VERSION = 5;

const isVec4 = (v: Variant) => v.shader === 'matmul_sg' || v.shader === 'matmul_vec4' || v.shader === 'matmul_tiled' || v.shader === 'matmul_tiled_db';
const needsSubgroups = (v: Variant) => v.shader === 'matmul_sg' || v.shader === 'matmul_sg_scalar';

export type MatmulKernelName = keyof typeof MATMUL_KERNELS;
export type MatmulKernel = 'auto' | MatmulKernelName;

export interface MatmulOptions {
  transposeA?: boolean;
  transposeB?: boolean;
  /** Forces a kernel variant (tests and benchmarks); throws when it cannot run the layout. */
  kernel?: MatmulKernel;
}

/** One operand as the kernel sees it: a [rows, cols] matrix per batch, through strides. */
interface Operand {
  t: Tensor;
  rows: number;
  cols: number;
  sRow: number;
  sCol: number;
}

/** Reads a's logical [M, K] (or b's [K, N]) from the stored last two dims. */
function operand(t: Tensor, transposed: boolean): Operand {
  const r = t.rank;
  const [d0, d1, s0, s1] = [t.shape[r - 2], t.shape[r - 1], t.strides[r - 2], t.strides[r - 1]];
  // A size-1 dim's stride is irrelevant: 0 keeps the alignment checks simple.
  const o = transposed
    ? { t, rows: d1, cols: d0, sRow: s1, sCol: s0 }
    : { t, rows: d0, cols: d1, sRow: s0, sCol: s1 };
  if (o.rows === 1) o.sRow = 0;
  if (o.cols === 1) o.sCol = 0;
  return o;
}

/** True when one of the two matrix dims has unit stride (a size-1 dim counts). */
function hasUnitAxis(o: Operand): boolean {
  return o.rows === 1 || o.cols === 1 || o.sRow === 1 || o.sCol === 1;
}

/**
 * A [prod(batch) * R, C] view of t [..., R, C] when its batch dims are laid out as a
 * continuation of R (so the batch folds into the rows), else null.
 */
function foldRows(t: Tensor): Tensor | null {
  const r = t.rank;
  const c = collapseDims(t.shape.slice(0, r - 1), [t.strides.slice(0, r - 1)]);
  if (c.shape.length > 1) return null;
  const rows = t.shape.slice(0, r - 1).reduce((x, y) => x * y, 1);
  return t.view([rows, t.shape[r - 1]], [c.strides[0][0] ?? 0, t.strides[r - 1]], t.offset);
}

function batchShapeOf(op: string, a: Tensor, b: Tensor, desc: string): number[] {
  const ab = a.shape.slice(0, -2);
  const bb = b.shape.slice(0, -2);
  const r = Math.max(ab.length, bb.length);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const da = ab[ab.length - r + i] ?? 1;
    const db = bb[bb.length - r + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) throw new RangeError(`${op}: batch dims of ${desc} cannot be broadcast together`);
    out.push(da === 1 ? db : da);
  }
  return out;
}

/** Per-batch strides of t's leading dims seen through a broadcast to `batch` (0 where broadcast). */
function batchStrides(t: Tensor, batch: readonly number[]): number[] {
  const nb = t.rank - 2;
  return batch.map((d, j) => {
    const i = j - (batch.length - nb);
    return i < 0 || t.shape[i] === 1 ? 0 : t.strides[i];
  });
}

const mult4 = (...v: number[]) => v.every((x) => x % 4 === 0);

/**
 * Why the vec4 kernel cannot run this layout, or null when it can. A is K-major when its
 * unit stride is along K (else M-major), B is K-major when its unit stride is along K.
 */
function vec4Blocker(A: Operand, B: Operand, aBatch: number[], bBatch: number[], aKMajor: boolean, bKMajor: boolean): string | null {
  if (A.t.dtype !== 'f32') return `dtype ${A.t.dtype} (vec4 kernel is f32 only)`;
  const [M, K, N] = [A.rows, A.cols, B.cols];
  if (aKMajor ? !mult4(K, A.sRow) : !mult4(M, A.sCol)) return `A's unit-stride axis (${aKMajor ? 'K' : 'M'}) or its other stride is not a multiple of 4`;
  if (bKMajor ? !mult4(K, B.sCol) : !mult4(N, B.sRow)) return `B's unit-stride axis (${bKMajor ? 'K' : 'N'}) or its other stride is not a multiple of 4`;
  if (!mult4(A.t.offset, B.t.offset, ...aBatch, ...bBatch)) return 'an offset or batch stride is not a multiple of 4';
  return null;
}

/** How a call's operands reach the kernel: layouts, sizes, batch strides (see planMatmul). */
interface Plan {
  /** The operands as read (a copy or a folded view where needed; see temps). */
  a: Tensor;
  b: Tensor;
  A: Operand;
  B: Operand;
  /** Rows of the kernel's problem (M, or batch * M when the batch folds into the rows). */
  Mk: number;
  N: number;
  K: number;
  outShape: number[];
  /** Collapsed batch shape the kernel loops over, and each operand's strides along it. */
  zShape: number[];
  aBatch: number[];
  bBatch: number[];
  aKMajor: boolean;
  bKMajor: boolean;
  /** Why the vec4 kernels cannot run this layout, or null when they can. */
  blocker: string | null;
  cls: MatmulClass;
  /** Views and copies made for the kernel: dispose after dispatch. */
  temps: Tensor[];
}

/**
 * What the autotuner keys a winner on: dtype, layout (A then B: 'n' when A is K-major /
 * B is N-major, 't' otherwise), whether the vec4 kernels can read it, the kernel's
 * problem size and the batch count (after folding).
 */
export interface MatmulClass {
  dtype: 'f32' | 'f16';
  layout: 'nn' | 'nt' | 'tn' | 'tt';
  vec4: boolean;
  M: number;
  N: number;
  K: number;
  batch: number;
}

const pow2Bucket = (n: number) => 2 ** Math.ceil(Math.log2(Math.max(n, 1)));

/** The tuning cache key of a class: M bucketed as 1, 2-8, 9-64, 65+; N and K by power of two. */
export function matmulClassKey(c: MatmulClass): string {
  const m = c.M <= 1 ? '1' : c.M <= 8 ? '2-8' : c.M <= 64 ? '9-64' : '65+';
  return `${c.dtype} ${c.layout} ${c.vec4 ? 'vec4' : 'any'} M${m} N${pow2Bucket(c.N)} K${pow2Bucket(c.K)}${c.batch > 1 ? ' batched' : ''}`;
}

/**
 * Validated operands A [..., M, K], B [..., K, N] (transposes applied through strides) as
 * the kernel will read them. Returns null when the output is empty (nothing to run).
 */
function planMatmul(a: Tensor, b: Tensor, tA: boolean, tB: boolean, label: string): Plan | null {
  const temps: Tensor[] = [];
  let A = operand(a, tA);
  let B = operand(b, tB);
  const [M, K, N] = [A.rows, A.cols, B.cols];
  const batch = batchShapeOf(label, a, b, `${shapeStr(a.shape)} and ${shapeStr(b.shape)}`);
  const outShape = [...batch, M, N];
  const nBatch = batch.reduce((x, z) => x * z, 1);
  if (M === 0 || N === 0 || nBatch === 0) return null;

  // Neither matrix dim has unit stride: copy (outside autograd; the caller records).
  if (!hasUnitAxis(A)) (a = noGrad(() => contiguous(a)), temps.push(a), (A = operand(a, tA)));
  if (!hasUnitAxis(B)) (b = noGrad(() => contiguous(b)), temps.push(b), (B = operand(b, tB)));

  // b shared by the whole batch and a's batch laid out along M: one [batch*M, K] matrix.
  let kb = batch;
  if (!tA && a.rank > 2 && b.shape.slice(0, -2).every((d) => d === 1)) {
    const f = foldRows(a);
    if (f) (temps.push(f), (a = f), (A = operand(f, false)), (kb = []));
  }
  const Mk = A.rows;

  const c = collapseDims(kb, [batchStrides(a, kb), batchStrides(b, kb)]);
  const [aBatch, bBatch] = c.strides as [number[], number[]];
  // Each operand reads vec4s along its unit-stride axis: K or M for A, K or N for B. A
  // size-1 dim counts as unit-stride, so an operand may offer both; take a pair the vec4
  // kernel can run when there is one.
  const aModes = [A.cols === 1 || A.sCol === 1, A.rows === 1 || A.sRow === 1];
  const bModes = [B.rows === 1 || B.sRow === 1, B.cols === 1 || B.sCol === 1];
  const pairs: [boolean, boolean][] = [];
  for (const aK of [true, false]) for (const bK of [true, false]) if (aModes[aK ? 0 : 1] && bModes[bK ? 0 : 1]) pairs.push([aK, bK]);
  const tries = pairs.map(([aK, bK]) => ({ aK, bK, blocker: vec4Blocker(A, B, aBatch, bBatch, aK, bK) }));
  const { aK: aKMajor, bK: bKMajor, blocker } = tries.find((x) => !x.blocker) ?? tries[0];
  // The unit stride made explicit (a size-1 dim had its stride zeroed).
  if (aKMajor) A.sCol = 1;
  else A.sRow = 1;
  if (bKMajor) B.sRow = 1;
  else B.sCol = 1;
  const cls: MatmulClass = {
    dtype: a.dtype as MatmulClass['dtype'],
    layout: `${aKMajor ? 'n' : 't'}${bKMajor ? 't' : 'n'}` as MatmulClass['layout'],
    vec4: blocker === null,
    M: Mk,
    N,
    K,
    batch: c.shape.reduce((x, z) => x * z, 1),
  };
  return { a, b, A, B, Mk, N, K, outShape, zShape: c.shape, aBatch, bBatch, aKMajor, bKMajor, blocker, cls, temps };
}

/**
 * The shape class a matmul(a, b, opts) call falls in (what the tuning cache is keyed on),
 * or null for an empty output. Checks nothing beyond what the call itself would.
 */
export function matmulClassOf(a: Tensor, b: Tensor, opts: { transposeA?: boolean; transposeB?: boolean } = {}): MatmulClass | null {
  const p = planMatmul(a, b, !!opts.transposeA, !!opts.transposeB, 'matmulClassOf');
  for (const t of p?.temps ?? []) t.dispose();
  return p ? p.cls : null;
}

/**
 * What a variant asks of the adapter: workgroup memory in bytes, invocations per workgroup
 * and the workgroup's x and y sizes as its shader declares them.
 */
function variantNeeds(v: Variant): { bytes: number; invocations: number; x: number; y: number } {
  const invocations = v.WGX * v.WGY;
  const panels = (v.BK ?? 0) * (v.TM * v.WGY + v.TN * v.WGX) * 4;
  if (v.shader === 'matmul_tiled') return { bytes: panels, invocations, x: v.WGX, y: v.WGY };
  // One-dimensional workgroups, two panel buffers.
  if (v.shader === 'matmul_tiled_db') return { bytes: 2 * panels, invocations, x: invocations, y: 1 };
  return { bytes: 0, invocations, x: v.WGX, y: v.WGY };
}

/** Why the adapter's limits rule a variant out (refused here rather than at dispatch), or null. */
function limitsBlocker(name: MatmulKernelName): string | null {
  const need = variantNeeds(MATMUL_KERNELS[name]);
  const lim = getEngine().ctx.limits;
  if (need.bytes > lim.maxComputeWorkgroupStorageSize) {
    return `kernel ${name} needs ${need.bytes} bytes of workgroup memory, the adapter allows ${lim.maxComputeWorkgroupStorageSize}`;
  }
  if (need.invocations > lim.maxComputeInvocationsPerWorkgroup || need.x > lim.maxComputeWorkgroupSizeX || need.y > lim.maxComputeWorkgroupSizeY) {
    return `kernel ${name} needs workgroups of ${need.x}x${need.y} invocations, the adapter allows ${lim.maxComputeWorkgroupSizeX}x${lim.maxComputeWorkgroupSizeY} and ${lim.maxComputeInvocationsPerWorkgroup} in all`;
  }
  return null;
}

/** Why kernel `name` cannot run a layout (blocker: why vec4 loads cannot), or null when it can. */
function kernelBlocker(name: MatmulKernelName, blocker: string | null): string | null {
  const v: Variant = MATMUL_KERNELS[name];
  if (isVec4(v) && blocker) return `kernel ${name} cannot run this layout: ${blocker}`;
  if (needsSubgroups(v) && !subgroupsUsable()) return `kernel ${name} needs subgroups of at least 8 invocations, which this adapter lacks`;
  return limitsBlocker(name);
}

/** Which kernel a matmul call ran and why: the debug hook behind lastMatmulChoice(). */
export interface MatmulChoice {
  kernel: MatmulKernelName;
  /** forced: opts.kernel; tuned: the tuning cache's winner; default: the fixed per-adapter choice. */
  source: 'forced' | 'tuned' | 'default';
  classKey: string;
  label: string;
}

let lastChoice: MatmulChoice | null = null;

/** The kernel the latest matmul/linear dispatch used (tests, benchmarks, debugging). */
export function lastMatmulChoice(): MatmulChoice | null {
  return lastChoice;
}

/**
 * Runs C = A @ B (+ bias) for operands already validated: A [..., M, K], B [..., K, N]
 * as logical matrices (transposes applied through strides). Returns [...batch, M, N].
 */
function matmulKernel(a0: Tensor, b0: Tensor, tA: boolean, tB: boolean, bias: Tensor | null, kernel: MatmulKernel, label: string): Tensor {
  const p = planMatmul(a0, b0, tA, tB, label);
  if (!p) {
    const batch = batchShapeOf(label, a0, b0, `${shapeStr(a0.shape)} and ${shapeStr(b0.shape)}`);
    return empty([...batch, operand(a0, tA).rows, operand(b0, tB).cols], a0.dtype);
  }
  try {
    const { a, b, A, B, Mk, N, K } = p;
    const key = matmulClassKey(p.cls);
    let name: MatmulKernelName;
    let source: MatmulChoice['source'];
    if (kernel === 'auto') {
      // The tuner's winner when it has one this call can run; the fixed choice otherwise.
      const tuned = tunedKernel(key, p.cls);
      if (tuned && Object.hasOwn(MATMUL_KERNELS, tuned) && !kernelBlocker(tuned as MatmulKernelName, p.blocker)) {
        name = tuned as MatmulKernelName;
        source = 'tuned';
      } else {
        name = pickKernel(Mk, p.blocker === null);
        source = 'default';
      }
    } else {
      name = kernel;
      source = 'forced';
      const why = kernelBlocker(name, p.blocker);
      if (why) throw new Error(`${label}: ${why}`);
    }
    const v: Variant = MATMUL_KERNELS[name];
    lastChoice = { kernel: name, source, classKey: key, label };

    const defines: Record<string, string | number> = { TM: v.TM, TN: v.TN, WGX: v.WGX, WGY: v.WGY };
    if (isVec4(v)) Object.assign(defines, { A_KMAJOR: String(p.aKMajor), B_KMAJOR: String(p.bKMajor) });
    if (v.BK) defines.BK = v.BK;
    if (v.LX) defines.LX = v.LX;
    else Object.assign(defines, { T: a.dtype, ENABLE: enableFor(a.dtype) });

    const y = empty(p.outShape, a.dtype);
    const eng = getEngine();
    const maxZ = eng.ctx.limits.maxComputeWorkgroupsPerDimension;
    const groups: [number, number] = [Math.ceil(N / (v.TN * v.WGX)), Math.ceil(Mk / (v.TM * v.WGY))];
    const zTotal = p.cls.batch;
    const [slices, kChunk] = splitK(K, v.S ?? 1);
    const biasStride = bias && bias.shape[0] > 1 ? bias.strides[0] : 0;
    // Split: the first pass writes per-slice partials (no bias) into a pooled temporary.
    const part = slices > 1 ? empty([slices * zTotal * Mk * N], 'f32') : null;
    try {
      const dst = part ?? y;
      const zAll = slices * zTotal;
      for (let base = 0; base < zAll; base += maxZ) {
        const prm = new Params()
          .u32(Mk, N, K, p.zShape.length)
          .u32(a.offset, b.offset, bias && !part ? 1 : 0, base)
          .u32(A.sRow, A.sCol, B.sRow, B.sCol)
          .u32(bias?.offset ?? 0, biasStride, kChunk, zTotal)
          .u32(...padTo(p.zShape), ...padTo(p.aBatch, 0), ...padTo(p.bBatch, 0));
        eng.dispatch({
          shader: v.shader,
          defines,
          params: prm,
          buffers: [a.buf, b.buf, (bias ?? a).buf, dst.buf],
          workgroups: [groups[0], groups[1], Math.min(maxZ, zAll - base)],
          label: `${label} ${shapeStr(p.outShape)} (${name}${part ? `, ${slices} K slices of ${kChunk}` : ''})`,
        });
      }
      if (part) {
        const n = zTotal * Mk * N;
        eng.dispatch({
          shader: 'matmul_splitk_reduce',
          params: new Params().u32(n, slices, N, bias ? 1 : 0).u32(bias?.offset ?? 0, biasStride, 0, 0),
          buffers: [part.buf, (bias ?? part).buf, y.buf],
          workgroups: grid1d(n),
          label: `${label} ${shapeStr(p.outShape)} (${name}: sum of ${slices} K slices)`,
        });
      }
    } finally {
      // Back to the pool once recorded: later users of the buffer are ordered after these passes.
      part?.dispose();
    }
    return y;
  } finally {
    for (const t of p.temps) t.dispose();
  }
}

/**
 * How a split-K variant of at most S slices cuts K: [slices, slice length]. Slices are a
 * multiple of 4 long (the vec4 kernels read K in quads from the slice start); the last one
 * may be shorter, and fewer than S are used when K is short. [1, K] means no split.
 */
export function splitK(K: number, S: number): [number, number] {
  if (S <= 1 || K <= 4) return [1, K];
  const chunk = 4 * Math.ceil(K / S / 4);
  return [Math.ceil(K / chunk), chunk];
}

/**
 * Whether the tuner offers split-K variants of S slices for a class: skinny products
 * (M * N * batch <= 64K outputs) with a long K (>= 256, and >= 64 per slice), where the
 * unsplit kernels have too few workgroups to fill the device and each invocation walks all
 * of K. Elsewhere they still run correctly when forced, but only add a pass.
 */
export function splitKOffered(c: MatmulClass, S: number): boolean {
  return c.vec4 && c.K >= 256 && c.K >= 64 * S && c.M * c.N * c.batch <= 65536;
}

/** True when the adapter has subgroups of at least 8 invocations (matmul_sg.wgsl). */
function subgroupsUsable(): boolean {
  const ctx = getEngine().ctx;
  const min = (ctx.adapter.info as unknown as { subgroupMinSize?: number }).subgroupMinSize ?? 0;
  return ctx.hasSubgroups && min >= 8;
}

/**
 * The variants that can run a class on this adapter (what the tuner times), the fixed
 * default first.
 */
export function matmulCandidates(c: MatmulClass): MatmulKernelName[] {
  const blocker = c.vec4 ? null : 'not vec4-aligned';
  const all = (Object.keys(MATMUL_KERNELS) as MatmulKernelName[]).filter((n) => {
    const S = (MATMUL_KERNELS[n] as Variant).S;
    return !kernelBlocker(n, blocker) && (!S || splitKOffered(c, S));
  });
  const def = pickKernel(c.M, c.vec4);
  return [def, ...all.filter((n) => n !== def)];
}

/** The fixed kernel for an adapter, problem size and layout (measured: bench/matmul-log.md). */
export function pickKernel(M: number, vec4: boolean): MatmulKernelName {
  // CPU adapters: loads cost per lane and element, so share A's rows across the subgroup; a
  // 32-row tile wastes work when M is small.
  if (getEngine().ctx.isSoftware && subgroupsUsable()) {
    if (vec4) return M <= 8 ? 'sg-8x4' : 'sg-32x4';
    return M <= 8 ? 'sgs-8x4' : 'sgs-32x4';
  }
  // Other adapters: 4x8 per invocation (a teammate measured this no-shared-memory form at
  // about 30 TFLOP/s on an H200; not re-measured here).
  return vec4 ? 'vec4-4x8' : 'scalar-4x4';
}

function checkOperands(op: string, a: Tensor, b: Tensor, aName: string, bName: string): void {
  assertFloat(op, aName, a);
  assertFloat(op, bName, b);
  if (a.dtype !== b.dtype) throw new TypeError(`${op}: dtypes differ (${aName} ${a.dtype}, ${bName} ${b.dtype})`);
  checkF16(op, a, b);
}

/** a @ b with numpy batch broadcasting; transposes are read in place. */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const tA = !!opts.transposeA;
  const tB = !!opts.transposeB;
  checkOperands('matmul', a, b, 'a', 'b');
  const desc = `${shapeStr(a.shape)}${tA ? '^T' : ''} and ${shapeStr(b.shape)}${tB ? '^T' : ''}`;
  if (a.rank < 2 || b.rank < 2) {
    throw new RangeError(`matmul: operands need at least 2 dims, got ${desc}; reshape a vector to [1, K] or [K, 1]`);
  }
  const K = tA ? a.shape[a.rank - 2] : a.shape[a.rank - 1];
  const Kb = tB ? b.shape[b.rank - 1] : b.shape[b.rank - 2];
  if (K !== Kb) throw new RangeError(`matmul: inner dimensions differ (${K} vs ${Kb}) for ${desc}`);
  const y = matmulKernel(a, b, tA, tB, null, opts.kernel ?? 'auto', 'matmul');
  const need: [boolean, boolean] = [a.requiresGrad, b.requiresGrad];
  return record(y, 'matmul', [a, b], (g, [as, bs]) => matmulGrads(g, as, bs, tA, tB, need), [a, b]);
}

/**
 * Gradients of y = A' @ B' (A' = tA ? a^T : a, B' likewise) for stored a and b:
 * dA' = g B'^T, dB' = A'^T g, transposed back when the operand was stored transposed,
 * then summed over the batch dims the operand was broadcast along.
 */
function matmulGrads(g: Tensor, a: Tensor, b: Tensor, tA: boolean, tB: boolean, [needA, needB]: [boolean, boolean]): [Tensor | null, Tensor | null] {
  let da: Tensor | null = null;
  let db: Tensor | null = null;
  if (needA) {
    const full = tA ? matmul(b, g, { transposeA: tB, transposeB: true }) : matmul(g, b, { transposeB: !tB });
    da = sumTo(full, a.shape);
    full.dispose();
  }
  if (needB) {
    // b shared across the batch: fold the batch into the contracted dim (no [batch, K, N] temp).
    const bShared = b.shape.slice(0, -2).every((d) => d === 1);
    const aFull = a.rank === g.rank && a.shape.slice(0, -2).every((d, i) => d === g.shape[i]);
    const a2 = bShared && aFull && !tA && g.rank > 2 ? foldRows(a) : null;
    const g2 = a2 ? foldRows(g) : null;
    if (a2 && g2) {
      const d2 = tB ? matmul(g2, a2, { transposeA: true }) : matmul(a2, g2, { transposeA: true });
      db = d2.view(b.shape);
      d2.dispose();
    } else {
      const full = tB ? matmul(g, a, { transposeA: true, transposeB: tA }) : matmul(a, g, { transposeA: !tA });
      db = sumTo(full, b.shape);
      full.dispose();
    }
    a2?.dispose();
    g2?.dispose();
  }
  return [da, db];
}

/**
 * x [..., in] @ weight^T (weight [out, in]) + bias [out]; the bias add is fused into the
 * kernel. `opts.kernel` forces a kernel variant (tests, benchmarks).
 */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null, opts: { kernel?: MatmulKernel } = {}): Tensor {
  checkOperands('linear', x, weight, 'x', 'weight');
  if (weight.rank !== 2) throw new RangeError(`linear: weight must be [out, in], got ${shapeStr(weight.shape)}`);
  const [out, inF] = weight.shape;
  if (x.rank < 1 || x.shape[x.rank - 1] !== inF) {
    throw new RangeError(`linear: x ${shapeStr(x.shape)} does not end in weight's in-features (weight ${shapeStr(weight.shape)})`);
  }
  if (bias) {
    if (bias.dtype !== x.dtype) throw new TypeError(`linear: bias has dtype ${bias.dtype}, x has ${x.dtype}`);
    if (bias.rank !== 1 || bias.shape[0] !== out) throw new RangeError(`linear: bias has shape ${shapeStr(bias.shape)}, expected [${out}] for weight ${shapeStr(weight.shape)}`);
  }
  // A vector input runs as one row.
  const x2 = x.rank === 1 ? x.view([1, inF], [0, x.strides[0]]) : x;
  const y2 = matmulKernel(x2, weight, false, true, bias ?? null, opts.kernel ?? 'auto', 'linear');
  let y = y2;
  if (x2 !== x) {
    y = y2.view([out]);
    y2.dispose();
    x2.dispose();
  }
  const inputs = bias ? [x, weight, bias] : [x, weight];
  const need: [boolean, boolean] = [x.requiresGrad, weight.requiresGrad];
  const needBias = !!bias?.requiresGrad;
  return record(
    y,
    'linear',
    inputs,
    (g, [xs, ws]) => {
      // The rules of matmul(x, weight^T); a vector x (and its g) run as one row.
      const xv = xs.rank === 1 ? xs.view([1, inF], [0, xs.strides[0]]) : xs;
      const gv = g.rank === 1 ? g.view([1, out], [0, g.strides[0]]) : g;
      let [dx, dw] = matmulGrads(gv, xv, ws, false, true, need);
      if (dx && xv !== xs) {
        const t = dx.view(xs.shape);
        dx.dispose();
        dx = t;
      }
      if (xv !== xs) xv.dispose();
      if (gv !== g) gv.dispose();
      return [dx, dw, needBias ? sumTo(g, [out]) : null];
    },
    [x, weight],
  );
}

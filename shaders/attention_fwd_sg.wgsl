// Fused attention forward for CPU adapters with subgroups (lavapipe): the lanes of a
// subgroup share every key / value load.
//   O = softmax(scale * Q K^T + bias) V, online softmax over blocks of KB keys.
// Why this shape: lavapipe runs a subgroup as the lanes of one SIMD vector and loads a
// storage buffer lane by lane (a branch per lane and element), so loads set the speed. The
// one-row-per-invocation kernel (attention_fwd.wgsl) has every lane load the same K and V
// rows. Here all invocations of a workgroup work on query rows of one (batch, kv head), so
// they all need the same keys: for a block of KB keys, lane l loads the K and V rows of key
// j0 + l % KB only, and subgroupShuffle (a register permute there) hands row c to every
// lane. Loads per key and query row drop by KB * R. Each lane also keeps R query rows, so
// a shuffled value serves R rows. Scores of a block are kept in registers, so the running
// max and the rescale of the accumulator happen once per block, not once per key.
// Needs subgroups of at least KB lanes (the host passes the adapter's minimum size or less).
// Bindings: 0 params, 1 Q (f32, [B, Hq, Tq, D] contiguous from its offset), 2 K, 3 V (KT:
//   vec4<f32> when D, Dv, offsets and strides are multiples of 4, else f32; dense rows, any
//   b / h / t strides), 4 MASK (f32 additive, strided, broadcast via stride 0), 5 KP (key
//   padding read as u32 words; a key is padded when (word & KP bit mask) == 0, so one kernel
//   reads f32, i32 and u32 flags), 6 O (f32, [B, Hq, Tq, Dv], out), 7 LSE ([B, Hq, Tq], out).
//   Unused MASK / KP slots are bound to any read-only buffer and never read.
// Params: the attention_fwd.wgsl layout (0 rows, 1 Hq, 2 Tq, 3 Tk, 4 D, 5 Dv, 6 group,
//   7 flags, 8 qOffset, 9 scale, 10 Hkv, 12..16 mask, 17..19 KP, 20..22 Q/K/V offsets,
//   24..29 K/V strides), plus 23 = KP bit mask (0x7fffffff for f32 flags, ~0 for integers),
//   30 = KB (the key-loop bound, from params so that Mesa keeps the loop rolled).
// Defines: DC (vec4 chunks held per row, >= ceil(max(D, Dv) / 4)), KB (keys per block =
//   lanes sharing loads, a power of two <= the subgroup size), R (query rows per
//   invocation), WG (invocations per workgroup), KT (K / V element type), KV4 (true when KT
//   is vec4<f32>).
// Workgroup: WG x 1; workgroup (x, y) takes kv head y = b * Hkv + kvh and the rows
// x * WG * R .. + WG * R - 1 of that head's G * Tq query rows (row n = g * Tq + i is query i
// of head kvh * G + g); invocation `lid` holds rows base + u * WG + lid, u < R, clamped to the
// last row (a clamped lane computes and stores exactly the values of that row). Every lane
// runs the same key loop (to the last key any row of the workgroup may see); keys a row
// may not see get weight 0. A row with no visible key gets O = 0 and LSE = 0.
enable subgroups;
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 8>;
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> K: array<{{KT}}>;
@group(0) @binding(3) var<storage, read> V: array<{{KT}}>;
@group(0) @binding(4) var<storage, read> MASK: array<f32>;
@group(0) @binding(5) var<storage, read> KP: array<u32>;
@group(0) @binding(6) var<storage, read_write> O: array<f32>;
@group(0) @binding(7) var<storage, read_write> LSE: array<f32>;

const DC: u32 = {{DC}}u;
const KB: u32 = {{KB}}u;
const R: u32 = {{R}}u;
const WG: u32 = {{WG}}u;
const KV4: bool = {{KV4}};
const MASKED: f32 = -3.0e38;
// A row of DC vec4s is held as NCH chunks of CH: every loop runs at most 8 trips, which
// Mesa's NIR unrolls (a 64-trip loop stayed rolled and put the rows in scratch memory).
const CH: u32 = min(DC, 8u);
const NCH: u32 = DC / CH;

alias Row = array<array<vec4<f32>, CH>, NCH>;

//#include "lib/params.wgsl"

// Chunk c (elements 4c..4c+3) of the K row starting at element `base`, n elements long.
// Chunks past the row repeat in-row values (finite; they only ever meet zero query
// components, or land in accumulator slots that are never stored).
fn ldK(base: u32, c: u32, n: u32) -> vec4<f32> {
  if (KV4) { return vec4<f32>(K[base / 4u + min(c, n / 4u - 1u)]); }
  let e = base + 4u * c;
  let last = base + n - 1u;
  return vec4<f32>(vec4<f32>(K[min(e, last)]).x, vec4<f32>(K[min(e + 1u, last)]).x,
                   vec4<f32>(K[min(e + 2u, last)]).x, vec4<f32>(K[min(e + 3u, last)]).x);
}

fn ldV(base: u32, c: u32, n: u32) -> vec4<f32> {
  if (KV4) { return vec4<f32>(V[base / 4u + min(c, n / 4u - 1u)]); }
  let e = base + 4u * c;
  let last = base + n - 1u;
  return vec4<f32>(vec4<f32>(V[min(e, last)]).x, vec4<f32>(V[min(e + 1u, last)]).x,
                   vec4<f32>(V[min(e + 2u, last)]).x, vec4<f32>(V[min(e + 3u, last)]).x);
}

// Query row n (of this kv head) -> (global row index, head, position i).
struct RowId { r: u32, h: u32, i: u32 }

fn rowId(b: u32, kvh: u32, n: u32) -> RowId {
  let G = pu(6u);
  let Tq = pu(2u);
  let h = kvh * G + n / Tq;
  let i = n % Tq;
  return RowId((b * pu(1u) + h) * Tq + i, h, i);
}

@compute @workgroup_size(WG, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(subgroup_invocation_id) sgi: u32) {
  let Tq = pu(2u);
  let Tk = pu(3u);
  let D = pu(4u);
  let Dv = pu(5u);
  let flags = pu(7u);
  let qOffset = bitcast<i32>(pu(8u));
  let scale = pf(9u);
  let Hkv = pu(10u);
  let kvh = wg.y % Hkv;
  let b = wg.y / Hkv;
  let nRows = pu(6u) * Tq;
  let base = wg.x * WG * R;
  let kRow0 = pu(21u) + b * pu(24u) + kvh * pu(25u);
  let vRow0 = pu(22u) + b * pu(27u) + kvh * pu(28u);

  // The workgroup's key range: causal rows see keys up to qOffset + i; take the largest i
  // among its rows (uniform: from the workgroup id and params only).
  var jEnd = Tk;
  if ((flags & 1u) != 0u) {
    let last = min(base + WG * R, nRows) - 1u;
    var iMax = last % Tq;
    if (base / Tq != last / Tq) { iMax = Tq - 1u; }
    jEnd = u32(clamp(qOffset + i32(iMax) + 1, 0, i32(Tk)));
  }

  var ids: array<RowId, R>;
  var q: array<Row, R>;
  var acc: array<Row, R>;
  var m: array<f32, R>;
  var l: array<f32, R>;
  for (var u = 0u; u < R; u++) {
    ids[u] = rowId(b, kvh, min(base + u * WG + lid.x, nRows - 1u));
    // The query, pre-scaled, zero past D (so the padded chunks of K add nothing).
    var qs: array<f32, 4u * DC>;
    for (var d = 0u; d < 4u * DC; d++) { qs[d] = 0.0; }
    let qb = pu(20u) + ids[u].r * D;
    for (var d = 0u; d < D; d++) { qs[d] = Q[qb + d] * scale; }
    for (var h = 0u; h < NCH; h++) {
      for (var e = 0u; e < CH; e++) {
        let c = 4u * (h * CH + e);
        q[u][h][e] = vec4<f32>(qs[c], qs[c + 1u], qs[c + 2u], qs[c + 3u]);
        acc[u][h][e] = vec4<f32>(0.0);
      }
    }
    m[u] = MASKED;
    l[u] = 0.0;
  }

  let lane = sgi % KB;
  // The key loops run to KB read from params, so Mesa keeps them rolled whatever the body
  // size (the shuffle lane is then a register, still one permute): unrolling them would
  // multiply the code and the compile time by KB.
  let kbN = pu(30u);
  // This lane's K and V rows, loaded by one rolled loop over the chunks the head sizes
  // need (one copy of the per-lane load code instead of DC; compile time grew with it).
  // Chunks past them stay zero.
  let nK4 = (D + 3u) / 4u;
  let nV4 = (Dv + 3u) / 4u;
  var kr: array<vec4<f32>, DC>;
  var vr: array<vec4<f32>, DC>;
  for (var d = 0u; d < DC; d++) {
    kr[d] = vec4<f32>(0.0);
    vr[d] = vec4<f32>(0.0);
  }
  let kpMask = pu(23u);
  for (var j0 = 0u; j0 < jEnd; j0 += KB) {
    // This lane's key of the block (clamped: keys past Tk get weight 0 below).
    let jl = min(j0 + lane, Tk - 1u);
    var kpOk = 1u;
    if ((flags & 4u) != 0u) { kpOk = KP[pu(17u) + b * pu(18u) + jl * pu(19u)] & kpMask; }

    // Scores s[u][c] of row u against key j0 + c: the lane loads its key's K row, the
    // subgroup passes row c around chunk by chunk. Key-outer order keeps the R running dot
    // products in registers (the rows themselves spill; reading a spilled value is cheap,
    // a spilled accumulator costs a store per update).
    let kb = kRow0 + jl * pu(26u);
    for (var d = 0u; d < nK4; d++) { kr[d] = ldK(kb, d, D); }
    var s: array<array<f32, KB>, R>;
    for (var c = 0u; c < kbN; c++) {
      // (Explicitly zeroed: a declaration without initializer inside a loop kept the last
      // iteration's values on Dawn / lavapipe, against WGSL's zero-initialization.)
      var dots: array<vec4<f32>, R>;
      for (var u = 0u; u < R; u++) { dots[u] = vec4<f32>(0.0); }
      for (var h = 0u; h < NCH; h++) {
        for (var e = 0u; e < CH; e++) {
          let kc = subgroupShuffle(kr[h * CH + e], c);
          for (var u = 0u; u < R; u++) { dots[u] = fma(q[u][h][e], kc, dots[u]); }
        }
      }
      for (var u = 0u; u < R; u++) { s[u][c] = dots[u].x + dots[u].y + dots[u].z + dots[u].w; }
    }
    // Bias: MASKED where the key is hidden from the row.
    for (var c = 0u; c < KB; c++) {
      let j = j0 + c;
      let visible = subgroupShuffle(kpOk, c) != 0u && j < Tk;
      for (var u = 0u; u < R; u++) {
        var sc = s[u][c];
        var ok = visible && !((flags & 1u) != 0u && i32(j) > qOffset + i32(ids[u].i));
        if ((flags & 2u) != 0u) {
          let mv = MASK[pu(12u) + b * pu(13u) + ids[u].h * pu(14u) + ids[u].i * pu(15u) + min(j, Tk - 1u) * pu(16u)];
          ok = ok && mv >= -1.0e30;
          sc += mv;
        }
        s[u][c] = select(MASKED, sc, ok);
      }
    }

    // Online softmax, once per block: new running max, rescale, weights.
    var p: array<array<f32, KB>, R>;
    for (var u = 0u; u < R; u++) {
      var bm = m[u];
      for (var c = 0u; c < KB; c++) { bm = max(bm, s[u][c]); }
      let corr = exp(m[u] - bm);
      m[u] = bm;
      var ls = 0.0;
      for (var c = 0u; c < KB; c++) {
        p[u][c] = select(exp(s[u][c] - bm), 0.0, s[u][c] == MASKED);
        ls += p[u][c];
      }
      l[u] = l[u] * corr + ls;
      for (var h = 0u; h < NCH; h++) {
        for (var e = 0u; e < CH; e++) { acc[u][h][e] *= corr; }
      }
    }

    // acc += p V: the lane loads its key's V row, the subgroup passes row c around.
    let vb = vRow0 + jl * pu(29u);
    for (var d = 0u; d < nV4; d++) { vr[d] = ldV(vb, d, Dv); }
    for (var c = 0u; c < kbN; c++) {
      for (var h = 0u; h < NCH; h++) {
        for (var e = 0u; e < CH; e++) {
          let vc = subgroupShuffle(vr[h * CH + e], c);
          for (var u = 0u; u < R; u++) { acc[u][h][e] = fma(vec4<f32>(p[u][c]), vc, acc[u][h][e]); }
        }
      }
    }
  }

  for (var u = 0u; u < R; u++) {
    let inv = select(0.0, 1.0 / l[u], l[u] > 0.0);
    var os: array<f32, 4u * DC>;
    for (var h = 0u; h < NCH; h++) {
      for (var e = 0u; e < CH; e++) {
        let o = acc[u][h][e] * inv;
        let c = 4u * (h * CH + e);
        os[c] = o.x;
        os[c + 1u] = o.y;
        os[c + 2u] = o.z;
        os[c + 3u] = o.w;
      }
    }
    let ob = ids[u].r * Dv;
    for (var d = 0u; d < Dv; d++) { O[ob + d] = os[d]; }
    LSE[ids[u].r] = select(0.0, m[u] + log(l[u]), l[u] > 0.0);
  }
}

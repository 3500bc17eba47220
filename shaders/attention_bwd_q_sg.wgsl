// Attention backward, dQ, for CPU adapters with subgroups (lavapipe): the subgroup-shared
// loads of attention_fwd_sg.wgsl applied to attention_bwd_q.wgsl. Scores are recomputed
// from Q, K and the saved logsumexp, never stored:
//   p_ij = exp(s_ij - lse_i), ds_ij = p_ij * (dO_i . v_j - D_i), dQ_i = scale * sum_j ds_ij k_j.
// For a block of KB keys, lane l loads the K and V rows of key j0 + l % KB and
// subgroupShuffle passes row c to every lane; each lane keeps R query rows. Since lse is
// known, no running max is needed: each key is finished as soon as its score is.
// Bindings: 0 params, 1 Q (f32), 2 K, 3 V (KT, strided rows as in attention_fwd_sg.wgsl),
//   4 MASK, 5 KP (u32 words, see attention_fwd_sg.wgsl), 6 DO (f32, [B, Hq, Tq, Dv]
//   contiguous from 0), 7 LD ([B*Hq*Tq, 2]: lse, D_i), 8 DQ (f32, [B, Hq, Tq, D], out).
// Params: the attention_fwd_sg.wgsl layout (word 0 = B*Hq*Tq, 23 = KP bit mask).
// Defines: DC, KB, R, WG, KT, KV4 as in attention_fwd_sg.wgsl.
// Workgroup: as attention_fwd_sg.wgsl (workgroup y = b * Hkv + kvh, rows of that kv head's
// G * Tq query rows, clamped lanes store duplicates of the last row). Keys hidden from a
// row contribute nothing, so a row with no visible key gets dQ = 0.
enable subgroups;
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 8>;
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> K: array<{{KT}}>;
@group(0) @binding(3) var<storage, read> V: array<{{KT}}>;
@group(0) @binding(4) var<storage, read> MASK: array<f32>;
@group(0) @binding(5) var<storage, read> KP: array<u32>;
@group(0) @binding(6) var<storage, read> DO: array<f32>;
@group(0) @binding(7) var<storage, read> LD: array<f32>;
@group(0) @binding(8) var<storage, read_write> DQ: array<f32>;

const DC: u32 = {{DC}}u;
const KB: u32 = {{KB}}u;
const R: u32 = {{R}}u;
const WG: u32 = {{WG}}u;
const KV4: bool = {{KV4}};
// Rows held as NCH chunks of CH vec4s: loops of at most 8 trips (see attention_fwd_sg.wgsl).
const CH: u32 = min(DC, 8u);
const NCH: u32 = DC / CH;

alias Row = array<array<vec4<f32>, CH>, NCH>;

//#include "lib/params.wgsl"

// Chunk c of the K / V row at element `base` (n elements; chunks past it repeat in-row
// values, which only meet zero components or unstored accumulator slots).
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

struct RowId { r: u32, h: u32, i: u32 }

fn rowId(b: u32, kvh: u32, n: u32) -> RowId {
  let G = pu(6u);
  let Tq = pu(2u);
  let h = kvh * G + n / Tq;
  let i = n % Tq;
  return RowId((b * pu(1u) + h) * Tq + i, h, i);
}

// Elements [base, base + n) of Q (times s) or DO as vec4 chunks, zero past n.
fn ldRow(fromQ: bool, base: u32, n: u32, s: f32) -> Row {
  var xs: array<f32, 4u * DC>;
  for (var d = 0u; d < 4u * DC; d++) { xs[d] = 0.0; }
  if (fromQ) {
    for (var d = 0u; d < n; d++) { xs[d] = Q[base + d] * s; }
  } else {
    for (var d = 0u; d < n; d++) { xs[d] = DO[base + d]; }
  }
  var row: Row;
  for (var h = 0u; h < NCH; h++) {
    for (var e = 0u; e < CH; e++) {
      let c = 4u * (h * CH + e);
      row[h][e] = vec4<f32>(xs[c], xs[c + 1u], xs[c + 2u], xs[c + 3u]);
    }
  }
  return row;
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

  // The workgroup's key range (uniform), as in attention_fwd_sg.wgsl.
  var jEnd = Tk;
  if ((flags & 1u) != 0u) {
    let last = min(base + WG * R, nRows) - 1u;
    var iMax = last % Tq;
    if (base / Tq != last / Tq) { iMax = Tq - 1u; }
    jEnd = u32(clamp(qOffset + i32(iMax) + 1, 0, i32(Tk)));
  }

  var ids: array<RowId, R>;
  var q: array<Row, R>;
  var dO: array<Row, R>;
  var dq: array<Row, R>;
  var lse: array<f32, R>;
  var Di: array<f32, R>;
  for (var u = 0u; u < R; u++) {
    ids[u] = rowId(b, kvh, min(base + u * WG + lid.x, nRows - 1u));
    q[u] = ldRow(true, pu(20u) + ids[u].r * D, D, scale);
    dO[u] = ldRow(false, ids[u].r * Dv, Dv, 1.0);
    lse[u] = LD[2u * ids[u].r];
    Di[u] = LD[2u * ids[u].r + 1u];
    for (var h = 0u; h < NCH; h++) {
      for (var e = 0u; e < CH; e++) { dq[u][h][e] = vec4<f32>(0.0); }
    }
  }

  let lane = sgi % KB;
  // The key loops run to KB read from params, so Mesa keeps them rolled whatever the body
  // size (the shuffle lane is then a register, still one permute): unrolling them would
  // multiply the code and the compile time by KB.
  let kbN = pu(30u);
  // This lane's K and V rows, loaded by rolled loops over the chunks the head sizes need
  // (one copy of the per-lane load code instead of DC: compile time grew with it). Chunks
  // past them stay zero.
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
    // This lane's key of the block (clamped: keys past Tk get weight 0 below). Both rows
    // are loaded up front, out of the arithmetic (loads are per-lane loops there).
    let jl = min(j0 + lane, Tk - 1u);
    var kpOk = 1u;
    if ((flags & 4u) != 0u) { kpOk = KP[pu(17u) + b * pu(18u) + jl * pu(19u)] & kpMask; }
    let kb = kRow0 + jl * pu(26u);
    let vb = vRow0 + jl * pu(29u);
    for (var d = 0u; d < nK4; d++) { kr[d] = ldK(kb, d, D); }
    for (var d = 0u; d < nV4; d++) { vr[d] = ldV(vb, d, Dv); }

    for (var c = 0u; c < kbN; c++) {
      // (Explicitly zeroed: a declaration without initializer inside a loop kept the last
      // iteration's values on Dawn / lavapipe.)
      var sd: array<vec4<f32>, R>;
      var pd: array<vec4<f32>, R>;
      for (var u = 0u; u < R; u++) {
        sd[u] = vec4<f32>(0.0);
        pd[u] = vec4<f32>(0.0);
      }
      for (var h = 0u; h < NCH; h++) {
        for (var e = 0u; e < CH; e++) {
          let kc = subgroupShuffle(kr[h * CH + e], c);
          let vc = subgroupShuffle(vr[h * CH + e], c);
          for (var u = 0u; u < R; u++) {
            sd[u] = fma(q[u][h][e], kc, sd[u]);
            pd[u] = fma(dO[u][h][e], vc, pd[u]);
          }
        }
      }
      let j = j0 + c;
      let visible = subgroupShuffle(kpOk, c) != 0u && j < Tk;
      var ds: array<f32, R>;
      for (var u = 0u; u < R; u++) {
        var s = sd[u].x + sd[u].y + sd[u].z + sd[u].w;
        var ok = visible && !((flags & 1u) != 0u && i32(j) > qOffset + i32(ids[u].i));
        if ((flags & 2u) != 0u) {
          let mv = MASK[pu(12u) + b * pu(13u) + ids[u].h * pu(14u) + ids[u].i * pu(15u) + min(j, Tk - 1u) * pu(16u)];
          ok = ok && mv >= -1.0e30;
          s += mv;
        }
        let p = select(0.0, exp(s - lse[u]), ok);
        ds[u] = p * (pd[u].x + pd[u].y + pd[u].z + pd[u].w - Di[u]);
      }
      for (var h = 0u; h < NCH; h++) {
        for (var e = 0u; e < CH; e++) {
          let kc = subgroupShuffle(kr[h * CH + e], c);
          for (var u = 0u; u < R; u++) { dq[u][h][e] = fma(vec4<f32>(ds[u]), kc, dq[u][h][e]); }
        }
      }
    }
  }

  for (var u = 0u; u < R; u++) {
    var xs: array<f32, 4u * DC>;
    for (var h = 0u; h < NCH; h++) {
      for (var e = 0u; e < CH; e++) {
        let o = dq[u][h][e] * scale;
        let c = 4u * (h * CH + e);
        xs[c] = o.x;
        xs[c + 1u] = o.y;
        xs[c + 2u] = o.z;
        xs[c + 3u] = o.w;
      }
    }
    let ob = ids[u].r * D;
    for (var d = 0u; d < D; d++) { DQ[ob + d] = xs[d]; }
  }
}

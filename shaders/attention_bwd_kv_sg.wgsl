// Attention backward, dK and dV, for CPU adapters with subgroups (lavapipe): the
// subgroup-shared loads of attention_fwd_sg.wgsl applied to attention_bwd_kv.wgsl, with the
// roles of queries and keys swapped. Each lane keeps R key rows of one (batch, kv head) and
// loops over the query rows of the kv head's G query heads in blocks of KB: lane l loads
// the Q row, the dO row and (lse, D_i) of query i0 + l % KB, and subgroupShuffle passes
// them to every lane. Sums over heads need no atomics:
//   dV_j = sum_{h,i} p_ij dO_i,  dK_j = scale * sum_{h,i} ds_ij q_i,
//   p_ij = exp(s_ij - lse_i), ds_ij = p_ij * (dO_i . v_j - D_i).
// Bindings: 0 params, 1 Q (QT: vec4<f32> when QV4, else f32; [B, Hq, Tq, D] contiguous
//   from its offset), 2 K, 3 V (f32, strided rows as in attention_fwd_sg.wgsl, read once per
//   key), 4 MASK, 5 KP (u32 words, see attention_fwd_sg.wgsl), 6 DO (QT, [B, Hq, Tq, Dv]
//   contiguous from 0), 7 LD ([B*Hq*Tq, 2]: lse, D_i), 8 DKV (f32, out): dK [B, Hkv, Tk, D]
//   at 0, then dV [B, Hkv, Tk, Dv] from word 11.
// Params: the attention_fwd_sg.wgsl layout; word 0 = B*Hkv*Tk, 11 = B*Hkv*Tk*D.
// Defines: DC, KB, R, WG as in attention_fwd_sg.wgsl; QT, QV4 (Q / dO element type).
// Workgroup: WG x 1; workgroup (x, y) takes kv head y = b * Hkv + kvh and keys
// x * WG * R .. + WG * R - 1; invocation `lid` holds keys base + u * WG + lid, u < R,
// clamped to Tk - 1 (a clamped lane stores duplicates of that key's values). A key seen by
// no query gets dK = dV = 0.
enable subgroups;
@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 8>;
@group(0) @binding(1) var<storage, read> Q: array<{{QT}}>;
@group(0) @binding(2) var<storage, read> K: array<f32>;
@group(0) @binding(3) var<storage, read> V: array<f32>;
@group(0) @binding(4) var<storage, read> MASK: array<f32>;
@group(0) @binding(5) var<storage, read> KP: array<u32>;
@group(0) @binding(6) var<storage, read> DO: array<{{QT}}>;
@group(0) @binding(7) var<storage, read> LD: array<f32>;
@group(0) @binding(8) var<storage, read_write> DKV: array<f32>;

const DC: u32 = {{DC}}u;
const KB: u32 = {{KB}}u;
const R: u32 = {{R}}u;
const WG: u32 = {{WG}}u;
const QV4: bool = {{QV4}};
// Rows held as NCH chunks of CH vec4s: loops of at most 8 trips (see attention_fwd_sg.wgsl).
const CH: u32 = min(DC, 8u);
const NCH: u32 = DC / CH;

alias Row = array<array<vec4<f32>, CH>, NCH>;

//#include "lib/params.wgsl"

// Chunk c of the Q / dO row at element `base` (n elements; chunks past it repeat in-row
// values, which only meet zero components or unstored accumulator slots).
fn ldQ(base: u32, c: u32, n: u32) -> vec4<f32> {
  if (QV4) { return vec4<f32>(Q[base / 4u + min(c, n / 4u - 1u)]); }
  let e = base + 4u * c;
  let last = base + n - 1u;
  return vec4<f32>(vec4<f32>(Q[min(e, last)]).x, vec4<f32>(Q[min(e + 1u, last)]).x,
                   vec4<f32>(Q[min(e + 2u, last)]).x, vec4<f32>(Q[min(e + 3u, last)]).x);
}

fn ldO(base: u32, c: u32, n: u32) -> vec4<f32> {
  if (QV4) { return vec4<f32>(DO[base / 4u + min(c, n / 4u - 1u)]); }
  let e = base + 4u * c;
  let last = base + n - 1u;
  return vec4<f32>(vec4<f32>(DO[min(e, last)]).x, vec4<f32>(DO[min(e + 1u, last)]).x,
                   vec4<f32>(DO[min(e + 2u, last)]).x, vec4<f32>(DO[min(e + 3u, last)]).x);
}

// Elements [base, base + n) of K or V as vec4 chunks, zero past n.
fn ldRow(fromK: bool, base: u32, n: u32) -> Row {
  var xs: array<f32, 4u * DC>;
  for (var d = 0u; d < 4u * DC; d++) { xs[d] = 0.0; }
  if (fromK) {
    for (var d = 0u; d < n; d++) { xs[d] = K[base + d]; }
  } else {
    for (var d = 0u; d < n; d++) { xs[d] = V[base + d]; }
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

// Stores elements [0, n) of a row (times s) at DKV[base..].
fn stRow(row: ptr<function, Row>, base: u32, n: u32, s: f32) {
  var xs: array<f32, 4u * DC>;
  for (var h = 0u; h < NCH; h++) {
    for (var e = 0u; e < CH; e++) {
      let o = (*row)[h][e] * s;
      let c = 4u * (h * CH + e);
      xs[c] = o.x;
      xs[c + 1u] = o.y;
      xs[c + 2u] = o.z;
      xs[c + 3u] = o.w;
    }
  }
  for (var d = 0u; d < n; d++) { DKV[base + d] = xs[d]; }
}

@compute @workgroup_size(WG, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(subgroup_invocation_id) sgi: u32) {
  let Hq = pu(1u);
  let Tq = pu(2u);
  let Tk = pu(3u);
  let D = pu(4u);
  let Dv = pu(5u);
  let G = pu(6u);
  let flags = pu(7u);
  let qOffset = bitcast<i32>(pu(8u));
  let scale = pf(9u);
  let Hkv = pu(10u);
  let kvh = wg.y % Hkv;
  let b = wg.y / Hkv;
  let base = wg.x * WG * R;

  // Causal: query i sees key j when i >= j - qOffset; the workgroup's first key sets the
  // first query any of its keys needs (uniform: from the workgroup id and params only).
  var iStart = 0u;
  if ((flags & 1u) != 0u) { iStart = u32(clamp(i32(base) - qOffset, 0, i32(Tq))); }

  var js: array<u32, R>;
  var kpOk: array<bool, R>;
  var k: array<Row, R>;
  var v: array<Row, R>;
  var dk: array<Row, R>;
  var dv: array<Row, R>;
  for (var u = 0u; u < R; u++) {
    let j = min(base + u * WG + lid.x, Tk - 1u);
    js[u] = j;
    k[u] = ldRow(true, pu(21u) + b * pu(24u) + kvh * pu(25u) + j * pu(26u), D);
    v[u] = ldRow(false, pu(22u) + b * pu(27u) + kvh * pu(28u) + j * pu(29u), Dv);
    kpOk[u] = (flags & 4u) == 0u || (KP[pu(17u) + b * pu(18u) + j * pu(19u)] & pu(23u)) != 0u;
    for (var h = 0u; h < NCH; h++) {
      for (var e = 0u; e < CH; e++) {
        dk[u][h][e] = vec4<f32>(0.0);
        dv[u][h][e] = vec4<f32>(0.0);
      }
    }
  }

  let lane = sgi % KB;
  // The key loops run to KB read from params, so Mesa keeps them rolled whatever the body
  // size (the shuffle lane is then a register, still one permute): unrolling them would
  // multiply the code and the compile time by KB.
  let kbN = pu(30u);
  // This lane's Q and dO rows, loaded by rolled loops over the chunks the head sizes need
  // (one copy of the per-lane load code instead of DC: compile time grew with it). Chunks
  // past them stay zero.
  let nQ4 = (D + 3u) / 4u;
  let nO4 = (Dv + 3u) / 4u;
  var qr: array<vec4<f32>, DC>;
  var orr: array<vec4<f32>, DC>;
  for (var d = 0u; d < DC; d++) {
    qr[d] = vec4<f32>(0.0);
    orr[d] = vec4<f32>(0.0);
  }
  for (var g = 0u; g < G; g++) {
    let h = kvh * G + g;
    let row0 = (b * Hq + h) * Tq;
    for (var i0 = iStart; i0 < Tq; i0 += KB) {
      // This lane's query of the block (clamped: queries past Tq get weight 0 below). Rows
      // are loaded up front, out of the arithmetic (loads are per-lane loops).
      let il = min(i0 + lane, Tq - 1u);
      let r = row0 + il;
      let qb = pu(20u) + r * D;
      let ob = r * Dv;
      for (var d = 0u; d < nQ4; d++) { qr[d] = ldQ(qb, d, D); }
      for (var d = 0u; d < nO4; d++) { orr[d] = ldO(ob, d, Dv); }
      let lse = LD[2u * r];
      let Di = LD[2u * r + 1u];

      for (var c = 0u; c < kbN; c++) {
        // (Explicitly zeroed: a declaration without initializer inside a loop kept the last
        // iteration's values on Dawn / lavapipe.)
        var sd: array<vec4<f32>, R>;
        var pd: array<vec4<f32>, R>;
        for (var u = 0u; u < R; u++) {
          sd[u] = vec4<f32>(0.0);
          pd[u] = vec4<f32>(0.0);
        }
        for (var hh = 0u; hh < NCH; hh++) {
          for (var e = 0u; e < CH; e++) {
            let qc = subgroupShuffle(qr[hh * CH + e], c);
            let oc = subgroupShuffle(orr[hh * CH + e], c);
            for (var u = 0u; u < R; u++) {
              sd[u] = fma(qc, k[u][hh][e], sd[u]);
              pd[u] = fma(oc, v[u][hh][e], pd[u]);
            }
          }
        }
        let i = i0 + c;
        let lseC = subgroupShuffle(lse, c);
        let DiC = subgroupShuffle(Di, c);
        var p: array<f32, R>;
        var ds: array<f32, R>;
        for (var u = 0u; u < R; u++) {
          let j = js[u];
          var s = (sd[u].x + sd[u].y + sd[u].z + sd[u].w) * scale;
          var ok = kpOk[u] && i < Tq && !((flags & 1u) != 0u && i32(j) > qOffset + i32(i));
          if ((flags & 2u) != 0u) {
            let mv = MASK[pu(12u) + b * pu(13u) + h * pu(14u) + min(i, Tq - 1u) * pu(15u) + j * pu(16u)];
            ok = ok && mv >= -1.0e30;
            s += mv;
          }
          p[u] = select(0.0, exp(s - lseC), ok);
          ds[u] = p[u] * (pd[u].x + pd[u].y + pd[u].z + pd[u].w - DiC);
        }
        for (var hh = 0u; hh < NCH; hh++) {
          for (var e = 0u; e < CH; e++) {
            let qc = subgroupShuffle(qr[hh * CH + e], c);
            let oc = subgroupShuffle(orr[hh * CH + e], c);
            for (var u = 0u; u < R; u++) {
              dv[u][hh][e] = fma(vec4<f32>(p[u]), oc, dv[u][hh][e]);
              dk[u][hh][e] = fma(vec4<f32>(ds[u]), qc, dk[u][hh][e]);
            }
          }
        }
      }
    }
  }

  for (var u = 0u; u < R; u++) {
    let r = (b * Hkv + kvh) * Tk + js[u];
    stRow(&dk[u], r * D, D, scale);
    stRow(&dv[u], pu(11u) + r * Dv, Dv, 1.0);
  }
}

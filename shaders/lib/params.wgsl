// Readers of the uniform params words (see "Binding 0" in any kernel's header).
// Needs from the including shader: `P: array<vec4<u32>, N>` at binding 0, N covering
// every word index the shader reads.
fn pu(i: u32) -> u32 { return P[i / 4u][i % 4u]; }
fn pf(i: u32) -> f32 { return bitcast<f32>(pu(i)); }

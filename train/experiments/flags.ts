// Numeric flags of the experiment scripts: parseArgs gives strings; each named flag must
// parse to a positive number, else one error names the flag and what was given.
export function positiveFlags<N extends string>(values: Record<string, unknown>, names: readonly N[]): Record<N, number> {
  const out = {} as Record<N, number>;
  for (const k of names) {
    const v = Number(values[k]);
    if (!(v > 0)) throw new Error(`--${k} must be positive, got ${values[k]}`);
    out[k] = v;
  }
  return out;
}

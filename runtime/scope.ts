// Scoped disposal: `tidy(fn)` disposes every tensor created while fn runs, except the
// ones it returns (and those passed to `keep`). GPU memory is never left to the
// garbage collector.
import type { Tensor } from './tensor.ts';

const stack: Set<Tensor>[] = [];
/** Marks Tensor instances without importing the class (tensor.ts imports this file). */
export const TENSOR_BRAND = Symbol.for('retrv.tensor');

export function registerInScope(t: Tensor): void {
  if (stack.length) stack[stack.length - 1].add(t);
}

/** Removes a tensor from every open scope so that it outlives them. */
export function keep<T extends Tensor>(t: T): T {
  for (const s of stack) s.delete(t);
  return t;
}

function collect(value: unknown, out: Set<Tensor>, seen = new Set<unknown>()): void {
  if (value === null || typeof value !== 'object' || seen.has(value)) return;
  seen.add(value);
  if ((value as Record<symbol, unknown>)[TENSOR_BRAND] === true) {
    out.add(value as Tensor);
    return;
  }
  if (Array.isArray(value)) for (const v of value) collect(v, out, seen);
  else if (Object.getPrototypeOf(value) === Object.prototype) for (const v of Object.values(value)) collect(v, out, seen);
}

function close(scope: Set<Tensor>, result: unknown): void {
  const kept = new Set<Tensor>();
  collect(result, kept);
  stack.pop();
  const parent = stack[stack.length - 1];
  for (const t of scope) {
    if (kept.has(t)) parent?.add(t);
    else t.dispose();
  }
}

/** Runs fn; disposes the tensors it created but did not return. */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Tensor>();
  stack.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    close(scope, undefined);
    throw e;
  }
  close(scope, result);
  return result;
}

/**
 * The async form of tidy, for blocks that await (a training step reading its loss).
 * Scopes nest by call order: do not run two tidyAsync blocks concurrently.
 */
export async function tidyAsync<T>(fn: () => Promise<T>): Promise<T> {
  const scope = new Set<Tensor>();
  stack.push(scope);
  let result: T;
  try {
    result = await fn();
  } catch (e) {
    close(scope, undefined);
    throw e;
  }
  close(scope, result);
  return result;
}

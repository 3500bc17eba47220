// The runtime's contract: batching into one submit, scoped disposal, pool reuse, device
// lifetime under garbage collection, and clear errors for bad input.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import * as T from '../../runtime/index.ts';
import { expectClose } from '../helpers.ts';

function runFixture(file: string, env: Record<string, string>): string {
  return execFileSync(process.execPath, ['--import', 'tsx', file], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 60_000,
  });
}

describe('engine', () => {
  it('records many ops into one submit and reads back once', async () => {
    const a = T.fromArray([1, 2, 3, 4], [2, 2]);
    await a.toArray(); // settle the upload
    T.resetStats();
    const out = T.tidy(() => {
      let x = a;
      for (let i = 0; i < 20; i++) x = T.addScalar(T.mulScalar(x, 0.5), 1);
      return T.sum(x);
    });
    const v = await out.item();
    const s = T.stats();
    expect(s.submits).toBe(1);
    expect(s.readbacks).toBe(1);
    expect(s.dispatches).toBeGreaterThanOrEqual(41);
    // x -> x/2 + 1 twenty times from each start value, then summed.
    let ref = 0;
    for (const start of [1, 2, 3, 4]) {
      let x = start;
      for (let i = 0; i < 20; i++) x = x * 0.5 + 1;
      ref += x;
    }
    expectClose([v], [ref], 1e-5, 1e-6);
    out.dispose();
    a.dispose();
  });

  it('tidy returns every intermediate buffer to the pool, and the pool reuses them', async () => {
    const a = T.fromArray(new Float32Array(1000).fill(1), [10, 100]);
    const step = () =>
      T.tidy(() => {
        const y = T.exp(T.mul(a, a));
        return T.sum(T.add(y, y), 1);
      });
    const warm = step();
    await warm.toArray();
    warm.dispose();
    const before = T.stats();
    for (let i = 0; i < 5; i++) {
      const r = step();
      await r.toArray();
      r.dispose();
    }
    const after = T.stats();
    expect(after.bytesInUse).toBe(before.bytesInUse);
    expect(after.buffersCreated).toBe(before.buffersCreated);
    a.dispose();
  });

  it('keeps working when garbage is collected between GPU calls', async () => {
    const gc = (globalThis as { gc?: () => void }).gc;
    expect(gc, 'vitest must run with --expose-gc').toBeTypeOf('function');
    for (let i = 0; i < 8; i++) {
      // Large host arrays make the collector run for real.
      const host = new Float32Array(1 << 20).map((_, k) => (k % 7) - 3);
      const t = T.fromArray(host, [1024, 1024]);
      const s = T.sum(T.abs(t));
      gc!();
      const v = await s.item();
      expect(v).toBeCloseTo(((3 + 2 + 1 + 0 + 1 + 2 + 3) * Math.floor((1 << 20) / 7) + [3, 2, 1, 0, 1, 2, 3].slice(0, (1 << 20) % 7).reduce((p, q) => p + q, 0)), -1);
      t.dispose();
      s.dispose();
      gc!();
      await new Promise((r) => setTimeout(r, 5));
    }
  });
});

describe('bad input', () => {
  it('mismatched shapes name both shapes', () => {
    const a = T.zeros([2, 3]);
    const b = T.zeros([4]);
    expect(() => T.add(a, b)).toThrow(/\[2, 3\].*\[4\]/);
    a.dispose();
    b.dispose();
  });

  it('a wrong dtype names the op and dtype', () => {
    const i = T.fromArray([1, 2], [2], 'i32');
    expect(() => T.exp(i)).toThrow(/exp.*i32/);
    i.dispose();
  });

  it('use after dispose is an error', async () => {
    const a = T.ones([3]);
    a.dispose();
    expect(() => T.neg(a)).toThrow(/disposed/);
    await expect(a.toArray()).rejects.toThrow(/disposed/);
  });

  it('a tensor larger than the device allows is refused with both sizes', () => {
    const limit = T.getEngine().ctx.limits.maxStorageBufferBindingSize;
    const n = Math.floor(limit / 4) + 1024;
    expect(() => T.empty([n])).toThrow(new RegExp(`${n * 4} bytes.*${limit}`));
  });

  it('fromArray with the wrong number of values names the shape', () => {
    expect(() => T.fromArray([1, 2, 3], [2, 2])).toThrow(/3 values.*\[2, 2\]/);
  });

  it('no adapter gives a clear error with the install hint', () => {
    const out = runFixture('test/fixtures/no-adapter.ts', { VK_ICD_FILENAMES: '/nonexistent/icd.json', VK_DRIVER_FILES: '/nonexistent/icd.json' });
    expect(out).toMatch(/NoAdapterError: No WebGPU adapter found/);
    expect(out).toMatch(/npm run setup/);
  });

  it('a lost device is a clear error, not a hang', () => {
    const out = runFixture('test/fixtures/device-lost.ts', {});
    expect(out).toMatch(/CAUGHT: DeviceLostError: WebGPU device lost/);
  });

  it('a validation error surfaces at the next read, and RETRV_DEBUG names the op', () => {
    const plain = runFixture('test/fixtures/bad-dispatch.ts', { RETRV_DEBUG: '0', BAD: 'alias' });
    expect(plain).toMatch(/CAUGHT: WebGPU error/);
    expect(plain).toMatch(/RETRV_DEBUG=1/);
    const debug = runFixture('test/fixtures/bad-dispatch.ts', { RETRV_DEBUG: '1', BAD: 'alias' });
    expect(debug).toMatch(/CAUGHT: WebGPU error in aliased-copy \[64\]/);
  });

  it('a failed batch returns no values and leaves nothing behind: the next op is right', () => {
    // The failed submit's reads used to resolve with zeros, and a pipeline that failed to
    // build poisoned the next batch too (seen on an NVIDIA driver that rejected a shader).
    for (const bad of ['alias', 'compile']) {
      const out = runFixture('test/fixtures/bad-dispatch.ts', { RETRV_DEBUG: '0', BAD: bad });
      expect(out, bad).not.toMatch(/READ:/);
      expect(out, bad).toMatch(/CAUGHT: WebGPU error/);
      expect(out, bad).toMatch(/AFTER: -1,-2,-3/);
    }
  });
});

describe('autograd', () => {
  it('gradients flow through intermediates whose handles were disposed', async () => {
    const x = T.requireGrad(T.fromArray([1, 2, 3], [3]));
    const h = T.mul(x, x); // x^2
    const y = T.sum(T.exp(T.mulScalar(h, 0.1)));
    h.dispose(); // the graph must hold what backward needs
    T.backward(y);
    const g = await x.grad!.toArray();
    expectClose(g, [1, 2, 3].map((v) => 0.2 * v * Math.exp(0.1 * v * v)), 1e-5, 1e-5);
    y.dispose();
    x.dispose();
  });

  it('gradients accumulate across backward calls and stop at detach', async () => {
    const x = T.requireGrad(T.fromArray([0.5, -1], [2]));
    for (let i = 0; i < 3; i++) {
      const y = T.tidy(() => T.sum(T.add(T.mul(x, x), T.mul(T.detach(x), x))));
      T.backward(y);
      y.dispose();
    }
    // d/dx (x^2 + c*x) with c = x held constant = 2x + x = 3x, three times.
    expectClose(await x.grad!.toArray(), [4.5, -9], 1e-6, 1e-6);
    x.dispose();
  });

  it('a graph never backpropagated frees its saved tensors when disposed', async () => {
    const x = T.requireGrad(T.fromArray(new Float32Array(512).fill(0.5), [512]));
    await x.toArray();
    const before = T.stats().bytesInUse;
    const y = T.tidy(() => T.sum(T.exp(T.mul(x, x))));
    expect(T.stats().bytesInUse).toBeGreaterThan(before); // y plus what its graph saved
    y.dispose();
    expect(T.stats().bytesInUse).toBe(before);
    x.dispose();
  });

  it('noGrad records nothing, and backward twice is an error', () => {
    const x = T.requireGrad(T.ones([2]));
    const a = T.noGrad(() => T.exp(x));
    expect(a.requiresGrad).toBe(false);
    expect(a.node).toBeNull();
    const y = T.sum(T.exp(x));
    T.backward(y);
    expect(() => T.backward(y)).toThrow(/twice/);
    expect(() => T.backward(a)).toThrow(/does not require grad/);
    for (const t of [x, a, y]) t.dispose();
  });
});

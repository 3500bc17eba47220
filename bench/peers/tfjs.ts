// TensorFlow.js with its WebGPU backend, on the same Dawn instance, adapter and device as
// retrv in this process.
//
// tfjs-backend-webgpu registers itself at import time only if `navigator.gpu` exists, and
// its factory calls navigator.gpu.requestAdapter() then adapter.requestDevice(). Dawn
// refuses a second device from an adapter ("adapter is consumed"), and runtime/device.ts
// keeps the instance to itself, so navigator.gpu here is a small facade whose adapter
// hands out retrv's device. Both libraries then submit to one queue, one after the other.
import type * as TfCore from '@tensorflow/tfjs-core';
import { type GpuContext } from '../../runtime/index.ts';
import { type MatmulRunner, Skip } from '../suites/_lib.ts';

type Tf = typeof TfCore;

export interface TfjsInfo {
  tf: Tf;
  version: string;
  backend: string;
}

let loaded: Promise<TfjsInfo> | null = null;

function installNavigatorGpu(ctx: GpuContext): void {
  const adapter = {
    // The device's features, not the adapter's: tfjs asks for what it sees here.
    features: ctx.device.features,
    limits: ctx.adapter.limits,
    info: ctx.adapter.info,
    isFallbackAdapter: false,
    async requestDevice(desc?: GPUDeviceDescriptor): Promise<GPUDevice> {
      // The device already exists: make sure it has what tfjs asks for.
      // (tfjs 4.22 wraps one feature name in an array, hence String(f).)
      for (const f of desc?.requiredFeatures ?? []) {
        if (!ctx.device.features.has(String(f))) throw new Error(`tfjs asked for feature '${String(f)}' that retrv's device lacks`);
      }
      return ctx.device;
    },
  };
  const gpu = {
    requestAdapter: async () => adapter,
    getPreferredCanvasFormat: () => 'rgba8unorm',
    wgslLanguageFeatures: new Set<string>(),
  };
  const g = globalThis as { navigator?: object };
  if (!g.navigator) g.navigator = {};
  // Node 21+ has a navigator object without `gpu`; define it there as well.
  Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true, writable: true });
}

/** Loads tfjs on the WebGPU backend once; throws Skip if it did not end up on 'webgpu'. */
export function loadTfjs(ctx: GpuContext): Promise<TfjsInfo> {
  if (!loaded) {
    loaded = (async () => {
      installNavigatorGpu(ctx);
      let tf: Tf;
      try {
        tf = (await import('@tensorflow/tfjs-core')) as Tf;
        await import('@tensorflow/tfjs-backend-webgpu');
      } catch (e) {
        throw new Skip(`tfjs not installed or failed to load: ${(e as Error).message}`);
      }
      const ok = await tf.setBackend('webgpu');
      await tf.ready();
      const backend = tf.getBackend();
      if (!ok || backend !== 'webgpu') throw new Skip(`tfjs did not pick the 'webgpu' backend (got '${backend}')`);
      return { tf, version: tf.version_core, backend };
    })();
  }
  return loaded;
}

/** The tfjs WebGPU backend's method that submits its pending command encoder. */
interface WebGpuBackendLike {
  submitQueue(): void;
  commandEncoder: GPUCommandEncoder | null;
  endComputePassEncoder?(): void;
}

export async function tfjsMatmul(ctx: GpuContext, a: Float32Array, b: Float32Array, m: number, k: number, n: number): Promise<MatmulRunner> {
  const { tf } = await loadTfjs(ctx);
  const backend = tf.backend() as unknown as WebGpuBackendLike;
  if (typeof backend.submitQueue !== 'function') throw new Skip('tfjs webgpu backend has no submitQueue(): cannot time GPU completion');
  const ta = tf.tensor2d(a, [m, k]);
  const tb = tf.tensor2d(b, [k, n]);
  // Wait for the GPU: end the pass, submit what tfjs recorded, then wait for the queue.
  const finish = async () => {
    if (backend.commandEncoder) {
      backend.endComputePassEncoder?.();
      backend.submitQueue();
    }
    await ctx.device.queue.onSubmittedWorkDone();
  };
  return {
    async run() {
      const c = tf.matMul(ta, tb);
      await finish();
      c.dispose();
    },
    async output() {
      const c = tf.matMul(ta, tb);
      const data = (await c.data()) as Float32Array;
      c.dispose();
      return Float32Array.from(data);
    },
    async dispose() {
      ta.dispose();
      tb.dispose();
      await finish();
    },
  };
}

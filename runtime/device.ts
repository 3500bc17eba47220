// WebGPU bootstrap through Dawn (the `webgpu` npm package), headless.
//
// Two habits here prevent real failures seen with `webgpu` on Node:
// 1. The object returned by `create()` is Dawn's instance. If it is garbage-collected
//    while a device from it lives, the next poll locks a mutex in freed memory and the
//    process segfaults, aborts or hangs at random. We keep it in a module-level slot
//    for the life of the process.
// 2. While a map or onSubmittedWorkDone is pending, Dawn polls through back-to-back
//    global `setImmediate` calls, which keeps a whole core busy. On a 2-core machine
//    running lavapipe that core is a third of the compute. We throttle: after about
//    1 ms of back-to-back polls, the next poll waits on a 1 ms timer. Only on software
//    adapters: on a GPU the CPU is free anyway, and a 1 ms timer would add up to a
//    millisecond to every wait (RETRV_POLL=throttle or spin overrides the choice).
import { create, globals } from 'webgpu';

export interface GpuContext {
  adapter: GPUAdapter;
  device: GPUDevice;
  /** Human-readable adapter description, e.g. "llvmpipe (LLVM 19.1.7, 256 bits) [cpu, vulkan]". */
  description: string;
  info: { vendor: string; architecture: string; device: string; description: string; backend: string; type: string };
  features: Set<string>;
  limits: GPUSupportedLimits;
  hasF16: boolean;
  hasSubgroups: boolean;
  hasTimestamps: boolean;
  /** True when the adapter is a CPU implementation (lavapipe / SwiftShader / WARP). */
  isSoftware: boolean;
}

export class NoAdapterError extends Error {
  constructor(detail: string) {
    super(
      `No WebGPU adapter found (${detail}).\n` +
        `hint: install a Vulkan driver. On Debian/Ubuntu as root run \`npm run setup\` ` +
        `(it installs Mesa's software Vulkan, lavapipe; Debian 12 needs bookworm-backports), ` +
        `or install your GPU vendor's Vulkan driver. Then check with \`retrv doctor\`.`,
    );
    this.name = 'NoAdapterError';
  }
}

export class DeviceLostError extends Error {
  constructor(reason: string, message: string) {
    super(`WebGPU device lost (${reason}): ${message}`);
    this.name = 'DeviceLostError';
  }
}

// Held for the whole process: see note 1 above.
const keepAlive: { instance: GPU | null; ctx: GpuContext | null } = { instance: null, ctx: null };
let pending: Promise<GpuContext> | null = null;
let lostError: DeviceLostError | null = null;
const uncaptured: string[] = [];

function installGlobals(): void {
  // Dawn's classes (GPUBufferUsage, GPUMapMode, ...) are expected on globalThis.
  for (const [k, v] of Object.entries(globals)) {
    if (!(k in globalThis)) (globalThis as Record<string, unknown>)[k] = v;
  }
}

let throttled = false;
/** Whether the installed throttle acts: decided per adapter once it is known. */
let throttleActive = true;
/** Throttle the poll loop Dawn drives through the global setImmediate (note 2 above). */
export function throttlePolling(): void {
  if (throttled) return;
  throttled = true;
  const original = globalThis.setImmediate;
  let burstStart = 0;
  let lastCall = 0;
  const patched = ((fn: (...a: unknown[]) => void, ...args: unknown[]) => {
    const now = performance.now();
    if (now - lastCall > 2) burstStart = now; // a new burst of polling
    lastCall = now;
    if (throttleActive && now - burstStart > 1) {
      // Keep the Immediate-shaped return value by scheduling the Immediate after the timer.
      let imm: NodeJS.Immediate | undefined;
      const t = setTimeout(() => {
        imm = original(fn, ...args);
      }, 1);
      return { ref: () => t.ref(), unref: () => t.unref(), hasRef: () => t.hasRef(), [Symbol.dispose]() { clearTimeout(t); if (imm) clearImmediate(imm); } } as unknown as NodeJS.Immediate;
    }
    return original(fn, ...args);
  }) as typeof setImmediate;
  globalThis.setImmediate = Object.assign(patched, { __promisify__: original.__promisify__ });
}

function isSoftwareAdapter(info: GPUAdapterInfo): boolean {
  const s = `${info.vendor} ${info.architecture} ${info.device} ${info.description}`.toLowerCase();
  return /llvmpipe|lavapipe|swiftshader|warp|software|cpu/.test(s);
}

/** The process-wide GPU context, created on first use. */
export function getGpu(): Promise<GpuContext> {
  if (keepAlive.ctx) return Promise.resolve(keepAlive.ctx);
  if (!pending) pending = initGpu().catch((e) => { pending = null; throw e; });
  return pending;
}

/** The context if already created, else throws (for synchronous code paths). */
export function gpuSync(): GpuContext {
  if (!keepAlive.ctx) throw new Error('GPU not initialised: await getGpu() (or init()) before creating tensors');
  return keepAlive.ctx;
}

async function initGpu(): Promise<GpuContext> {
  if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = '/tmp';
  installGlobals();
  throttlePolling();
  let instance: GPU;
  try {
    instance = create([]) as GPU;
  } catch (e) {
    throw new NoAdapterError(`Dawn failed to start: ${(e as Error).message}`);
  }
  keepAlive.instance = instance;
  const adapter = await instance.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) throw new NoAdapterError('requestAdapter returned null; no Vulkan/Metal/D3D12 driver is visible to Dawn');
  const wanted: GPUFeatureName[] = ['shader-f16', 'subgroups', 'timestamp-query'];
  const requiredFeatures = wanted.filter((f) => adapter.features.has(f));
  // Ask for the adapter's real limits rather than the conservative defaults.
  const requiredLimits: Record<string, number> = {};
  for (const key of [
    'maxStorageBufferBindingSize',
    'maxBufferSize',
    'maxComputeWorkgroupStorageSize',
    'maxComputeInvocationsPerWorkgroup',
    'maxComputeWorkgroupSizeX',
    'maxComputeWorkgroupSizeY',
    'maxComputeWorkgroupSizeZ',
    'maxComputeWorkgroupsPerDimension',
    'maxStorageBuffersPerShaderStage',
  ] as const) {
    requiredLimits[key] = adapter.limits[key];
  }
  const device = await adapter.requestDevice({ requiredFeatures, requiredLimits });
  device.lost.then((info) => {
    if (info.reason === 'destroyed' && !lostError) return;
    lostError = new DeviceLostError(info.reason, info.message);
  });
  device.onuncapturederror = (ev: GPUUncapturedErrorEvent) => {
    uncaptured.push(ev.error.message);
  };
  const ai = adapter.info;
  const info = {
    vendor: ai.vendor ?? '',
    architecture: ai.architecture ?? '',
    device: ai.device ?? '',
    description: ai.description ?? '',
    // Dawn does not report its backend here; on Linux it is Vulkan.
    backend: (ai as unknown as { backendType?: string }).backendType ?? (process.platform === 'linux' ? 'vulkan' : process.platform === 'darwin' ? 'metal' : 'unknown'),
    type: (ai as unknown as { adapterType?: string }).adapterType ?? '',
  };
  const isSoftware = isSoftwareAdapter(ai);
  const poll = process.env.RETRV_POLL;
  throttleActive = poll === 'throttle' ? true : poll === 'spin' ? false : isSoftware;
  const name = info.description || info.device || info.vendor || 'unknown adapter';
  const description = `${name} [${[isSoftware ? 'cpu' : info.type || 'gpu', info.vendor, info.architecture].filter(Boolean).join(', ')}]`;
  const features = new Set<string>([...device.features] as string[]);
  const ctx: GpuContext = {
    adapter,
    device,
    description,
    info,
    features,
    limits: device.limits,
    hasF16: features.has('shader-f16'),
    hasSubgroups: features.has('subgroups'),
    hasTimestamps: features.has('timestamp-query'),
    isSoftware,
  };
  keepAlive.ctx = ctx;
  return ctx;
}

/** Throws if the device was lost or an uncaptured WebGPU error was reported. */
export function checkDeviceHealth(): void {
  if (lostError) throw lostError;
  if (uncaptured.length) throw webgpuError(uncaptured.splice(0, uncaptured.length));
}

/** The error for WebGPU error messages (the first one shown), with the debugging hint. */
export function webgpuError(msgs: readonly string[]): Error {
  return new Error(
    `WebGPU error: ${msgs[0]}${msgs.length > 1 ? ` (and ${msgs.length - 1} more)` : ''}\n` +
      `hint: run with RETRV_DEBUG=1 to check every dispatch and name the op and shapes that failed`,
  );
}

/** A promise that rejects when the device is lost; used to race against waits. */
export function lostPromise(ctx: GpuContext): Promise<never> {
  return ctx.device.lost.then((info) => {
    throw lostError ?? new DeviceLostError(info.reason, info.message);
  });
}

/** True when RETRV_DEBUG is set: every dispatch is validated on its own and named on failure. */
export const debugMode = !!process.env.RETRV_DEBUG && process.env.RETRV_DEBUG !== '0';

// Learning-rate schedules: functions from the 0-based index of the update about to be
// taken (optimizer.stepCount) to a learning rate, passed as step({ lr: schedule(t) }).
// Evaluated on the host, so a schedule costs nothing on the GPU.

export type Schedule = (step: number) => number;

export interface CosineScheduleOptions {
  peakLr: number;
  /** Steps of linear warmup: lr(0) = 0 rising to lr(warmupSteps) = peakLr. */
  warmupSteps: number;
  /** The step at which the cosine reaches minLr (it stays there afterwards). */
  totalSteps: number;
  /** Default 0. */
  minLr?: number;
}

function checkStep(op: string, step: number): void {
  if (!Number.isInteger(step) || step < 0) throw new RangeError(`${op}: step must be a non-negative integer, got ${step}`);
}

/**
 * Linear warmup from 0 to peakLr over warmupSteps, then half a cosine from peakLr down
 * to minLr at totalSteps:
 *   step < warmup:  peakLr * step / warmup
 *   otherwise:      minLr + (peakLr - minLr) * (1 + cos(pi * p)) / 2,
 *                   p = min(1, (step - warmup) / (totalSteps - warmup))
 */
export function cosineSchedule(o: CosineScheduleOptions): Schedule {
  const minLr = o.minLr ?? 0;
  const { peakLr, warmupSteps, totalSteps } = o;
  if (!(peakLr >= 0) || !Number.isFinite(peakLr)) throw new RangeError(`cosineSchedule: peakLr must be a finite number >= 0, got ${peakLr}`);
  if (!(minLr >= 0) || minLr > peakLr) throw new RangeError(`cosineSchedule: minLr must be in [0, peakLr = ${peakLr}], got ${minLr}`);
  if (!Number.isInteger(warmupSteps) || warmupSteps < 0) throw new RangeError(`cosineSchedule: warmupSteps must be a non-negative integer, got ${warmupSteps}`);
  if (!Number.isInteger(totalSteps) || totalSteps < warmupSteps) {
    throw new RangeError(`cosineSchedule: totalSteps must be an integer >= warmupSteps (${warmupSteps}), got ${totalSteps}`);
  }
  return (step) => {
    checkStep('cosineSchedule', step);
    if (step < warmupSteps) return (peakLr * step) / warmupSteps;
    const span = totalSteps - warmupSteps;
    const p = span === 0 ? 1 : Math.min(1, (step - warmupSteps) / span);
    return minLr + ((peakLr - minLr) * (1 + Math.cos(Math.PI * p))) / 2;
  };
}

/** A constant learning rate, optionally after a linear warmup from 0 (lr(warmupSteps) = lr). */
export function constantSchedule(lr: number, warmupSteps = 0): Schedule {
  if (!(lr >= 0) || !Number.isFinite(lr)) throw new RangeError(`constantSchedule: lr must be a finite number >= 0, got ${lr}`);
  if (!Number.isInteger(warmupSteps) || warmupSteps < 0) throw new RangeError(`constantSchedule: warmupSteps must be a non-negative integer, got ${warmupSteps}`);
  return (step) => {
    checkStep('constantSchedule', step);
    return step < warmupSteps ? (lr * step) / warmupSteps : lr;
  };
}

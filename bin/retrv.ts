#!/usr/bin/env -S npx tsx
// The retrv command line. Subcommands grow with the pipeline; each prints one clear
// line plus a hint on error and exits non-zero.
import { Command } from 'commander';
import { NoAdapterError, getGpu } from '../runtime/device.ts';

const program = new Command();
program.name('retrv').description('Retrv-R1 from scratch on a WGSL tensor runtime (WebGPU through Dawn)');

program
  .command('doctor')
  .description('show the WebGPU adapter, its features and limits, and what to install if none is found')
  .action(async () => {
    try {
      const ctx = await getGpu();
      const l = ctx.limits;
      console.log(`adapter      ${ctx.description}`);
      console.log(`kind         ${ctx.isSoftware ? 'software (CPU) implementation: fine for tests and the demo, slow for training' : 'hardware GPU'}`);
      console.log(`backend      ${ctx.info.backend}`);
      console.log(`features     ${[...ctx.features].sort().join(', ')}`);
      console.log(`f16 storage  ${ctx.hasF16 ? 'yes' : 'no'};  subgroups ${ctx.hasSubgroups ? 'yes' : 'no'};  timestamps ${ctx.hasTimestamps ? 'yes' : 'no'}`);
      console.log(`limits       buffer ${(l.maxBufferSize / 2 ** 20).toFixed(0)} MiB, storage binding ${(l.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB, workgroup memory ${l.maxComputeWorkgroupStorageSize} B, invocations ${l.maxComputeInvocationsPerWorkgroup}`);
      process.exit(0);
    } catch (e) {
      if (e instanceof NoAdapterError) {
        console.error(e.message);
        process.exit(2);
      }
      throw e;
    }
  });

program.parseAsync().catch((e: Error) => {
  console.error(`retrv: ${e.message}`);
  process.exit(1);
});

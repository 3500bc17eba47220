import { defineConfig } from 'vitest/config';

// Dawn must be created once per process, and every GPU test shares it: one forked
// worker, no per-file isolation (see ../shared/DESIGN.md, "Dawn in vitest").
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 1,
    isolate: false,
    fileParallelism: false,
    setupFiles: ['test/setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    execArgv: ['--expose-gc'],
  },
});

import { defineConfig } from 'vitest/config';

// End-to-end tests (e2e/): Debian's chromium against the whole local stack, which e2e/global-setup.ts starts
// with scripts/dev (as `make dev` does) and stops afterwards. `npm run e2e`; `npm test` never runs them.
export default defineConfig({
  test: {
    include: ['e2e/**/*.e2e.ts'],
    globalSetup: ['e2e/global-setup.ts'],
    environment: 'node',
    // One stack and one browser: test files (and tests) run one at a time.
    fileParallelism: false,
    pool: 'forks',
    // Each wait inside a test has its own deadline and says what it waited for; these only catch a hang.
    testTimeout: 180_000,
    hookTimeout: 120_000,
    teardownTimeout: 120_000,
  },
});

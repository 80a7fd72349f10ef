// Vitest global setup of the end-to-end tests: one local stack (scripts/dev) for the whole run, started before
// the first test and stopped after the last, whatever happened in between.

import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';
import { Stack } from './stack';

const frontendDir = fileURLToPath(new URL('..', import.meta.url));
const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
/** Screenshots, page logs and the stack's log go here (gitignored). */
export const RESULTS_DIR = fileURLToPath(new URL('../test-results/', import.meta.url));

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const logPath = `${RESULTS_DIR}e2e-stack.log`;
  const started = Date.now();
  const stack = await Stack.start({ repoRoot, logPath });
  console.log(
    `e2e: stack ready at ${stack.info.baseURL} in ${((Date.now() - started) / 1000).toFixed(1)} s ` +
      `(log: ${logPath.replace(frontendDir, '')})`,
  );
  project.provide('stack', stack.info);
  return async () => {
    const t = Date.now();
    await stack.stop();
    console.log(`e2e: stack stopped in ${((Date.now() - t) / 1000).toFixed(1)} s; no process left behind`);
  };
}

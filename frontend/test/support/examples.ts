// Reads the protocol's example frames (docs/protocol-examples/*.json), the files the Go side is tested against
// too, so the two implementations cannot drift apart.

import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const EXAMPLES_DIR = fileURLToPath(new URL('../../../docs/protocol-examples/', import.meta.url));
const FIXTURES_DIR = fileURLToPath(new URL('../fixtures/', import.meta.url));

/** The names (without .json) of every example frame. */
export function exampleNames(): string[] {
  return readdirSync(EXAMPLES_DIR)
    .filter((f) => f.endsWith('.json'))
    .map((f) => f.slice(0, -'.json'.length))
    .sort();
}

/** The raw text of one example frame, as it travels. */
export function exampleText(name: string): string {
  return readFileSync(EXAMPLES_DIR + name + '.json', 'utf8').trim();
}

/** One example frame, parsed. */
export function example(name: string): any {
  return JSON.parse(exampleText(name));
}

/** The mutator cases both the TypeScript and the Go mutators are tested against (docs/mutator-cases.json). */
export function mutatorCases(): any {
  return JSON.parse(readFileSync(fileURLToPath(new URL('../../../docs/mutator-cases.json', import.meta.url)), 'utf8'));
}

/** A recorded sequence of this package's own (test/fixtures/NAME.json). */
export function fixture(name: string): any {
  return JSON.parse(readFileSync(FIXTURES_DIR + name + '.json', 'utf8'));
}

// A tiny in-memory store with the transaction subset the mutators use (get, set, del, scan by prefix), for
// running the mutators without Replicache. Keys are scanned in code-unit order, values are copied in and out.

import type { ReadonlyJSONValue } from 'replicache';
import type { MutatorTx } from '../../src/mutators';

export class MemTx implements MutatorTx {
  readonly data: Map<string, ReadonlyJSONValue>;

  constructor(initial: Record<string, ReadonlyJSONValue> = {}) {
    this.data = new Map(Object.entries(structuredClone(initial)));
  }

  async get(key: string): Promise<ReadonlyJSONValue | undefined> {
    const v = this.data.get(key);
    return v === undefined ? undefined : structuredClone(v);
  }

  async set(key: string, value: ReadonlyJSONValue): Promise<void> {
    this.data.set(key, structuredClone(value));
  }

  async del(key: string): Promise<boolean> {
    return this.data.delete(key);
  }

  scan({ prefix }: { prefix: string }): { values(): AsyncIterable<ReadonlyJSONValue> } {
    const entries = [...this.data.entries()].filter(([k]) => k.startsWith(prefix)).sort(([a], [b]) => (a < b ? -1 : 1));
    return {
      async *values() {
        for (const [, v] of entries) yield structuredClone(v);
      },
    };
  }

  snapshot(): Record<string, ReadonlyJSONValue> {
    return Object.fromEntries([...this.data.entries()].sort(([a], [b]) => (a < b ? -1 : 1)));
  }
}

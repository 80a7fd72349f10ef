// Turning buffered pokes into the answer of a Replicache pull (docs/protocol.md §3). Pure functions: no I/O.

import type { Cookie, PullResponseOKV1, ReadonlyJSONValue } from 'replicache';
import type { PokeFrame } from './protocol';

/**
 * Orders two cookies the way Replicache 15 does: `null` first, an object cookie by its `order`, strings by
 * string order when either side is a string (the reason Spaceport cookies are numbers), numbers by value.
 */
export function compareCookies(a: Cookie, b: Cookie): number {
  if (a === b) return 0;
  if (a === null) return -1;
  if (b === null) return 1;
  const av = typeof a === 'object' ? a.order : a;
  const bv = typeof b === 'object' ? b.order : b;
  if (typeof av === 'string' || typeof bv === 'string') {
    const as = String(av);
    const bs = String(bv);
    return as === bs ? 0 : as < bs ? -1 : 1;
  }
  return (av as number) - (bv as number);
}

/** Deep equality of two JSON values (Replicache matches a base cookie to its own by deep equality). */
export function jsonEqual(a: ReadonlyJSONValue | undefined, b: ReadonlyJSONValue | undefined): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((v, i) => jsonEqual(v, b[i]));
  }
  const ao = a as Readonly<Record<string, ReadonlyJSONValue | undefined>>;
  const bo = b as Readonly<Record<string, ReadonlyJSONValue | undefined>>;
  const ak = Object.keys(ao).filter((k) => ao[k] !== undefined);
  const bk = Object.keys(bo).filter((k) => bo[k] !== undefined);
  return ak.length === bk.length && ak.every((k) => jsonEqual(ao[k], bo[k]));
}

/** The outcome of {@link takePokeChain}. */
export interface PokeChain {
  /**
   * The pokes whose chain starts at the requested cookie, merged into one pull response; `undefined` when no
   * buffered poke starts at that cookie (the caller must then pull explicitly).
   */
  response: PullResponseOKV1 | undefined;
  /** How many pokes were merged into `response`. */
  merged: number;
  /**
   * The buffer to keep: every poke that can still apply to this client, the merged ones included. Replicache
   * may drop a pull response (its cookie moved while the pull ran), so a used poke stays until a later request
   * shows a cookie past it.
   */
  buffer: PokeFrame[];
}

/**
 * Answers a pull for `cookie` from buffered pokes.
 *
 * A client's cookie only moves forward, so a poke based on a cookie older than `cookie` can never apply again
 * and is dropped. The chain starts at the first poke whose `baseCookie` deep-equals `cookie` and goes on while
 * each next poke's `baseCookie` equals the previous poke's cookie. Merging concatenates the patches in order
 * (a `clear` inside a later poke still clears what came before it), takes the last cookie, and lets later
 * `lastMutationIDChanges` win.
 */
export function takePokeChain(pokes: readonly PokeFrame[], cookie: Cookie): PokeChain {
  const buffer = pokes.filter((p) => compareCookies(p.baseCookie, cookie) >= 0);
  const start = buffer.findIndex((p) => jsonEqual(p.baseCookie, cookie));
  if (start < 0) return { response: undefined, merged: 0, buffer };

  const first = buffer[start]!;
  let end: Cookie = first.body.cookie;
  const lastMutationIDChanges: Record<string, number> = { ...first.body.lastMutationIDChanges };
  const patch = [...first.body.patch];
  let merged = 1;
  for (let i = start + 1; i < buffer.length; i++) {
    const next = buffer[i]!;
    if (!jsonEqual(next.baseCookie, end)) break;
    Object.assign(lastMutationIDChanges, next.body.lastMutationIDChanges);
    patch.push(...next.body.patch);
    end = next.body.cookie;
    merged++;
  }
  return { response: { cookie: end, lastMutationIDChanges, patch }, merged, buffer };
}

import { describe, expect, test } from 'vitest';
import type { Cookie } from 'replicache';
import { compareCookies, jsonEqual, parseServerFrame, takePokeChain, type PokeFrame } from '../src/sync';
import { example, exampleText, fixture } from './support/examples';

function poke(base: Cookie, cookie: Cookie, lmids: Record<string, number> = {}, patch: PokeFrame['body']['patch'] = []): PokeFrame {
  return { type: 'poke', baseCookie: base, body: { cookie, lastMutationIDChanges: lmids, patch } };
}

function pokesOf(frames: string[]): PokeFrame[] {
  return frames.map((t) => parseServerFrame(t)).filter((f): f is PokeFrame => f?.type === 'poke');
}

describe('takePokeChain with the protocol examples', () => {
  test('a poke based on the client cookie answers the pull as it is', () => {
    const p = example('server-poke') as PokeFrame;
    const chain = takePokeChain([p], 12);
    expect(chain.response).toEqual(p.body);
    expect(chain.merged).toBe(1);
  });

  test('the full poke answers a client with cookie null, clear first', () => {
    const p = example('server-poke-full') as PokeFrame;
    const chain = takePokeChain([p], null);
    expect(chain.response).toEqual(p.body);
    expect(chain.response!.patch[0]).toEqual({ op: 'clear' });
  });

  test('a poke older than the client cookie is dropped', () => {
    const chain = takePokeChain([example('server-poke')], 14);
    expect(chain.response).toBeUndefined();
    expect(chain.buffer).toEqual([]);
  });

  test('a poke based past the client cookie cannot answer yet but is kept', () => {
    const p = example('server-poke') as PokeFrame;
    const chain = takePokeChain([p], 10);
    expect(chain.response).toBeUndefined();
    expect(chain.buffer).toEqual([p]);
  });

  test('the full poke (base null) is dropped once the client has a cookie', () => {
    const chain = takePokeChain([example('server-poke-full')], 3);
    expect(chain.response).toBeUndefined();
    expect(chain.buffer).toEqual([]);
  });
});

describe('takePokeChain with recorded sequences', () => {
  test.each(['poke-chain', 'poke-new-client'])('%s merges to the expected pull response', (name) => {
    const f = fixture(name);
    const pokes = pokesOf(f.frames.map((fr: unknown) => JSON.stringify(fr)));
    const chain = takePokeChain(pokes, f.cookie);
    expect(chain.response).toEqual(f.expected);
    expect(chain.merged).toBe(pokes.length);
    // The used pokes stay until a pull shows the client past them (Replicache may drop an answer)...
    expect(chain.buffer).toEqual(pokes);
    // ...and go once it is.
    expect(takePokeChain(chain.buffer, f.expected.cookie)).toEqual({ response: undefined, merged: 0, buffer: [] });
  });

  test('the protocol example poke followed by recorded ones chains from 12', () => {
    const [, ...rest] = pokesOf(fixture('poke-chain').frames.map((fr: unknown) => JSON.stringify(fr)));
    const chain = takePokeChain([parseServerFrame(exampleText('server-poke')) as PokeFrame, ...rest], 12);
    expect(chain.merged).toBe(3);
    expect(chain.response!.cookie).toBe(17);
  });
});

describe('takePokeChain rules', () => {
  test('the chain stops at a gap; what follows the gap is kept', () => {
    const a = poke(12, 14, { c: 1 }, [{ op: 'put', key: 'a', value: 1 }]);
    const b = poke(15, 16, { c: 2 }, [{ op: 'put', key: 'b', value: 2 }]);
    const chain = takePokeChain([a, b], 12);
    expect(chain.response).toEqual(a.body);
    expect(chain.merged).toBe(1);
    expect(chain.buffer).toEqual([a, b]);
  });

  test('the chain may start after stale pokes', () => {
    const stale = poke(10, 12, { c: 1 });
    const a = poke(12, 13, { c: 2 });
    const b = poke(13, 14, { d: 1 });
    const chain = takePokeChain([stale, a, b], 12);
    expect(chain.response).toEqual({ cookie: 14, lastMutationIDChanges: { c: 2, d: 1 }, patch: [] });
    expect(chain.buffer).toEqual([a, b]);
  });

  test('later lastMutationIDChanges win, others are kept', () => {
    const chain = takePokeChain([poke(1, 2, { a: 5, b: 1 }), poke(2, 3, { a: 7 })], 1);
    expect(chain.response!.lastMutationIDChanges).toEqual({ a: 7, b: 1 });
  });

  test('a clear in a later poke stays in its place', () => {
    const chain = takePokeChain(
      [poke(1, 2, {}, [{ op: 'put', key: 'x', value: 1 }]), poke(2, 3, {}, [{ op: 'clear' }, { op: 'put', key: 'y', value: 2 }])],
      1,
    );
    expect(chain.response!.patch).toEqual([
      { op: 'put', key: 'x', value: 1 },
      { op: 'clear' },
      { op: 'put', key: 'y', value: 2 },
    ]);
  });

  test('object cookies match by deep equality', () => {
    const chain = takePokeChain(
      [poke({ order: 1, cvr: 'a' }, { order: 2, cvr: 'b' }), poke({ order: 2, cvr: 'b' }, { order: 3, cvr: 'c' })],
      { order: 1, cvr: 'a' },
    );
    expect(chain.merged).toBe(2);
    expect(chain.response!.cookie).toEqual({ order: 3, cvr: 'c' });
  });

  test('the input buffer is not modified', () => {
    const pokes = [poke(1, 2, {}, [{ op: 'del', key: 'k' }]), poke(2, 3, {}, [{ op: 'del', key: 'j' }])];
    const copy = structuredClone(pokes);
    takePokeChain(pokes, 1);
    expect(pokes).toEqual(copy);
  });
});

describe('compareCookies', () => {
  test.each([
    [null, 1, -1],
    [1, null, 1],
    [null, null, 0],
    [9, 10, -1],
    [10, 10, 0],
    ['9', '10', 1], // string order, as Replicache does: the reason cookies are numbers
    [{ order: 2 }, { order: 3 }, -1],
    [{ order: 3 }, 3, 0],
  ] as [Cookie, Cookie, number][])('%j vs %j', (a, b, sign) => {
    expect(Math.sign(compareCookies(a, b))).toBe(sign);
  });
});

describe('jsonEqual', () => {
  test('deep, key order free', () => {
    expect(jsonEqual({ a: 1, b: [1, { c: null }] }, { b: [1, { c: null }], a: 1 })).toBe(true);
    expect(jsonEqual({ a: 1 }, { a: 1, b: 2 })).toBe(false);
    expect(jsonEqual([1, 2], [2, 1])).toBe(false);
    expect(jsonEqual(null, 0)).toBe(false);
  });
});

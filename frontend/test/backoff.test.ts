import { describe, expect, test } from 'vitest';
import { backoffDelay, closeAction, parseRetryAfter } from '../src/sync';

describe('backoffDelay', () => {
  const almostOne = () => 0.9999999;

  test('the ceiling doubles from 250 ms and stops at 10 s', () => {
    const ceilings = Array.from({ length: 10 }, (_, attempt) => backoffDelay(attempt, almostOne) + 1);
    expect(ceilings).toEqual([250, 500, 1000, 2000, 4000, 8000, 10000, 10000, 10000, 10000]);
  });

  test('full jitter: the delay is the random fraction of the ceiling', () => {
    expect(backoffDelay(0, () => 0)).toBe(0);
    expect(backoffDelay(2, () => 0.5)).toBe(500);
    expect(backoffDelay(3, () => 0.25)).toBe(500);
  });

  test('huge attempt numbers stay at the cap', () => {
    expect(backoffDelay(5000, almostOne)).toBe(9999);
  });

  test('options change base and cap', () => {
    expect(backoffDelay(3, almostOne, { baseMs: 100, maxMs: 500 })).toBe(499);
    expect(backoffDelay(1, almostOne, { baseMs: 100, maxMs: 500 })).toBe(199);
  });
});

describe('parseRetryAfter', () => {
  test.each([
    ['retry after 2s', 2000],
    ['1500ms', 1500],
    ['3', 3000],
    ['rate limited, retry in 0.5 s', 500],
    ['wait 99999 s', 5 * 60_000],
  ])('%s -> %d ms', (reason, ms) => {
    expect(parseRetryAfter(reason)).toBe(ms);
  });

  test('no number: undefined', () => {
    expect(parseRetryAfter('slow down')).toBeUndefined();
  });
});

describe('closeAction', () => {
  test.each([
    [1000, { kind: 'backoff' }],
    [1001, { kind: 'backoff' }],
    [1006, { kind: 'backoff' }],
    [1011, { kind: 'backoff' }],
    [4008, { kind: 'backoff' }],
    [4004, { kind: 'immediate' }],
    [4001, { kind: 'reauth' }],
    [4999, { kind: 'backoff' }],
  ])('code %d', (code, action) => {
    expect(closeAction(code, '')).toEqual(action);
  });

  test('4000 and 4003 stop with the reason', () => {
    expect(closeAction(4000, 'unknown frame type "x"')).toEqual({
      kind: 'stop',
      message: 'protocol error: unknown frame type "x" (reload the page)',
    });
    expect(closeAction(4003, '')).toEqual({ kind: 'stop', message: 'no access to this space' });
  });

  test('1009 is reported', () => {
    expect(closeAction(1009, 'frame over 4194304 bytes')).toEqual({
      kind: 'report',
      message: 'a change was too large for the server: frame over 4194304 bytes',
    });
  });

  test('4029 waits for the delay in the reason, or backs off without one', () => {
    expect(closeAction(4029, 'retry after 3s')).toEqual({ kind: 'wait', delayMs: 3000 });
    expect(closeAction(4029, '')).toEqual({ kind: 'backoff' });
  });
});

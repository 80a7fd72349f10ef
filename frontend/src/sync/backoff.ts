// Reconnect policy: backoff delays and what to do for each close code (docs/protocol.md §5). Pure functions.

import { CloseCode } from './protocol';

/** Backoff settings. Every field is optional; a missing field takes the named default. */
export interface BackoffOptions {
  /** Ceiling of the first delay. Default {@link DEFAULT_BACKOFF_BASE_MS}. */
  baseMs?: number;
  /** Largest ceiling the doubling reaches. Default {@link DEFAULT_BACKOFF_MAX_MS}. */
  maxMs?: number;
  /**
   * A connection that stayed up (welcomed) this long resets the attempt count, so a later drop reconnects
   * quickly again. Default {@link DEFAULT_BACKOFF_RESET_AFTER_MS}.
   */
  resetAfterMs?: number;
}

export const DEFAULT_BACKOFF_BASE_MS = 250;
export const DEFAULT_BACKOFF_MAX_MS = 10_000;
export const DEFAULT_BACKOFF_RESET_AFTER_MS = 30_000;
/** The longest wait a server's 4029 reason can impose; a larger figure is clamped to it. */
export const MAX_RETRY_AFTER_MS = 5 * 60_000;

/**
 * The delay before reconnect attempt number `attempt` (0 for the first retry after a drop): capped exponential
 * backoff with full jitter, `random() * min(maxMs, baseMs * 2^attempt)`. `random` returns a number in [0, 1)
 * (Math.random in production; injected by tests).
 */
export function backoffDelay(attempt: number, random: () => number, options: BackoffOptions = {}): number {
  const base = options.baseMs ?? DEFAULT_BACKOFF_BASE_MS;
  const max = options.maxMs ?? DEFAULT_BACKOFF_MAX_MS;
  // Past 2^30 the ceiling is the cap anyway; bounding the exponent keeps the arithmetic finite.
  const ceiling = Math.min(max, base * 2 ** Math.min(Math.max(attempt, 0), 30));
  return Math.floor(random() * ceiling);
}

/**
 * Reads the delay from a 4029 close reason. Accepted: a number with an optional unit, `ms` or `s` (seconds when
 * no unit is given, as in HTTP's Retry-After), anywhere in the reason: "retry after 2s", "1500ms", "3".
 * Returns `undefined` when the reason holds no number. Clamped to [0, {@link MAX_RETRY_AFTER_MS}].
 */
export function parseRetryAfter(reason: string): number | undefined {
  const m = /(\d+(?:\.\d+)?)\s*(ms|s)?\b/i.exec(reason);
  if (!m) return undefined;
  const n = Number(m[1]);
  const ms = m[2]?.toLowerCase() === 'ms' ? n : n * 1000;
  return Math.min(Math.max(Math.round(ms), 0), MAX_RETRY_AFTER_MS);
}

/** What the client does after a connection closes. */
export type CloseAction =
  /** Reconnect after the backoff delay for the current attempt. */
  | { kind: 'backoff' }
  /** Reconnect at once (through the router); repeated in a row, the backoff applies. */
  | { kind: 'immediate' }
  /** Ask `getToken` for a fresh token, then reconnect as for `immediate`. */
  | { kind: 'reauth' }
  /** Wait exactly this long (the server said so), then reconnect. */
  | { kind: 'wait'; delayMs: number }
  /** Tell the user (a frame was too large), then reconnect with backoff. */
  | { kind: 'report'; message: string }
  /** Stop: reconnecting cannot help. `message` says why. */
  | { kind: 'stop'; message: string };

/** Maps a close code and reason to the client's next step, following the table in docs/protocol.md §5. */
export function closeAction(code: number, reason: string): CloseAction {
  const why = reason ? `: ${reason}` : '';
  switch (code) {
    case CloseCode.Moved:
      return { kind: 'immediate' };
    case CloseCode.Unauthorized:
      return { kind: 'reauth' };
    case CloseCode.ProtocolError:
      return { kind: 'stop', message: `protocol error${why} (reload the page)` };
    case CloseCode.Forbidden:
      return { kind: 'stop', message: `no access to this space${why}` };
    case CloseCode.TooLarge:
      return { kind: 'report', message: `a change was too large for the server${why}` };
    case CloseCode.RateLimited: {
      const delayMs = parseRetryAfter(reason);
      return delayMs === undefined ? { kind: 'backoff' } : { kind: 'wait', delayMs };
    }
    default:
      // 1000 (the server ended the session, but this client still wants the space), 1001 going away,
      // 1006 abnormal, 1011 internal error, 4008 too slow, and codes this client does not know.
      return { kind: 'backoff' };
  }
}

// Where the app gets its connection tokens (docs/protocol.md §1, docs/security.md).
//
// Locally (`make dev`) the router hands out tokens at POST /api/dev/token. A real app replaces `devToken` with a
// call to its own backend, which issues a token after its own login (see README.md, "Tokens").

import type { TokenReason } from '../sync';

/** Refresh a token this long before it expires, so a reconnect never presents an expired one. */
const REFRESH_MARGIN_MS = 60_000;

const USER_KEY = 'spaceport-dev-user';

interface Cached {
  token: string;
  expiresAt: number;
}

let cached: Cached | undefined;
let devTokensOff = false;

/** A stable user ID for this browser profile in development, so that its tabs are one user. */
function devUser(): string {
  let user = localStorage.getItem(USER_KEY);
  if (!user) {
    user = `dev-${crypto.randomUUID().slice(0, 8)}`;
    localStorage.setItem(USER_KEY, user);
  }
  return user;
}

/**
 * getToken for ReplicacheSocket: the cached token while it is fresh, a new one when it is about to expire or the
 * server refused it (4001). No token when the router serves no development tokens (auth off).
 */
export async function devToken(reason: TokenReason): Promise<string | null> {
  if (devTokensOff) return null;
  if (cached && reason !== 'unauthorized' && cached.expiresAt - Date.now() > REFRESH_MARGIN_MS) return cached.token;
  const res = await fetch('/api/dev/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify({ user: devUser() }),
  });
  if (res.status === 404 || res.status === 405) {
    devTokensOff = true;
    return null;
  }
  if (!res.ok) throw new Error(`token endpoint answered ${res.status}`);
  const body = (await res.json()) as { token: string; expiresAt: string };
  cached = { token: body.token, expiresAt: Date.parse(body.expiresAt) };
  return cached.token;
}

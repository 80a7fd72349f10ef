// The router's HTTP API for spaces (docs/protocol.md §1b).

export interface SpaceInfo {
  id: string;
  app: string;
  machine: string;
  createdAt?: string;
}

/** An API answer other than success, with the server's error code when it sent one. */
export class APIError extends Error {
  override name = 'APIError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

async function call<T>(path: string, init?: RequestInit): Promise<T> {
  const res = await fetch(path, { ...init, headers: { Accept: 'application/json', ...init?.headers } });
  if (!res.ok) {
    let code = `http_${res.status}`;
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = (await res.json()) as { error?: string; message?: string };
      if (body.error) code = body.error;
      if (body.message) message = body.message;
    } catch {
      // Not JSON: keep the status line.
    }
    throw new APIError(res.status, code, message);
  }
  return (await res.json()) as T;
}

export async function listSpaces(signal?: AbortSignal): Promise<SpaceInfo[]> {
  const body = await call<{ spaces: SpaceInfo[] | null }>('/api/spaces', { signal });
  return body.spaces ?? [];
}

export function createSpace(): Promise<SpaceInfo> {
  return call<SpaceInfo>('/api/spaces', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: '{}',
  });
}

export function getSpace(id: string, signal?: AbortSignal): Promise<SpaceInfo> {
  return call<SpaceInfo>(`/api/spaces/${encodeURIComponent(id)}`, { signal });
}

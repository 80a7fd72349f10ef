// The connection status a UI shows, as a tiny observable store (fits React's useSyncExternalStore).

/**
 * - `connecting`: opening the WebSocket or waiting for `welcome`.
 * - `live`: welcomed; pushes, pulls and pokes flow.
 * - `offline`: no connection; a reconnect is scheduled in `retryInMs` (or the transport was closed).
 * - `error`: stopped for good (forbidden, protocol error); `reason` says why. Reloading the page starts over.
 */
export type ConnectionState = 'connecting' | 'live' | 'offline' | 'error';

export interface ConnectionStatus {
  readonly state: ConnectionState;
  /** Why the state is `offline` or `error`. */
  readonly reason?: string;
  /** When `offline`: the delay, in ms, before the next connection attempt began to count down. */
  readonly retryInMs?: number;
  /** The machine serving the space, from the last `welcome` (kept while reconnecting). */
  readonly machineID?: string;
  /** That machine's region, from the last `welcome`. */
  readonly region?: string;
  /** The last problem reported without ending the session (a refused request, a frame too large). */
  readonly lastError?: string;
}

export type StatusListener = (status: ConnectionStatus) => void;

/** Holds the current status; each change makes a new frozen object, so identity tells whether it changed. */
export class StatusStore {
  #status: ConnectionStatus;
  readonly #listeners = new Set<StatusListener>();

  constructor(initial: ConnectionStatus) {
    this.#status = Object.freeze({ ...initial });
  }

  get(): ConnectionStatus {
    return this.#status;
  }

  /** Merges `change` into the status and tells the listeners. Keys set to `undefined` are removed. */
  update(change: Partial<ConnectionStatus>): void {
    const next: Record<string, unknown> = { ...this.#status, ...change };
    for (const k of Object.keys(next)) if (next[k] === undefined) delete next[k];
    this.#status = Object.freeze(next as unknown as ConnectionStatus);
    for (const l of [...this.#listeners]) l(this.#status);
  }

  subscribe(listener: StatusListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}

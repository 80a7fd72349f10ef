// An in-memory stand-in for one Spaceport backend space, speaking the wire protocol (docs/protocol.md) over
// in-process sockets. It lets unit tests run the real Replicache client and the transport together. It follows
// the protocol's server rules (versions, tombstones, per-connection sentCookie, pokes to every connection after a
// commit, lastMutationID rules) but is not the Go server: the end-to-end tests against the real stack are those.

import type { Cookie, PatchOperation, PullResponseOKV1, PushRequestV1, ReadonlyJSONValue } from 'replicache';
import { mutators as clientMutators, type MutatorTx } from '../../src/mutators';
import type { WebSocketLike } from '../../src/sync';

type Frame = Record<string, unknown> & { type: string };

interface Entry {
  value: ReadonlyJSONValue | undefined; // undefined: tombstone
  version: number;
}

interface ClientRow {
  group: string;
  lmid: number;
  version: number;
}

/** The server side of one connection. */
class ServerConn {
  group: string | undefined;
  sentCookie: number | null = null;
  constructor(readonly socket: MemSocket) {}
}

/** The client side of an in-process WebSocket: what the transport sees. Delivery is asynchronous, as on a network. */
export class MemSocket implements WebSocketLike {
  readyState = 0;
  onopen: WebSocketLike['onopen'] = null;
  onmessage: WebSocketLike['onmessage'] = null;
  onclose: WebSocketLike['onclose'] = null;
  onerror: WebSocketLike['onerror'] = null;
  conn: ServerConn | undefined;

  constructor(
    readonly url: string,
    private readonly server: MemSpaceServer,
  ) {}

  send(data: string): void {
    if (this.readyState !== 1) throw new Error('not open');
    setTimeout(() => this.conn && this.server.receive(this.conn, data), 0);
  }

  close(): void {
    this.drop(1000, '');
  }

  /** Either side ends the connection; the client hears a close event. */
  drop(code: number, reason: string): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    if (this.conn) this.server.conns.delete(this.conn);
    this.conn = undefined;
    setTimeout(() => this.onclose?.call(this as unknown as WebSocket, { code, reason } as CloseEvent), 0);
  }

  deliver(frame: Frame): void {
    const data = JSON.stringify(frame);
    setTimeout(() => {
      if (this.readyState === 1) this.onmessage?.call(this as unknown as WebSocket, { data } as MessageEvent);
    }, 0);
  }
}

/** A transaction over the space's entries that keeps its writes aside until committed. */
class StagedTx implements MutatorTx {
  readonly writes = new Map<string, ReadonlyJSONValue | undefined>();
  constructor(private readonly entries: Map<string, Entry>) {}
  async get(key: string) {
    return this.writes.has(key) ? this.writes.get(key) : this.entries.get(key)?.value;
  }
  async set(key: string, value: ReadonlyJSONValue) {
    this.writes.set(key, structuredClone(value));
  }
  async del(key: string) {
    const had = (await this.get(key)) !== undefined;
    this.writes.set(key, undefined);
    return had;
  }
  scan({ prefix }: { prefix: string }) {
    const keys = new Set([...this.entries.keys(), ...this.writes.keys()]);
    const sorted = [...keys].filter((k) => k.startsWith(prefix)).sort();
    return {
      values: async function* (this: StagedTx) {
        for (const k of sorted) {
          const v = await this.get(k);
          if (v !== undefined) yield v;
        }
      }.bind(this),
    };
  }
}

export class MemSpaceServer {
  readonly spaceID = 'list-1';
  readonly machineID = 'mem-machine-1';
  version = 0;
  readonly entries = new Map<string, Entry>();
  readonly clients = new Map<string, ClientRow>();
  readonly conns = new Set<ServerConn>();
  readonly sockets: MemSocket[] = [];
  /** Frames received, by type: lets tests see how often clients had to pull explicitly. */
  readonly received: Record<string, number> = {};
  /** While down, new connections fail at once (as a refused upgrade does: close 1006). */
  down = false;

  /** Pass as the transport's createWebSocket. */
  readonly connect = (url: string): MemSocket => {
    const socket = new MemSocket(url, this);
    this.sockets.push(socket);
    setTimeout(() => {
      if (this.down) {
        socket.drop(1006, '');
        return;
      }
      const conn = new ServerConn(socket);
      socket.conn = conn;
      this.conns.add(conn);
      socket.readyState = 1;
      socket.onopen?.call(socket as unknown as WebSocket, new Event('open'));
    }, 0);
    return socket;
  };

  /** Closes every connection with `code` (1001 for a restart, 4004 for a move). */
  closeAll(code: number, reason = ''): void {
    for (const c of [...this.conns]) c.socket.drop(code, reason);
  }

  /** The space's live entries, as a client view. */
  view(): Record<string, ReadonlyJSONValue> {
    const out: Record<string, ReadonlyJSONValue> = {};
    for (const [k, e] of [...this.entries].sort(([a], [b]) => (a < b ? -1 : 1))) if (e.value !== undefined) out[k] = e.value;
    return out;
  }

  receive(conn: ServerConn, data: string): void {
    const frame = JSON.parse(data) as Frame;
    this.received[frame.type] = (this.received[frame.type] ?? 0) + 1;
    switch (frame.type) {
      case 'hello': {
        conn.group = frame.clientGroupID as string;
        conn.socket.deliver({ type: 'welcome', spaceID: this.spaceID, machineID: this.machineID, region: 'mem', protocol: 1 });
        const base = frame.cookie as Cookie as number | null;
        conn.socket.deliver({ type: 'poke', baseCookie: base, body: this.diff(base, conn.group) });
        conn.sentCookie = this.version;
        break;
      }
      case 'push':
        void this.push(frame.body as PushRequestV1).then(() => {
          conn.socket.deliver({ type: 'pushed', id: frame.id as string });
          this.pokeAll();
        });
        break;
      case 'pull': {
        const body = frame.body as { cookie: number | null; clientGroupID: string };
        conn.socket.deliver({ type: 'pulled', id: frame.id as string, body: this.diff(body.cookie, body.clientGroupID) });
        if (body.clientGroupID === conn.group) conn.sentCookie = this.version;
        break;
      }
      case 'ping':
        conn.socket.deliver({ type: 'pong' });
        break;
      default:
        conn.socket.drop(4000, `unknown frame type ${frame.type}`);
    }
  }

  async push(body: PushRequestV1): Promise<void> {
    const writes = new Map<string, ReadonlyJSONValue | undefined>();
    const lmids = new Map<string, number>();
    const work = new Map([...this.entries].map(([k, e]) => [k, { ...e }]));
    for (const m of body.mutations) {
      const lmid = lmids.get(m.clientID) ?? this.clients.get(m.clientID)?.lmid ?? 0;
      if (m.id <= lmid) continue;
      if (m.id > lmid + 1) break;
      const tx = new StagedTx(work);
      const fn = clientMutators[m.name as keyof typeof clientMutators] as ((tx: MutatorTx, args: unknown) => Promise<void>) | undefined;
      try {
        if (!fn) throw new Error(`unknown mutator ${m.name}`);
        await fn(tx, m.args);
        for (const [k, v] of tx.writes) {
          writes.set(k, v);
          work.set(k, { value: v, version: 0 });
        }
      } catch {
        // A refused mutation writes nothing but still counts as processed.
      }
      lmids.set(m.clientID, m.id);
    }
    if (lmids.size === 0) return; // Only re-sent mutations: nothing changes, the version stays.
    this.version++;
    for (const [k, v] of writes) this.entries.set(k, { value: v, version: this.version });
    for (const [id, lmid] of lmids) this.clients.set(id, { group: body.clientGroupID, lmid, version: this.version });
  }

  diff(cookie: number | null, group: string): PullResponseOKV1 {
    const full = cookie === null || cookie > this.version;
    const patch: PatchOperation[] = full ? [{ op: 'clear' }] : [];
    for (const [key, e] of this.entries) {
      if (!full && e.version <= cookie!) continue;
      if (e.value !== undefined) patch.push({ op: 'put', key, value: e.value });
      else if (!full) patch.push({ op: 'del', key });
    }
    const lastMutationIDChanges: Record<string, number> = {};
    for (const [id, c] of this.clients) if (c.group === group && (full || c.version > cookie!)) lastMutationIDChanges[id] = c.lmid;
    return { cookie: this.version, lastMutationIDChanges, patch };
  }

  pokeAll(): void {
    for (const conn of this.conns) {
      if (conn.group === undefined || conn.sentCookie === this.version) continue;
      conn.socket.deliver({ type: 'poke', baseCookie: conn.sentCookie, body: this.diff(conn.sentCookie, conn.group) });
      conn.sentCookie = this.version;
    }
  }
}

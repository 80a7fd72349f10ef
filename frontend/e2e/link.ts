// A network link between one browser page and the edge that a test can cut: a TCP relay on 127.0.0.1. The page
// is opened at the relay's address, so its page loads, API calls and WebSocket all go through it.
//
// Why: Chromium's offline emulation (Playwright's context.setOffline, i.e. CDP Network.emulateNetworkConditions
// with offline: true) fails new requests with net::ERR_INTERNET_DISCONNECTED and sets navigator.onLine to false,
// but leaves an open WebSocket open: it holds the frames the page sends and releases them when the emulation
// ends, so the page stays "live" and never goes offline. Cutting the TCP connections here ends the WebSocket
// the way a lost network does, and the page sees a real close.

import { createServer, connect, type Server, type Socket } from 'node:net';

export class Link {
  readonly #server: Server;
  readonly #upstream: { host: string; port: number };
  readonly #sockets = new Set<Socket>();
  #up = true;
  /** Connections from the browser relayed to the edge so far. */
  relayed = 0;
  /** Connections from the browser refused while the link was cut. */
  refused = 0;

  private constructor(server: Server, upstream: { host: string; port: number }) {
    this.#server = server;
    this.#upstream = upstream;
    server.on('connection', (client) => this.#relay(client));
  }

  /** Starts a relay to the origin `target` (http://host:port) on a free port of 127.0.0.1. */
  static async open(target: string): Promise<Link> {
    const u = new URL(target);
    const server = createServer();
    const link = new Link(server, { host: u.hostname, port: Number(u.port) });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    return link;
  }

  /** The origin to open pages at. */
  get origin(): string {
    return `http://127.0.0.1:${(this.#server.address() as { port: number }).port}`;
  }

  /** Cuts the link: every open connection is destroyed at once and new ones are refused until restore(). */
  cut(): void {
    this.#up = false;
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
  }

  restore(): void {
    this.#up = true;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #relay(client: Socket): void {
    if (!this.#up) {
      this.refused++;
      client.destroy();
      return;
    }
    this.relayed++;
    const server = connect(this.#upstream);
    this.#sockets.add(client);
    this.#sockets.add(server);
    const end = () => {
      client.destroy();
      server.destroy();
      this.#sockets.delete(client);
      this.#sockets.delete(server);
    };
    for (const s of [client, server]) {
      s.on('error', end);
      s.on('close', end);
    }
    client.pipe(server);
    server.pipe(client);
  }
}

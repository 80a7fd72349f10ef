// What the end-to-end tests drive: Debian's chromium through playwright-core, list pages by their test ids
// (frontend/README.md), and lists created through the router's API.

import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Locator, type Page } from 'playwright-core';
import { Link } from './link';

/** The browser: Debian's chromium (`apt-get install chromium`); E2E_CHROMIUM points elsewhere. Never downloaded. */
export const CHROMIUM = process.env.E2E_CHROMIUM ?? '/usr/bin/chromium';
/** How long a change may take to show on another page, or any page condition to come true. Generous: 2 loaded cores. */
export const SYNC_TIMEOUT_MS = 30_000;
/** How long pages may take to come back after a backend machine is killed (restart, reload of the space, backoff). */
export const RECONNECT_TIMEOUT_MS = 60_000;
/** How often conditions are checked. */
const POLL_MS = 100;

const RESULTS_DIR = fileURLToPath(new URL('../test-results/', import.meta.url));

export async function launchBrowser(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no browser at ${CHROMIUM}: install Debian's chromium (apt-get install chromium) or set E2E_CHROMIUM`);
  }
  // Playwright gives every launch a fresh temporary profile (user data dir) and removes it on close; each test
  // page gets its own context (its own storage, so its own Replicache client group).
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
}

/** A fresh list id, valid for the API (1..64 of [A-Za-z0-9_-]). */
export function newListID(label: string): string {
  return `e2e-${label}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Creates a list through the router (POST /api/spaces); returns the machine it was placed on. */
export async function createList(baseURL: string, id: string): Promise<{ id: string; machine: string }> {
  const res = await fetch(new URL('/api/spaces', baseURL), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify({ id }),
    signal: AbortSignal.timeout(SYNC_TIMEOUT_MS),
  });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`POST /api/spaces {"id":"${id}"}: ${res.status} ${text}`);
  const body = JSON.parse(text) as { id: string; machine: string };
  if (body.id !== id || !body.machine) throw new Error(`POST /api/spaces: unexpected answer ${text}`);
  return body;
}

/**
 * Checks `read()` every POLL_MS until `ok` accepts its value, and returns that value; fails after `timeoutMs`
 * with the last value (or error) seen, so a failure says what the page showed instead.
 */
export async function until<T>(
  what: string,
  read: () => Promise<T>,
  ok: (v: T) => boolean,
  timeoutMs = SYNC_TIMEOUT_MS,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = 'nothing read yet';
  for (;;) {
    try {
      const v = await read();
      if (ok(v)) return v;
      last = JSON.stringify(v);
    } catch (e) {
      last = `error: ${(e as Error).message.split('\n')[0]}`;
    }
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}; last seen: ${last}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

const sameList = (want: readonly string[]) => (got: readonly string[]) =>
  got.length === want.length && got.every((t, i) => t === want[i]);

/** One browser page on a list, in a browser context of its own (a separate "device"). */
export class ListView {
  /** Uncaught exceptions in the page. */
  readonly errors: string[] = [];
  /** Console messages and WebSocket events, for the failure report. */
  readonly log: string[] = [];
  /** WebSockets the page opened and that closed (including failed attempts). */
  wsOpened = 0;
  wsClosed = 0;

  constructor(
    readonly name: string,
    readonly context: BrowserContext,
    readonly page: Page,
  ) {
    const t0 = Date.now();
    // Connection tokens stay out of the saved logs.
    const note = (s: string) =>
      this.log.push(`${((Date.now() - t0) / 1000).toFixed(3)} ${s.replace(/([?&]token=)[^&\s'"]+/g, '$1REDACTED')}`);
    page.on('console', (m) => note(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => {
      this.errors.push(e.stack ?? e.message);
      note(`pageerror: ${e.message}`);
    });
    page.on('websocket', (ws) => {
      this.wsOpened++;
      note(`websocket open ${ws.url()}`);
      ws.on('socketerror', (e) => note(`websocket error: ${e}`));
      ws.on('close', () => {
        this.wsClosed++;
        note('websocket closed');
      });
    });
  }

  testId(id: string): Locator {
    return this.page.getByTestId(id);
  }

  /** The connection state (`data-state` of `connection-status`). */
  state(): Promise<string | null> {
    return this.testId('connection-status').getAttribute('data-state', { timeout: SYNC_TIMEOUT_MS });
  }

  async waitState(state: string, timeoutMs = SYNC_TIMEOUT_MS): Promise<void> {
    await until(`${this.name} to be ${state}`, () => this.state(), (s) => s === state, timeoutMs);
  }

  /** The machine id from the last welcome, as the page shows it. */
  async machineID(): Promise<string> {
    return (await this.testId('machine-id').textContent({ timeout: SYNC_TIMEOUT_MS })) ?? '';
  }

  /** The todos' texts, in the order shown. */
  todoTexts(): Promise<string[]> {
    return this.page.$$eval('[data-testid="todo-text"]', (els) => els.map((e) => e.textContent ?? ''));
  }

  /** Waits until the page shows exactly these todos, in this order. */
  async waitTodos(want: readonly string[], timeoutMs = SYNC_TIMEOUT_MS): Promise<void> {
    await until(`${this.name} to show todos ${JSON.stringify(want)}`, () => this.todoTexts(), sameList(want), timeoutMs);
  }

  item(text: string): Locator {
    return this.testId('todo-item').filter({ has: this.page.getByTestId('todo-text').getByText(text, { exact: true }) });
  }

  /** Completed flags by todo text. */
  completed(): Promise<Record<string, boolean>> {
    return this.page.$$eval('[data-testid="todo-item"]', (els) =>
      Object.fromEntries(
        els.map((e) => [e.querySelector('[data-testid="todo-text"]')?.textContent ?? '', e.getAttribute('data-completed') === 'true']),
      ),
    );
  }

  async waitCompleted(text: string, done: boolean, timeoutMs = SYNC_TIMEOUT_MS): Promise<void> {
    await until(`${this.name} to show "${text}" ${done ? 'done' : 'not done'}`, () => this.completed(), (c) => c[text] === done, timeoutMs);
  }

  async addTodo(text: string): Promise<void> {
    const input = this.testId('new-todo');
    await input.fill(text);
    await input.press('Enter');
  }

  async editTodo(from: string, to: string): Promise<void> {
    await this.item(from).getByTestId('todo-edit').click();
    const input = this.testId('todo-edit-input');
    await input.fill(to);
    await input.press('Enter');
  }

  async setCompleted(text: string, done: boolean): Promise<void> {
    await this.item(text).getByTestId('todo-toggle').setChecked(done);
  }

  async deleteTodo(text: string): Promise<void> {
    await this.item(text).getByTestId('todo-delete').click();
  }

  async counter(): Promise<number> {
    return Number(await this.testId('counter-value').textContent({ timeout: SYNC_TIMEOUT_MS }));
  }

  async waitCounter(n: number, timeoutMs = SYNC_TIMEOUT_MS): Promise<void> {
    await until(`${this.name}'s counter to show ${n}`, () => this.counter(), (v) => v === n, timeoutMs);
  }

  /** Presses `+1` `times` times, one real click after another. */
  async increment(times: number): Promise<void> {
    const button = this.testId('counter-increment');
    for (let i = 0; i < times; i++) await button.click();
  }
}

/** The pages (and links) of one test; on failure it saves their screenshots and logs, then closes them. */
export class Session {
  readonly views: ListView[] = [];
  readonly #links: Link[] = [];

  constructor(
    readonly browser: Browser,
    readonly baseURL: string,
  ) {}

  /** Opens `/list/<id>` in a new context, at the edge or at `origin` (a Link's), and waits until it is live. */
  async open(name: string, listID: string, opts: { origin?: string; waitLive?: boolean } = {}): Promise<ListView> {
    const context = await this.browser.newContext({ viewport: { width: 900, height: 900 } });
    context.setDefaultTimeout(SYNC_TIMEOUT_MS);
    const page = await context.newPage();
    const view = new ListView(name, context, page);
    this.views.push(view);
    await page.goto(new URL(`/list/${listID}`, opts.origin ?? this.baseURL).toString());
    if (opts.waitLive !== false) await view.waitState('live');
    return view;
  }

  /** A cuttable link to the edge for one page (see Link); closed with the session. */
  async link(): Promise<Link> {
    const link = await Link.open(this.baseURL);
    this.#links.push(link);
    return link;
  }

  /**
   * Ends the test: saves a screenshot and a log of every page into test-results/ when it failed (or a page
   * threw), then closes everything. A page's uncaught exception fails an otherwise passing test.
   */
  async finish(testName: string, failed: boolean): Promise<void> {
    const pageErrors = this.views.flatMap((v) => v.errors.map((e) => `${v.name}: ${e}`));
    try {
      if (failed || pageErrors.length > 0) await this.#saveArtifacts(testName);
    } finally {
      await Promise.allSettled(this.views.map((v) => v.context.close()));
      await Promise.allSettled(this.#links.map((l) => l.close()));
    }
    if (!failed && pageErrors.length > 0) throw new Error(`uncaught exceptions in pages:\n${pageErrors.join('\n')}`);
  }

  async #saveArtifacts(testName: string): Promise<void> {
    mkdirSync(RESULTS_DIR, { recursive: true });
    const base = testName.replace(/[^A-Za-z0-9-]+/g, '-').replace(/^-|-$/g, '').slice(0, 80);
    for (const v of this.views) {
      const file = `${RESULTS_DIR}${base}-${v.name}`;
      try {
        await v.page.screenshot({ path: `${file}.png`, fullPage: true, timeout: 10_000 });
      } catch (e) {
        v.log.push(`(screenshot failed: ${(e as Error).message.split('\n')[0]})`);
      }
      writeFileSync(`${file}.log`, v.log.join('\n') + '\n');
    }
  }
}

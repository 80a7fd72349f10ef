// The whole local system, started exactly as `make dev` starts it: scripts/dev with its own state folder, a free
// Postgres port and a free edge address. It builds bin/ (and frontend/dist unless SKIP_FRONTEND=1 is set and a
// build exists), starts Postgres, then flylocal with one router and three backend machines.

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { machineProcesses, parseFlylocalLine, type StackInfo } from './stacklog';

/** How long scripts/dev may take to build and reach flylocal's `ready` line (a cold Go build on 2 cores). */
export const START_TIMEOUT_MS = 5 * 60_000;
/** How long after `ready` the three backend machines may take to show as live in the directory. */
export const MACHINES_TIMEOUT_MS = 60_000;
/** How long scripts/dev may take to stop after SIGTERM: flylocal gives machines up to 30 s, then Postgres stops. */
export const STOP_TIMEOUT_MS = 60_000;
/** Backend machines in fly/flylocal.dev.json. */


export interface StackOptions {
  /** The repository root (holds scripts/dev). */
  repoRoot: string;
  /** Where the stack's output goes, line by line. */
  logPath: string;
}

/** A running scripts/dev and what it printed. */
export class Stack {
  readonly info: StackInfo;
  readonly #child: ChildProcess;
  readonly #devDir: string;
  readonly #exited: Promise<void>;
  readonly #log: LogFile;
  #exitStatus?: string;

  private constructor(child: ChildProcess, devDir: string, info: StackInfo, log: LogFile) {
    this.#child = child;
    this.#devDir = devDir;
    this.info = info;
    this.#log = log;
    this.#exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.once('exit', () => resolve());
    });
    void this.#exited.then(() => {
      this.#exitStatus = child.signalCode ?? String(child.exitCode);
    });
  }

  /** Starts scripts/dev and resolves once flylocal is ready and every backend machine is live in the directory. */
  static async start(opts: StackOptions): Promise<Stack> {
    const devDir = mkdtempSync(join(tmpdir(), 'spaceport-e2e-'));
    const pgPort = await freePort();
    let edgePort = await freePort();
    while (edgePort === pgPort) edgePort = await freePort();

    const log = new LogFile(opts.logPath);
    const child = spawn(join(opts.repoRoot, 'scripts', 'dev'), [], {
      cwd: opts.repoRoot,
      env: {
        ...devEnvironment(),
        DEV_DIR: devDir,
        DEV_PG_PORT: String(pgPort),
        DEV_LISTEN: `127.0.0.1:${edgePort}`,
      },
      // Not detached: a Ctrl-C in the terminal reaches scripts/dev too, which then stops everything itself.
      stdio: ['ignore', 'pipe', 'pipe'],
    });

    let onReady: (url: string) => void = () => {};
    const ready = new Promise<string>((resolve) => (onReady = resolve));
    const onLine = (line: string) => {
      log.write(line);
      const f = parseFlylocalLine(line);
      if (f?.msg === 'ready' && f.url) onReady(f.url);
    };
    log.drained = Promise.all([splitLines(child.stdout!, onLine), splitLines(child.stderr!, onLine)]).then(() => {});

    const stack = new Stack(child, devDir, { baseURL: '', logPath: opts.logPath }, log);
    // Whatever ends this process, scripts/dev is told to stop (it stops flylocal, the machines and Postgres).
    const onExit = () => stack.#signal('SIGTERM');
    process.once('exit', onExit);
    void stack.#exited.then(() => process.off('exit', onExit));

    try {
      const url = await raceDeadline(
        ready,
        stack.#exited.then(() => {
          throw new Error(`scripts/dev exited (${stack.#exitStatus}) before flylocal was ready`);
        }),
        START_TIMEOUT_MS,
        'flylocal ready line',
      );
      stack.info.baseURL = url;
      await waitRouterReady(url, MACHINES_TIMEOUT_MS);
    } catch (e) {
      const stopError = await stack.stop().then(
        () => '',
        (err: Error) => `\nstopping it: ${err.message}`,
      );
      throw new Error(`${(e as Error).message}${stopError}\n--- last lines of ${opts.logPath} ---\n${log.tail.join('\n')}`);
    }
    return stack;
  }

  #signal(sig: NodeJS.Signals): void {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return;
    try {
      this.#child.kill(sig);
    } catch {
      // Already gone.
    }
  }

  /**
   * Stops the stack as Ctrl-C would (SIGTERM to scripts/dev), waits for it, then checks that no process it
   * started is left: every machine process flylocal reported, and anything whose command line names this
   * stack's state folder (flylocal, Postgres). Leftovers are killed and reported as an error.
   */
  async stop(): Promise<void> {
    this.#signal('SIGTERM');
    const stopped = await Promise.race([
      this.#exited.then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), STOP_TIMEOUT_MS).unref()),
    ]);
    if (!stopped) {
      this.#signal('SIGKILL');
      await this.#exited;
    }
    // The last lines may still be in the pipes (a grandchild holding them open must not stall us: bounded).
    await Promise.race([this.#log.drained, new Promise((r) => setTimeout(r, 2_000).unref())]);
    this.#log.close();

    const problems: string[] = [];
    if (!stopped) problems.push(`scripts/dev did not stop within ${STOP_TIMEOUT_MS / 1000} s of SIGTERM; killed`);
    const log = readFileSync(this.info.logPath, 'utf8');
    const leftovers = new Map<number, string>();
    for (const p of machineProcesses(log)) {
      const cmd = commandLine(p.pid);
      // The pid may have been reused by an unrelated process: only a bin/ program counts as ours.
      if (cmd !== undefined && /\bbin\/(backend|router)\b/.test(cmd)) leftovers.set(p.pid, `${p.app} ${p.machine}: ${cmd}`);
    }
    for (const pid of processesNaming(this.#devDir)) leftovers.set(pid, commandLine(pid) ?? '?');
    for (const [pid] of leftovers) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Exited meanwhile.
      }
    }
    if (leftovers.size > 0) {
      problems.push(
        `processes left behind after scripts/dev exited (killed now):\n` +
          [...leftovers].map(([pid, what]) => `  pid ${pid}: ${what}`).join('\n'),
      );
    }
    if (leftovers.size === 0) rmSync(this.#devDir, { recursive: true, force: true });
    if (problems.length > 0) throw new Error(problems.join('\n'));
  }
}

/** The stack's log file, written line by line as lines come (the tests read it meanwhile), and its last lines. */
class LogFile {
  readonly tail: string[] = [];
  drained: Promise<void> = Promise.resolve();
  #fd: number | undefined;

  constructor(path: string) {
    this.#fd = openSync(path, 'w');
  }

  write(line: string): void {
    this.tail.push(line);
    if (this.tail.length > 60) this.tail.shift();
    if (this.#fd !== undefined) writeSync(this.#fd, line + '\n');
  }

  close(): void {
    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = undefined;
  }
}

/** Calls onLine for each line of the stream; resolves when the stream ends. */
function splitLines(stream: NodeJS.ReadableStream, onLine: (line: string) => void): Promise<void> {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  return new Promise((resolve) => {
    stream.on('end', () => {
      if (buf) onLine(buf);
      buf = '';
      resolve();
    });
    stream.on('error', () => resolve());
  });
}

/**
 * The environment scripts/dev gets: ours without what vitest sets for its tests (NODE_ENV=test, VITEST*, TEST),
 * which would otherwise reach `vite build` and make frontend/dist a development build of React.
 */
function devEnvironment(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k === 'NODE_ENV' || k === 'TEST' || k.startsWith('VITEST')) delete env[k];
  return env;
}

/** A TCP port free on 127.0.0.1 right now (the OS picks it). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

async function raceDeadline<T>(p: Promise<T>, failure: Promise<never>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms / 1000} s`)), ms);
  });
  try {
    return await Promise.race([p, failure, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls the router's readiness (directory reachable). Backend machines need not exist yet: with dedicated placement
 * (`make dev`'s default) a machine is created with each space, when the tests create theirs.
 */
async function waitRouterReady(baseURL: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  let last = 'no answer yet';
  while (Date.now() < deadline) {
    try {
      const res = await fetch(new URL('/readyz', baseURL), { signal: AbortSignal.timeout(5_000) });
      last = `${res.status} ${await res.text()}`;
      if (res.ok) return;
    } catch (e) {
      last = String(e);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`router not ready (GET /readyz) within ${ms / 1000} s; last: ${last}`);
}

/** A process's command line, or undefined when it is gone (or not visible). */
function commandLine(pid: number): string | undefined {
  try {
    const raw = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return raw ? raw.split('\0').join(' ').trim() : undefined;
  } catch {
    return undefined;
  }
}

/** Pids of the processes whose command line contains `text` (a unique temporary folder: only ours can). */
function processesNaming(text: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    const cmd = commandLine(pid);
    if (cmd?.includes(text)) out.push(pid);
  }
  return out;
}

// Reading what the local stack (scripts/dev, then flylocal) prints. Used by the global setup, which owns the
// stack, and by the tests, which read the same log file to find a machine's process.

import { readFileSync } from 'node:fs';

/** What the global setup hands the tests (vitest `provide`/`inject`). */
export interface StackInfo {
  /** The edge's URL, as flylocal's `ready` line gives it: `http://127.0.0.1:PORT`. */
  baseURL: string;
  /** Everything scripts/dev and flylocal (with its machines) printed, one line per line, written as it comes. */
  logPath: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    stack: StackInfo;
  }
}

/**
 * Parses one of flylocal's own log lines (slog's text handler: `key=value`, values with spaces in quotes) into
 * its fields. Returns undefined for other lines, including the machines' output, which flylocal prefixes with
 * `[app machine-id] `, so a machine cannot print a line that passes for flylocal's.
 */
export function parseFlylocalLine(line: string): Record<string, string> | undefined {
  if (line.startsWith('[')) return undefined;
  const fields: Record<string, string> = {};
  const re = /([A-Za-z0-9_.-]+)=(?:"((?:[^"\\]|\\.)*)"|(\S*))/g;
  for (const m of line.matchAll(re)) {
    fields[m[1]!] = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3]!;
  }
  return fields.component === 'flylocal' ? fields : undefined;
}

/** A machine process flylocal started (each restart after a crash is a new one). */
export interface MachineProcess {
  app: string;
  machine: string;
  pid: number;
  port: number;
}

/** The `machine process started` lines of a log, in order. */
export function machineProcesses(log: string): MachineProcess[] {
  const out: MachineProcess[] = [];
  for (const line of log.split('\n')) {
    const f = parseFlylocalLine(line);
    if (f?.msg !== 'machine process started') continue;
    const pid = Number(f.pid);
    if (!f.app || !f.machine || !Number.isInteger(pid) || pid <= 0) continue;
    out.push({ app: f.app, machine: f.machine, pid, port: Number(f.port) });
  }
  return out;
}

/** The processes flylocal started for a machine so far, oldest first, read from the stack's log file. */
export function processesOf(logPath: string, machineID: string): MachineProcess[] {
  return machineProcesses(readFileSync(logPath, 'utf8')).filter((p) => p.machine === machineID);
}

// Real ZEO servers for tests: the project virtualenv's `runzeo` (ZEO 6.2 over a FileStorage,
// pins in test/py/requirements.txt) in a child process, on 127.0.0.1 or a Unix socket, in
// either encoding (pickle: greets b"Z5"; msgpack, runzeo under ZEO_MSGPACK=1: greets b"M5").
//
// Owns: startZeo / stopAllZeo, the registry of servers started here, each server's private
// temp dir (the read-only config file, the Unix socket), readGreeting (a raw look at a
// server's first frame).
//
// Invariants:
//   - startZeo resolves only once a raw connection to the server got the handshake of the
//     requested encoding; otherwise it kills what it started and throws with runzeo's stderr tail
//     (within a bound: opts.timeoutMs, default 20 s);
//   - every server is registered from spawn until stop(): stopAllZeo() (afterEach/afterAll)
//     stops them all, and a process exit SIGKILLs whatever is left — no runzeo outlives the tests;
//   - stop() is SIGTERM, then SIGKILL after STOP_GRACE_MS, and resolves only once the process
//     has exited (pid reaped); it is final (removes the temp dir); kill9() and restart() keep the
//     server's address (same port, same socket path) for the next start;
//   - a TCP server without opts.port gets its port from the kernel (runzeo binds port 0; the port
//     is read back from /proc: runzeo logs only the requested address), so there is no race for a
//     "free" port; restart() binds that port again;
//   - read-only servers never write next to fsPath: runzeo -f opens the FileStorage read-write
//     (.lock, .tmp, .index), so readOnly uses a config file (-C) with <zeo> read-only and
//     <filestorage> read-only, which opens no lock and writes nothing.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { python } from './python.js';

export type ZeoEncoding = 'pickle' | 'msgpack';

export interface ZeoOptions {
  /** The FileStorage runzeo serves (must exist when readOnly). */
  fsPath: string;
  encoding: ZeoEncoding;
  /** Serve read-only: nothing is written next to fsPath (no .lock, .index, .tmp). */
  readOnly?: boolean;
  /** Listen on a Unix socket (in the server's temp dir) instead of 127.0.0.1. */
  unixSocket?: boolean;
  /** TCP port; default: one the kernel picks. */
  port?: number;
  /** Bound on start-up (spawn → greeting); default 20 s. */
  timeoutMs?: number;
}

export interface ZeoServer {
  /** zeo://127.0.0.1:PORT, or zeo:///path/to/sock for a Unix socket (as neo-go and zodburi spell it). */
  readonly zurl: string;
  /** runzeo's -a: "127.0.0.1:PORT" or the socket's path. */
  readonly addr: string;
  readonly encoding: ZeoEncoding;
  /** pid of the current runzeo process (changes on restart). */
  readonly pid: number;
  /** Last STDERR_KEEP characters runzeo wrote to stderr (its log), across restarts. */
  stderr(): string;
  /** SIGTERM, wait, SIGKILL after a bound; resolves when the process is gone. Final. */
  stop(): Promise<void>;
  /** SIGKILL (a crash: no index written, lock file left); restart() brings it back. */
  kill9(): Promise<void>;
  /** Stop gracefully (when running) and start again on the same address. */
  restart(): Promise<void>;
}

const STOP_GRACE_MS = 5_000;
const STDERR_KEEP = 64 * 1024;
const TAIL = 4000;

const live = new Set<Server>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // The last line of defence (a test file that forgot stopAllZeo, a failing hook): on exit only
  // synchronous code runs, so SIGKILL.
  process.on('exit', () => {
    for (const s of live) s.killSync();
  });
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Path of the venv's runzeo (next to its python), or throws saying how to get it. */
export function runzeoPath(): string {
  const p = path.join(path.dirname(python()), 'runzeo');
  if (!existsSync(p)) throw new Error(`${p} is missing: run scripts/setup.sh (the virtualenv's ZEO provides it)`);
  return p;
}

/**
 * Connect to a ZEO address ("HOST:PORT" or a socket path), read the server's first frame (the
 * handshake: 4-byte big-endian length + payload) and close. Resolves with the payload as text
 * ("Z5", "M5"); rejects on connection errors, on EOF before the frame, or after timeoutMs.
 */
export function readGreeting(addr: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = addr.includes('/') ? net.createConnection({ path: addr }) : net.createConnection({ host: hostOf(addr), port: portOf(addr) });
    let buf = Buffer.alloc(0);
    let done = false;
    const finish = (err: Error | null, v?: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(v!);
    };
    const timer = setTimeout(() => finish(new Error(`no greeting from ${addr} within ${timeoutMs} ms (got ${buf.length} bytes)`)), timeoutMs);
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length < 4) return;
      const n = buf.readUInt32BE(0);
      if (n > 64) return finish(new Error(`first frame from ${addr} is ${n} bytes: not a ZEO handshake`));
      if (buf.length >= 4 + n) finish(null, buf.subarray(4, 4 + n).toString('latin1'));
    });
    sock.on('error', (e) => finish(e));
    sock.on('close', () => finish(new Error(`${addr} closed the connection before its greeting (got ${buf.length} bytes)`)));
  });
}

function hostOf(addr: string): string {
  return addr.slice(0, addr.lastIndexOf(':'));
}
function portOf(addr: string): number {
  return Number(addr.slice(addr.lastIndexOf(':') + 1));
}

/** Port of the TCP socket pid listens on (Linux /proc), or undefined while there is none. */
function listeningPort(pid: number): number | undefined {
  const inodes = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) inodes.add(m[1]!);
      } catch {
        // fd closed meanwhile
      }
    }
  } catch {
    return undefined; // process gone
  }
  if (inodes.size === 0) return undefined;
  for (const table of ['tcp', 'tcp6']) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/net/${table}`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      // sl local_address rem_address st ... inode (field 9); st 0A = LISTEN
      if (f.length > 9 && f[3] === '0A' && inodes.has(f[9]!)) return parseInt(f[1]!.split(':')[1]!, 16);
    }
  }
  return undefined;
}

class Server implements ZeoServer {
  readonly encoding: ZeoEncoding;
  private readonly dir: string;
  private readonly configPath?: string;
  private readonly socketPath?: string;
  private port: number;
  private proc?: ChildProcess;
  /** Resolves when the current process has exited (or failed to spawn). */
  private exited?: Promise<void>;
  private gone = true;
  private err = '';
  private finished = false;

  constructor(private readonly opts: ZeoOptions) {
    this.encoding = opts.encoding;
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'wcfs-zeo-'));
    this.port = opts.port ?? 0;
    if (opts.unixSocket) this.socketPath = path.join(this.dir, 'zeo.sock');
    if (opts.readOnly) this.configPath = path.join(this.dir, 'zeo.conf');
  }

  get addr(): string {
    return this.socketPath ?? `127.0.0.1:${this.port}`;
  }
  get zurl(): string {
    return this.socketPath !== undefined ? `zeo://${this.socketPath}` : `zeo://${this.addr}`;
  }
  get pid(): number {
    return this.proc?.pid ?? -1;
  }
  stderr(): string {
    return this.err;
  }

  private running(): boolean {
    return !this.gone;
  }

  /** Spawn runzeo and wait for its greeting. */
  async start(): Promise<void> {
    if (this.finished) throw new Error(`ZEO server ${this.addr} was stopped for good`);
    if (this.running()) throw new Error(`ZEO server ${this.addr} is running`);
    const bind = this.socketPath ?? `127.0.0.1:${this.port}`;
    let args: string[];
    if (this.configPath !== undefined) {
      writeFileSync(
        this.configPath,
        `<zeo>\n  address ${bind}\n  read-only true\n</zeo>\n<filestorage 1>\n  path ${path.resolve(this.opts.fsPath)}\n  read-only true\n</filestorage>\n`,
      );
      args = ['-C', this.configPath];
    } else {
      args = ['-a', bind, '-f', path.resolve(this.opts.fsPath)];
    }
    const env: NodeJS.ProcessEnv = { ...process.env, PYTHONUNBUFFERED: '1' };
    if (this.encoding === 'msgpack') env.ZEO_MSGPACK = '1';
    else delete env.ZEO_MSGPACK;
    const proc = spawn(runzeoPath(), args, { stdio: ['ignore', 'ignore', 'pipe'], env });
    this.proc = proc;
    this.gone = false;
    this.exited = new Promise<void>((resolve) => {
      proc.on('exit', () => {
        this.gone = true;
        resolve();
      });
      proc.on('error', (e) => {
        this.log(`[zeo helper: ${e.message}]\n`);
        if (proc.pid === undefined) {
          this.gone = true; // never started: there will be no 'exit'
          resolve();
        }
      });
    });
    proc.stderr!.on('data', (d: Buffer) => this.log(d.toString()));
    live.add(this);
    installExitHook();

    const want = this.encoding === 'msgpack' ? 'M5' : 'Z5';
    const timeoutMs = this.opts.timeoutMs ?? 20_000;
    const t0 = Date.now();
    let last = '';
    for (;;) {
      if (!this.running()) {
        await this.exited;
        throw new Error(`runzeo ${args.join(' ')} exited (${proc.exitCode ?? proc.signalCode ?? 'never started'}) before it served:\n${this.tail()}`);
      }
      if (this.socketPath === undefined && this.port === 0) {
        const p = proc.pid === undefined ? undefined : listeningPort(proc.pid);
        if (p !== undefined) this.port = p;
      }
      if (this.socketPath !== undefined || this.port !== 0) {
        let got: string | undefined;
        try {
          got = await readGreeting(this.addr, Math.max(100, Math.min(2000, timeoutMs - (Date.now() - t0))));
        } catch (e) {
          last = (e as Error).message; // not listening yet
        }
        if (got === want) return;
        if (got !== undefined) {
          await this.halt();
          throw new Error(`runzeo on ${this.addr} greeted ${JSON.stringify(got)}, want ${want}:\n${this.tail()}`);
        }
      }
      if (Date.now() - t0 > timeoutMs) {
        await this.halt();
        throw new Error(`runzeo ${args.join(' ')} did not greet within ${timeoutMs} ms (last: ${last || 'no listening socket'}):\n${this.tail()}`);
      }
      await sleep(20);
    }
  }

  private log(s: string): void {
    this.err += s;
    if (this.err.length > STDERR_KEEP) this.err = this.err.slice(this.err.length - STDERR_KEEP);
  }

  private tail(): string {
    return this.err.length > TAIL ? `…${this.err.slice(this.err.length - TAIL)}` : this.err;
  }

  /** End the current process: SIGTERM (or SIGKILL), SIGKILL after the grace; wait until reaped. */
  private async halt(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    const proc = this.proc;
    if (proc === undefined) return;
    if (this.running()) {
      proc.kill(signal);
      let timer: NodeJS.Timeout | undefined;
      const late = await Promise.race([this.exited!.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), STOP_GRACE_MS)))]);
      clearTimeout(timer);
      if (late && this.running()) {
        this.log(`[zeo helper: no exit ${STOP_GRACE_MS} ms after ${signal}: SIGKILL]\n`);
        proc.kill('SIGKILL');
      }
    }
    await this.exited;
  }

  killSync(): void {
    if (this.running()) this.proc?.kill('SIGKILL');
  }

  async stop(): Promise<void> {
    try {
      await this.halt();
    } finally {
      this.finished = true;
      live.delete(this);
      rmSync(this.dir, { recursive: true, force: true });
    }
  }

  async kill9(): Promise<void> {
    await this.halt('SIGKILL');
  }

  async restart(): Promise<void> {
    await this.halt();
    await this.start();
  }
}

/** Start runzeo over opts.fsPath and wait until it greets in opts.encoding. */
export async function startZeo(opts: ZeoOptions): Promise<ZeoServer> {
  const s = new Server(opts);
  try {
    await s.start();
  } catch (e) {
    await s.stop();
    throw e;
  }
  return s;
}

/** Teardown for afterEach/afterAll: stop every server started here and not yet stopped. */
export async function stopAllZeo(): Promise<void> {
  await Promise.all([...live].map((s) => s.stop()));
}

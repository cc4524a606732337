// A FileStorage writer process for tests (see fs1-writer-child.mjs for the protocol). Every
// process started here is killed by killAll(), which tests call in afterEach.

import { fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { withTimeout } from '../../src/util/async.js';
import { repoRoot } from './fs1util.js';

const script = path.join(repoRoot, 'test', 'helpers', 'fs1-writer-child.mjs');
const distEntry = path.join(repoRoot, 'dist', 'zodb', 'fs1', 'filestorage.js');

export type Reply = { op: string; [k: string]: unknown };

const live = new Set<WriterProc>();

export class WriterProc {
  readonly child: ChildProcess;
  private inbox: Reply[] = [];
  private waiters: Array<(r: Reply) => void> = [];
  readonly exited: Promise<number | null>;

  constructor() {
    if (!fs.existsSync(distEntry)) throw new Error(`${distEntry} missing: run \`npx tsc -p tsconfig.json\` (npm test does)`);
    this.child = fork(script, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.child.on('message', (m: Reply) => {
      const w = this.waiters.shift();
      if (w) w(m);
      else this.inbox.push(m);
    });
    this.exited = new Promise((res) => this.child.on('exit', (code) => res(code)));
    live.add(this);
  }

  /** Next message from the child (within `ms`). */
  recv(ms = 15000): Promise<Reply> {
    const m = this.inbox.shift();
    if (m) return Promise.resolve(m);
    const reply = new Promise<Reply>((resolve) => this.waiters.push(resolve));
    return withTimeout(reply, ms, () => new Error(`writer process: no reply in ${ms} ms`));
  }

  /** Send a request and wait for its reply; {op:'error'} replies reject. */
  async call(msg: Record<string, unknown>): Promise<Reply> {
    this.child.send(msg);
    const r = await this.recv();
    if (r.op === 'error') throw Object.assign(new Error(String(r.message)), { name: r.name, code: r.code });
    return r;
  }

  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await this.exited;
    live.delete(this);
  }

  static async killAll(): Promise<void> {
    await Promise.all([...live].map((p) => p.kill()));
  }
}

// Processes as wcfs needs them.
//
// processAlive(pid): a liveness probe by pid number, for processes we do not signal (the CLI's
// server probes): a zombie is dead (its parent may simply not have reaped it yet), and a
// process we may not signal (EPERM) exists.
//
// ProcessRef: a handle on one process that cannot be confused with a later process reusing
// its pid number (a pidfd, native/pidfd.cc). The server signals watch-link clients only
// through a ProcessRef (notes.md "Protection against slow or faulty clients").
// Invariants:
//   - fd ≥ 0 ⇔ holds > 0; the fd is closed exactly once, when the last hold is dropped;
//   - every syscall on the fd happens while fd ≥ 0 (never on a closed, possibly reused, fd
//     number): a ref used after its last close() throws.

import { closeSync, existsSync, readFileSync, statSync } from 'node:fs';
import { constants } from 'node:os';
import { WcfsError } from '../errors.js';
import { native } from '../native.js';

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return st.charAt(st.lastIndexOf(')') + 2) !== 'Z';
  } catch {
    return false;
  }
}

/** The process asked for has exited (or never existed). */
export class ProcessGoneError extends WcfsError {
  constructor(tid: number, why: string) {
    super('WCFS_ESRCH', `pid${tid}: process is gone (${why})`);
  }
}

/** Is `tid` (a FUSE request's pid: the calling thread) one of this process's threads? One stat. */
export function isOwnThread(tid: number): boolean {
  return tid === process.pid || (tid > 0 && existsSync(`/proc/self/task/${tid}`));
}

/** Thread-group id (the process's pid) of thread `tid`, from /proc; undefined when gone. */
export function tgidOf(tid: number): number | undefined {
  let st: string;
  try {
    st = readFileSync(`/proc/${tid}/status`, 'latin1');
  } catch {
    return undefined;
  }
  const m = /^Tgid:\s*(\d+)$/m.exec(st);
  return m ? Number(m[1]) : undefined;
}

/**
 * Start time of process `pid` (field 22 of /proc/<pid>/stat: clock ticks after boot);
 * undefined when gone. With the pid it names one process for the life of the system.
 */
export function startTimeOf(pid: number): bigint | undefined {
  let st: string;
  try {
    st = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // fields after the command (which may hold spaces and parens): state is field 3
  const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
  const v = f[22 - 3];
  return v !== undefined && /^\d+$/.test(v) ? BigInt(v) : undefined;
}

export class ProcessRef {
  private fd: number;
  private holds = 1;

  private constructor(
    /** The process's pid (thread-group id) when the ref was taken: for messages only. */
    readonly pid: number,
    fd: number,
  ) {
    this.fd = fd;
  }

  /**
   * A ref on the live process that thread `tid` belongs to (FUSE requests carry the calling
   * thread's id). Throws ProcessGoneError if there is no such thread, or its process has
   * exited (a zombie counts as exited). The caller must know `tid` cannot have been reused
   * since it saw it — e.g. that thread is blocked in a request the caller has not answered.
   */
  static open(tid: number): ProcessRef {
    const pid = tgidOf(tid);
    if (pid === undefined) throw new ProcessGoneError(tid, 'no such thread');
    let fd: number;
    try {
      fd = native().pidfdOpen(pid);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ESRCH') throw new ProcessGoneError(tid, 'no such process');
      throw e;
    }
    const ref = new ProcessRef(pid, fd);
    try {
      // the process we hold must still be the one tid belongs to, and alive
      if (pid !== tid) statSync(`/proc/${pid}/task/${tid}`);
      if (ref.exited()) throw new ProcessGoneError(tid, 'exited');
    } catch (e) {
      ref.close();
      throw e instanceof ProcessGoneError ? e : new ProcessGoneError(tid, 'thread exited');
    }
    return ref;
  }

  /** The process has terminated (zombie or reaped). */
  exited(): boolean {
    return native().pidfdExited(this.checkedFd());
  }

  /** Send `sig` → true, or false when the process has already exited. Throws on other errors (EPERM). */
  signal(sig: NodeJS.Signals): boolean {
    try {
      native().pidfdSendSignal(this.checkedFd(), constants.signals[sig]);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
      throw e;
    }
  }

  /** One more owner: the fd stays open until each owner has called close(). */
  hold(): this {
    this.checkedFd();
    this.holds++;
    return this;
  }

  /** Drop one hold; the last one closes the pidfd. */
  close(): void {
    if (this.holds === 0) return;
    if (--this.holds > 0) return;
    const fd = this.fd;
    this.fd = -1;
    closeSync(fd);
  }

  get closed(): boolean {
    return this.holds === 0;
  }

  toString(): string {
    return `pid${this.pid}`;
  }

  private checkedFd(): number {
    if (this.fd < 0) throw new Error(`${this}: ProcessRef used after close`);
    return this.fd;
  }
}

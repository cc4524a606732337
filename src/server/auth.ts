// Client authentication (`wcfs serve --authkeyfile PATH`; wcfs-server.md §7, notes.md
// "Authentication"). Owns:
//   OPEN_RULES   — the pure "who may open what" table: per kind of node, whether any
//                  process may open it or only an authenticated one;
//   Identity     — who sent a FUSE request: the process (thread group) of the request's
//                  thread, named by (pid, start time), with a pidfd held while it counts;
//   AuthTable    — the authenticated processes and the .wcfs/auth links that authenticate
//                  them, with their bounds;
//   parseAuthRequest — the request grammar of .wcfs/auth (framing: the watch link's,
//                  src/watchlink/wire.ts via src/server/wlink.ts).
//
// The protocol of .wcfs/auth (upstream's texts exactly):
//   C: <odd> auth <key>   S: <same> ok  |  <same> error invalid authentication key
//   C: <odd> bye          the link goes down (and no longer authenticates anyone)
//   C: <odd> <other>      S: 0 error unknown command
// A link authenticates the process whose thread wrote the `auth` request, from then until the
// link goes down (bye, protocol error, RELEASE); one process per link. A process is
// authenticated while at least one of its links is up: the last one going down revokes it at
// once (the next OPEN is refused). The server's own process is always allowed; lookups and
// getattr are never checked (the kernel caches dentries and attributes across processes).
//
// Identity: the FUSE header's pid is a thread id; its thread group is read from
// /proc/<tid>/status, the group's start time from /proc/<pid>/stat. The thread is blocked in
// the request we are answering, so neither id can be reused meanwhile. An entry of the table
// holds a pidfd on its process (ProcessRef): a process that has exited is dropped the moment
// it is looked up, and a later process given the same pid number has another start time and
// matches no entry — either check alone suffices; both are kept (belt and braces).
//
// Bounds (a local process may open .wcfs/auth without a key): ≤ MAX_LINKS links open in all
// (ENFILE past it), ≤ MAX_LINKS_PER_PROC per opening process (EMFILE); each link is a
// WatchLink, bounded like head/watch (line length, requests in flight, queued replies). So
// the table holds ≤ MAX_LINKS processes.
//
// State (JS thread only): procs, links, openers. Invariants:
//   A1 procs.get(k) = p ⇒ p.links > 0 and p.handle is open; p.links = the number of links
//      up and bound to p;
//   A2 a link's `authed` is bound at most once and unbound once (down or RELEASE);
//   A3 openers.get(k) = the links opened by process k and not yet released.

import { createHash, timingSafeEqual } from 'node:crypto';
import { FuseError } from '../fuse/errors.js';
import { errno } from '../fuse/kernel.js';
import { ProcessGoneError, ProcessRef, startTimeOf, tgidOf } from '../util/proc.js';

/** Kinds of openable nodes (directories are always allowed). */
export type NodeKind = 'zurl' | 'auth' | 'pintimeout' | 'stats' | 'at' | 'watch' | 'bigfile' | 'zhead';

/** Who may open a node of each kind when authentication is on. */
export const OPEN_RULES: Readonly<Record<NodeKind, 'anyone' | 'authenticated'>> = {
  zurl: 'anyone', // join reads it before it can authenticate
  auth: 'anyone', // how one authenticates
  pintimeout: 'authenticated',
  stats: 'authenticated',
  at: 'authenticated',
  watch: 'authenticated',
  bigfile: 'authenticated', // head/bigfile/<oid> and @<rev>/bigfile/<oid>
  zhead: 'authenticated', // .wcfs/debug/zhead (with debugFiles): the commits' tids
};

export const MAX_LINKS = 1024;
export const MAX_LINKS_PER_PROC = 16;

/** One process for the life of the system. */
export interface ProcId {
  pid: number;
  start: bigint;
}

/** Tells when a process has exited (a pidfd). */
export interface ProcHandle {
  exited(): boolean;
  close(): void;
}

/** Who sent a request: the seam tests replace (a fake can reuse pid numbers at will). */
export interface Identity {
  /** Our own process (always allowed). */
  readonly selfPid: number;
  /** The process of thread `tid`, which is blocked in our request. Throws ProcessGoneError. */
  whoIs(tid: number): ProcId;
  /** A handle on process `id` (thread `tid` belongs to it). Throws ProcessGoneError. */
  hold(id: ProcId, tid: number): ProcHandle;
}

/** The real identity: /proc and pidfds. */
export const procIdentity: Identity = {
  selfPid: process.pid,
  whoIs(tid) {
    const pid = tgidOf(tid);
    const start = pid === undefined ? undefined : startTimeOf(pid);
    if (pid === undefined || start === undefined) throw new ProcessGoneError(tid, 'no such thread');
    return { pid, start };
  },
  hold(id, tid) {
    const ref = ProcessRef.open(tid);
    if (ref.pid !== id.pid || startTimeOf(id.pid) !== id.start) {
      ref.close();
      throw new ProcessGoneError(tid, 'replaced');
    }
    return ref;
  },
};

const procKey = (id: ProcId) => `${id.pid}:${id.start}`;

interface AuthProc {
  readonly id: ProcId;
  readonly handle: ProcHandle;
  links: number;
  dropped: boolean;
}

/** One open of .wcfs/auth, as the table sees it. */
export interface AuthSlot {
  readonly opener: string;
  /** The process the link authenticates (A2). */
  authed: AuthProc | undefined;
  released: boolean;
}

export type AuthResult = { ok: true } | { ok: false; why: 'invalid key' | 'link in use by another process'; pid: number };

export class AuthTable {
  /** Authenticated processes by procKey (A1). */
  private readonly procs = new Map<string, AuthProc>();
  /** Links open per opening process (A3). */
  private readonly openers = new Map<string, number>();
  private nlinks = 0;
  private readonly keyHash: Buffer;

  constructor(
    key: string,
    private readonly ids: Identity = procIdentity,
  ) {
    this.keyHash = sha256(key);
  }

  /** May thread `tid` open a node of `kind`? */
  mayOpen(kind: NodeKind, tid: number): boolean {
    return OPEN_RULES[kind] === 'anyone' || this.isAuthenticated(tid);
  }

  /** Is the process of thread `tid` authenticated (or the server itself)? */
  isAuthenticated(tid: number): boolean {
    let id: ProcId;
    try {
      id = this.ids.whoIs(tid);
    } catch {
      return false;
    }
    if (id.pid === this.ids.selfPid) return true;
    const p = this.procs.get(procKey(id));
    if (p === undefined) return false;
    if (p.handle.exited()) {
      this.drop(p); // a pid reused within one clock tick would land here
      return false;
    }
    return true;
  }

  /**
   * OPEN of .wcfs/auth by thread `tid`: throws FuseError ENFILE / EMFILE past the bounds,
   * ESRCH for a caller we cannot see (gone, or in a pid namespace the server does not see:
   * the kernel then says pid 0).
   */
  linkOpen(tid: number): AuthSlot {
    let opener: string;
    try {
      opener = procKey(this.ids.whoIs(tid));
    } catch (e) {
      throw new FuseError(errno.ESRCH, `.wcfs/auth: pid ${tid}: ${(e as Error).message}`, { cause: e });
    }
    if (this.nlinks >= MAX_LINKS) {
      this.dropExited();
      if (this.nlinks >= MAX_LINKS) throw new FuseError(errno.ENFILE, `.wcfs/auth: ${MAX_LINKS} links open already`);
    }
    const n = this.openers.get(opener) ?? 0;
    if (n >= MAX_LINKS_PER_PROC) throw new FuseError(errno.EMFILE, `.wcfs/auth: pid ${tid}: ${MAX_LINKS_PER_PROC} links open already`);
    this.openers.set(opener, n + 1);
    this.nlinks++;
    return { opener, authed: undefined, released: false };
  }

  /** `auth <key>` on `slot`, written by thread `tid`. */
  authenticate(slot: AuthSlot, tid: number, key: string): AuthResult {
    const id = this.ids.whoIs(tid);
    if (slot.released) return { ok: false, why: 'invalid key', pid: id.pid };
    if (!timingSafeEqual(sha256(key), this.keyHash)) return { ok: false, why: 'invalid key', pid: id.pid };
    const k = procKey(id);
    if (slot.authed !== undefined) {
      if (!slot.authed.dropped && procKey(slot.authed.id) === k) return { ok: true };
      return { ok: false, why: 'link in use by another process', pid: id.pid };
    }
    let p = this.procs.get(k);
    if (p !== undefined && p.handle.exited()) {
      this.drop(p);
      p = undefined;
    }
    if (p === undefined) {
      p = { id, handle: this.ids.hold(id, tid), links: 0, dropped: false };
      this.procs.set(k, p);
    }
    p.links++;
    slot.authed = p;
    return { ok: true };
  }

  /** The link went down (bye, protocol error, server stop): it authenticates no one any more. */
  linkDown(slot: AuthSlot): void {
    const p = slot.authed;
    if (p === undefined) return;
    slot.authed = undefined;
    if (p.dropped) return;
    if (--p.links === 0) this.drop(p);
  }

  /** RELEASE of the link. */
  linkReleased(slot: AuthSlot): void {
    if (slot.released) return;
    slot.released = true;
    this.linkDown(slot);
    this.nlinks--;
    const n = (this.openers.get(slot.opener) ?? 1) - 1;
    if (n > 0) this.openers.set(slot.opener, n);
    else this.openers.delete(slot.opener);
  }

  /** Sizes, for tests and diagnostics. */
  sizes(): { procs: number; links: number } {
    return { procs: this.procs.size, links: this.nlinks };
  }

  private drop(p: AuthProc): void {
    if (p.dropped) return;
    p.dropped = true;
    this.procs.delete(procKey(p.id));
    p.handle.close();
  }

  private dropExited(): void {
    for (const p of [...this.procs.values()]) if (p.handle.exited()) this.drop(p);
  }
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'latin1').digest();
}

export type AuthRequest = { kind: 'auth'; key: string } | { kind: 'unknown' };

/** The grammar of .wcfs/auth requests (never throws: unknown commands are answered on stream 0). */
export function parseAuthRequest(msg: string): AuthRequest | { kind: 'bye' } {
  if (msg === 'bye') return { kind: 'bye' };
  if (msg === 'auth' || msg.startsWith('auth ')) return { kind: 'auth', key: msg.slice('auth '.length) };
  return { kind: 'unknown' };
}

/**
 * Peer text of .wcfs/auth for logs and traces: the key of an `auth` request, and any quoted
 * peer text (a bad frame's quote may hold a key), replaced by `…`.
 */
export function redactAuth(text: string): string {
  return text.replace(/^auth .*/s, 'auth …').replace(/"(?:[^"\\]|\\.)*"/g, '"…"');
}

export const AUTH_OK = 'ok';
export const AUTH_INVALID = 'error invalid authentication key';
export const AUTH_UNKNOWN = 'error unknown command';

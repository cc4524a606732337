// WatchLink — the head/watch link for client applications (upstream: wcfs/client/wcfs_watchlink.h,
// exposed to Python as wendelin.wcfs.WatchLink). An application that wants isolation its own
// way opens a link, asks the server to watch files (`watch <oid> @<at>` → "ok" | "error …"),
// and answers the server's requests itself — pins (`pin <oid> #<blk> @<rev>|@head`) → "ack".
// Conn (conn.ts) is the same link with the native pinner answering the pins.
//
//   const wl = await WatchLink.open(wc);               // or a mountpoint path
//   await wl.sendReq(`watch ${hex16(foid)} @${hex16(at)}`);  // → "ok" (after the initial pins)
//   for (let r; (r = await wl.recvReq()) !== null; ) { …remap r.pin…; r.reply('ack'); }
//   await wl.close();
//
// Built on the native link of the pinner (native/client*.cc, `appRequests`): its rx thread
// reads the link and its tx thread writes it, in frame order; server requests come here
// instead of going to the pinner. So the JS thread never blocks on the link.
//
// Invariants:
//   queue non-empty ⇒ waiters empty (a request goes to the oldest waiter first)
//   waiters non-empty ⇔ the native link holds Node's event loop open (keepAlive)
//   down ⇒ waiters empty, recvReq resolves null once the queue is drained
// The server waits for every pin's reply (pintimeout, then it kills the process that opened
// head/watch): answer each request promptly, and before close.

import createDebug from 'debug';
import { constants as fsc, open as fsOpen } from 'node:fs';
import path from 'node:path';
import { native, type NativeClientConn } from '../native.js';
import { LinkDownError } from '../watchlink/errors.js';
import { parsePin, type PinRequest } from '../watchlink/wire.js';

const debug = createDebug('wcfs:client');

export type { PinRequest };

/** One request of the server on the link, waiting for its reply. */
export interface ServerRequest {
  /** The request's stream (even). */
  readonly id: number;
  /** Its text, e.g. `pin 0000000000000001 #2 @03f0b2f2c6c5d311`. */
  readonly text: string;
  /** The parsed pin (rev null = @head: unpin), or undefined when text is not a pin. */
  readonly pin: PinRequest | undefined;
  /** Sends the reply ("ack" for a pin done; anything else makes the server kill this process). */
  reply(text: string): void;
}

export interface WatchLinkOptions {
  /** close(): how long to wait for the server to end the link after bye [10 s]. */
  closeTimeoutMs?: number;
}

export class WatchLink {
  /** Mountpoint of the server. */
  readonly mountpoint: string;
  /** The link's fd (head/watch, O_RDWR), for diagnostics. */
  readonly fd: number;
  private readonly nc: NativeClientConn;
  private readonly closeTimeoutMs: number;
  private readonly pending = new Map<number, { resolve: (reply: string) => void; reject: (e: Error) => void }>();
  private readonly queue: ServerRequest[] = [];
  private readonly waiters: Array<(r: ServerRequest | null) => void> = [];
  private downWhy: string | undefined;
  private closing: Promise<void> | undefined;
  private closedWait: ((err: string) => void) | undefined;

  private constructor(mountpoint: string, fd: number, opts: WatchLinkOptions) {
    this.mountpoint = mountpoint;
    this.fd = fd;
    this.closeTimeoutMs = opts.closeTimeoutMs ?? 10_000;
    this.nc = new (native().ClientConn)(fd, mountpoint, (kind, id, text) => this.onEvent(kind, id, text), debug.enabled, undefined, true);
  }

  /** Opens head/watch of the server at `wc` (a WCFS, or the mountpoint). */
  static async open(wc: { readonly mountpoint: string } | string, opts: WatchLinkOptions = {}): Promise<WatchLink> {
    const mnt = path.resolve(typeof wc === 'string' ? wc : wc.mountpoint);
    const fd = await new Promise<number>((resolve, reject) =>
      fsOpen(path.join(mnt, 'head', 'watch'), fsc.O_RDWR, (err, fd) => (err ? reject(err) : resolve(fd))),
    );
    return new WatchLink(mnt, fd, opts);
  }

  toString(): string {
    return `wcfs ${this.mountpoint}: wlink${this.fd}`;
  }

  /** Sends a request on a new stream; resolves with the server's reply ("ok", "error …"). Rejects with LinkDownError. */
  sendReq(text: string): Promise<string> {
    const ctx = `${this}: ${text}`;
    if (this.closing !== undefined || this.downWhy !== undefined) return Promise.reject(new LinkDownError(ctx, this.downWhy ?? 'link is closed'));
    let id: number;
    try {
      id = this.nc.request(text);
    } catch (e) {
      return Promise.reject(new LinkDownError(ctx, (e as Error).message));
    }
    return new Promise<string>((resolve, reject) => this.pending.set(id, { resolve, reject: (e) => reject(new LinkDownError(ctx, e.message)) }));
  }

  /** The next request of the server, in arrival order; null once the link is down or closed. */
  recvReq(): Promise<ServerRequest | null> {
    const r = this.queue.shift();
    if (r !== undefined) return Promise.resolve(r);
    if (this.downWhy !== undefined || this.closing !== undefined) return Promise.resolve(null);
    return new Promise((resolve) => {
      this.waiters.push(resolve);
      if (this.waiters.length === 1) this.nc.keepAlive(true);
    });
  }

  /** Why the link is down (the server closed it, or close() was called), or undefined while up. */
  get down(): string | undefined {
    return this.downWhy;
  }

  /** Stream-0 messages the server sent ("error: …", "fatal: …"), for diagnostics. */
  fatals(): string[] {
    return this.nc.fatals();
  }

  /**
   * Sends bye, waits for the server to close the link (≤ closeTimeoutMs), ends the link's
   * threads and closes the fd. Pending recvReq resolve null, pending sendReq reject. Idempotent.
   */
  close(): Promise<void> {
    if (this.closing === undefined) this.closing = this.closeImpl();
    return this.closing;
  }

  private async closeImpl(): Promise<void> {
    this.nc.markDown('link is closed');
    this.setDown('link is closed');
    const closed = new Promise<string>((resolve) => (this.closedWait = resolve));
    let err = '';
    if (this.nc.close(this.closeTimeoutMs)) err = await closed;
    for (const [, p] of this.pending) p.reject(new Error('link is down'));
    this.pending.clear();
    if (err !== '') throw new Error(`${this}: close: ${err}`);
  }

  private setDown(why: string): void {
    this.downWhy ??= why;
    if (this.waiters.length === 0) return;
    this.nc.keepAlive(false);
    for (const w of this.waiters.splice(0)) w(null);
  }

  private onEvent(kind: 'reply' | 'linkdown' | 'down' | 'closed' | 'request', id: number, text: string): void {
    switch (kind) {
      case 'reply':
      case 'linkdown': {
        const p = this.pending.get(id);
        if (p === undefined) return;
        this.pending.delete(id);
        if (kind === 'reply') p.resolve(text);
        else p.reject(new Error(text));
        return;
      }
      case 'request': {
        let pin: PinRequest | undefined;
        try {
          pin = parsePin(text);
        } catch {
          pin = undefined;
        }
        const r: ServerRequest = { id, text, pin, reply: (t) => this.nc.replyRequest(id, t) };
        const w = this.waiters.shift();
        if (w === undefined) this.queue.push(r);
        else {
          if (this.waiters.length === 0) this.nc.keepAlive(false);
          w(r);
        }
        return;
      }
      case 'down':
        // the server closed the link: tell waiters, release the link's threads and fd
        debug('%s: down: %s', this, text);
        this.setDown(text);
        void this.close().catch((e) => debug('%s: close after link down: %s', this, (e as Error).message));
        return;
      case 'closed':
        this.closedWait?.(text);
        return;
    }
  }
}

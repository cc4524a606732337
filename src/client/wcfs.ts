// WCFS: the client's handle on one wcfs mount (upstream wcfs.WCFS / PyWCFS, wcfs-client.md
// §1.2, §8). One per mountpoint per process, shared by join() calls (njoin counts them);
// holds the server's .wcfs/zurl open (src/control/control.ts join) so the server knows it is
// in use. connect(at) makes Conns.
//
// All file access here goes through libuv's pool (the server is another process); nothing
// blocks the JS thread.

import { readFile } from 'node:fs/promises';
import { constants as fsc, open as fsOpen } from 'node:fs';
import path from 'node:path';
import { join as joinServer, type WcfsHandle } from '../control/control.js';
import { sleep } from '../util/async.js';
import { parseHex16, type Tid } from '../zodb/ids.js';
import { Conn, type ConnOptions } from './conn.js';

export interface JoinOptions {
  /** Start a server when none runs [$WENDELIN_CORE_WCFS_AUTOSTART or yes]. */
  autostart?: boolean;
  /** Mountpoint [/dev/shm/wcfs/<sha1 of zurl>]. */
  mountpoint?: string;
  /** Extra `wcfs serve` options when starting. */
  args?: string[];
}

const registry = new Map<string, WCFS>();

export class WCFS {
  private njoin = 1;
  private readonly conns = new Set<Conn>();

  private constructor(
    readonly mountpoint: string,
    private handle: WcfsHandle | undefined,
  ) {}

  /** Join the wcfs server of zurl (starting it if allowed). */
  static async join(zurl: string, opts: JoinOptions = {}): Promise<WCFS> {
    const h = await joinServer(zurl, opts);
    const have = registry.get(h.mountpoint);
    if (have !== undefined) {
      await h.close(); // the registry entry already holds one reference
      have.njoin++;
      return have;
    }
    const wc = new WCFS(h.mountpoint, h);
    registry.set(h.mountpoint, wc);
    return wc;
  }

  /**
   * Test hook: a WCFS over a directory laid out like a mount (head/at, head/bigfile/…,
   * @<rev>/bigfile/…), without a server handle. Use with ConnOptions.watchFd.
   */
  static attach(mountpoint: string): WCFS {
    return new WCFS(path.resolve(mountpoint), undefined);
  }

  toString(): string {
    return `wcfs ${this.mountpoint}`;
  }

  /** A connection viewing the database as of `at` (waits for head/at ≥ at). */
  async connect(at: Tid, opts: ConnOptions = {}): Promise<Conn> {
    await this.headWait(at);
    const fd =
      opts.watchFd ??
      (await new Promise<number>((resolve, reject) =>
        fsOpen(path.join(this.mountpoint, 'head', 'watch'), fsc.O_RDWR, (err, fd) => (err ? reject(err) : resolve(fd))),
      ));
    const conn = new Conn(this, fd, at, opts);
    this.conns.add(conn);
    return conn;
  }

  /** Current head/at of the server. */
  async head(): Promise<Tid> {
    const s = (await readFile(path.join(this.mountpoint, 'head', 'at'))).toString();
    return parseHex16(s, 'head/at');
  }

  /**
   * Wait until head/at ≥ at: then a stat of head/bigfile/* gives a size ≥ the size as of
   * at (files never shrink while watched). Upstream polls every 1 ms; we back off to 10 ms.
   */
  async headWait(at: Tid): Promise<void> {
    for (let delay = 1; ; delay = Math.min(delay * 2, 10)) {
      if ((await this.head()) >= at) return;
      await sleep(delay);
    }
  }

  /** Drop one join; the last one releases the server handle. Conns are not closed. */
  async close(): Promise<void> {
    if (this.njoin <= 0) return;
    if (--this.njoin > 0) return;
    if (registry.get(this.mountpoint) === this) registry.delete(this.mountpoint);
    const h = this.handle;
    this.handle = undefined;
    await h?.close();
  }

  /** @internal */
  forgetConn(c: Conn): void {
    this.conns.delete(c);
  }

  /** Open conns (diagnostics). */
  connections(): Conn[] {
    return [...this.conns];
  }
}

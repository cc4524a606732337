// WCFS: the client's handle on one wcfs mount (upstream wcfs.WCFS / PyWCFS, wcfs-client.md
// §1.2, §8). One per mountpoint per process, shared by join() calls (njoin counts them);
// holds the server's .wcfs/zurl open (src/control/control.ts join) so the server knows it is
// in use. connect(at) makes Conns.
//
// Authentication (wcfs-server.md §7, notes.md "Authentication"): with a key file
// (JoinOptions.authKeyFile, else $WENDELIN_CORE_WCFS_AUTHKEYFILE) join reads the key first
// (a bad file fails the join before anything else), gives an autostarted server the same
// file, then — right after the mount is found to be ours (control.ts join) and before any
// other file is opened — opens .wcfs/auth and sends `1 auth <key>`. That link stays open
// for the life of the WCFS (the server revokes us when it closes: close()). Authentication
// is per process: a child (fork or spawn) is not authenticated and must join itself. A
// server without .wcfs/auth requires none: then nothing is sent.
//
// All file access here goes through libuv's pool (the server is another process); nothing
// blocks the JS thread.

import { open as openFile, readFile, type FileHandle } from 'node:fs/promises';
import { constants as fsc, open as fsOpen } from 'node:fs';
import path from 'node:path';
import { join as joinServer, type WcfsHandle } from '../control/control.js';
import { WcfsError } from '../errors.js';
import { sleep } from '../util/async.js';
import { AUTHKEYFILE_ENV, readAuthKey } from '../util/authkey.js';
import { formatFrame, parseFrame } from '../watchlink/wire.js';
import { parseHex16, type Tid } from '../zodb/ids.js';
import { Conn, type ConnOptions } from './conn.js';

export interface JoinOptions {
  /** Start a server when none runs [$WENDELIN_CORE_WCFS_AUTOSTART or yes]. */
  autostart?: boolean;
  /** Mountpoint [/dev/shm/wcfs/<sha1 of zurl>]. */
  mountpoint?: string;
  /** Extra `wcfs serve` options when starting. */
  args?: string[];
  /**
   * Authenticate with the key in this file (and start a server with it)
   * [$WENDELIN_CORE_WCFS_AUTHKEYFILE; unset or empty: no authentication].
   */
  authKeyFile?: string;
}

const registry = new Map<string, WCFS>();

export class WCFS {
  private njoin = 1;
  private readonly conns = new Set<Conn>();

  private constructor(
    readonly mountpoint: string,
    private handle: WcfsHandle | undefined,
    /** The .wcfs/auth link that authenticates this process (until close). */
    private authLink: FileHandle | undefined = undefined,
  ) {}

  /** Join the wcfs server of zurl (starting it if allowed), authenticating first if a key file is given. */
  static async join(zurl: string, opts: JoinOptions = {}): Promise<WCFS> {
    const keyFile = opts.authKeyFile ?? (process.env[AUTHKEYFILE_ENV] || undefined);
    let key: string | undefined;
    try {
      key = keyFile === undefined ? undefined : readAuthKey(keyFile);
    } catch (e) {
      throw new WcfsError('WCFS_EAUTHKEY', `wcfs: join ${zurl}: ${(e as Error).message}`, { cause: e });
    }
    const h = await joinServer(zurl, { ...opts, authKeyFile: keyFile });
    const have = registry.get(h.mountpoint);
    if (have !== undefined) {
      await h.close(); // the registry entry already holds one reference
      have.njoin++;
      return have;
    }
    let authLink: FileHandle | undefined;
    if (key !== undefined) {
      try {
        authLink = await authenticate(h.mountpoint, key);
      } catch (e) {
        await h.close();
        throw new WcfsError('WCFS_EAUTH', `wcfs: join ${zurl}: ${(e as Error).message}`, { cause: e });
      }
    }
    const wc = new WCFS(h.mountpoint, h, authLink);
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

  /**
   * Drop one join; the last one closes the auth link (the server revokes this process at
   * once) and releases the server handle. Conns are not closed.
   */
  async close(): Promise<void> {
    if (this.njoin <= 0) return;
    if (--this.njoin > 0) return;
    if (registry.get(this.mountpoint) === this) registry.delete(this.mountpoint);
    const a = this.authLink;
    this.authLink = undefined;
    await a?.close();
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

/** Longest reply line read from .wcfs/auth (the server's line limit). */
const MAX_REPLY = 4096;

/**
 * Open <mnt>/.wcfs/auth and authenticate this process with `key`: the open link, or
 * undefined when the server has no .wcfs/auth (it requires no authentication). Throws
 * WcfsError WCFS_EAUTH when the server refuses the key.
 */
async function authenticate(mnt: string, key: string): Promise<FileHandle | undefined> {
  let f: FileHandle;
  try {
    f = await openFile(path.join(mnt, '.wcfs', 'auth'), fsc.O_RDWR);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    await f.write(Buffer.from(formatFrame(1n, `auth ${key}`), 'latin1'));
    // replies come only to our requests: the first line on stream 1 answers it; a stream-0
    // line is the server taking the link down (its text says why)
    let got = '';
    const buf = Buffer.alloc(MAX_REPLY);
    for (;;) {
      const nl = got.indexOf('\n');
      if (nl >= 0) {
        const { stream, msg } = parseFrame(got.slice(0, nl + 1));
        if (stream === 1n && msg === 'ok') return f;
        throw new WcfsError('WCFS_EAUTH', `${mnt}/.wcfs/auth: authentication failed: ${msg}`);
      }
      if (got.length >= MAX_REPLY) throw new WcfsError('WCFS_EAUTH', `${mnt}/.wcfs/auth: reply longer than ${MAX_REPLY} bytes`);
      const { bytesRead } = await f.read(buf, 0, MAX_REPLY - got.length, null);
      if (bytesRead === 0) throw new WcfsError('WCFS_EAUTH', `${mnt}/.wcfs/auth: authentication failed: link closed by the server`);
      got += buf.toString('latin1', 0, bytesRead);
    }
  } catch (e) {
    await f.close();
    throw e;
  }
}

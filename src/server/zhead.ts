// .wcfs/debug/zhead — the stream of processed commits (wcfs-server.md §1, §3.3 step 8): every
// open handle receives `<tid>\n` (16 lowercase hex) for each commit once it is fully processed
// (page cache invalidated, head/at showing it: commit.ts 3c). Exists only with the server's
// `debugFiles` option (upstream: `-debug`); upstream's test harness reads one line after each
// commit it makes.
//
// Upstream writes synchronously, so a reader that stops reading wedges commit processing.
// Here a write never waits: each reader has a bounded buffer (ZHEAD_BUF_LINES lines); a
// reader whose buffer is full when a commit comes is dropped — logged with its pid, its reads
// answer EOF from then on, it leaves the ZHeadLink count — and commit processing goes on.
//
// State (JS thread only): readers by fh. A reader is in `readers` from OPEN to RELEASE;
// `dropped` readers are there too (their reads answer EOF) but not counted.
// Invariant: stats.ZHeadLink = number of readers open and not dropped.

import createDebug from 'debug';
import { tgidOf } from '../util/proc.js';
import { hex16, type Tid } from '../zodb/ids.js';

const debug = createDebug('wcfs:server:zhead');

/**
 * Lines a reader may have unread before it is dropped (17 bytes each). Upstream's harness
 * reads each line right after its commit: it never has more than one unread.
 */
export const ZHEAD_BUF_LINES = 256;

const EMPTY = new Uint8Array(0);

interface Reader {
  fh: number;
  pid: number;
  /** Unread bytes, whole lines. */
  buf: Buffer[];
  lines: number;
  dropped: boolean;
  /** Reads waiting for a line (or the drop, or the release). */
  wake: Array<() => void>;
}

export interface ZHeadHost {
  readonly stats: { ZHeadLink: number };
  log(line: string): void;
}

export class ZHeadStreams {
  private readonly readers = new Map<number, Reader>();
  private nextFh = 1;

  constructor(private readonly host: ZHeadHost) {}

  /** OPEN by thread `tid` (the FUSE header's pid): a new reader; it sees the commits processed from now on. */
  open(tid: number): number {
    const pid = tgidOf(tid) ?? tid; // the process, for the log line if it is dropped
    const r: Reader = { fh: this.nextFh++, pid, buf: [], lines: 0, dropped: false, wake: [] };
    this.readers.set(r.fh, r);
    this.host.stats.ZHeadLink++;
    debug('open fh %d by pid %d', r.fh, pid);
    return r.fh;
  }

  /** READ: whole lines, as many as fit in size; waits for one; EOF once dropped or released. */
  async read(fh: number, size: number, signal: AbortSignal): Promise<Uint8Array> {
    for (;;) {
      const r = this.readers.get(fh);
      if (r === undefined || r.dropped) return EMPTY;
      if (r.buf.length > 0) return this.take(r, size);
      await new Promise<void>((resolve, reject) => {
        if (signal.aborted) return reject(signal.reason);
        const wake = () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = () => {
          r.wake = r.wake.filter((w) => w !== wake);
          reject(signal.reason);
        };
        signal.addEventListener('abort', onAbort, { once: true });
        r.wake.push(wake);
      });
    }
  }

  /** RELEASE. */
  release(fh: number): void {
    const r = this.readers.get(fh);
    if (r === undefined) return;
    this.readers.delete(fh);
    if (!r.dropped) this.host.stats.ZHeadLink--;
    r.dropped = true;
    wakeAll(r);
    debug('release fh %d', fh);
  }

  /** Commits processed (commit.ts 3c), in order: a line each to every reader. Never waits. */
  publish(tids: readonly Tid[]): void {
    if (this.readers.size === 0) return;
    const lines = tids.map((t) => Buffer.from(hex16(t) + '\n', 'latin1'));
    for (const r of this.readers.values()) {
      if (r.dropped) continue;
      if (r.lines + lines.length > ZHEAD_BUF_LINES) {
        r.dropped = true;
        r.buf = [];
        r.lines = 0;
        this.host.stats.ZHeadLink--;
        this.host.log(`wcfs: .wcfs/debug/zhead: reader pid ${r.pid} (fh ${r.fh}) has ${ZHEAD_BUF_LINES} lines unread: dropped (its reads get EOF)`);
        wakeAll(r);
        continue;
      }
      r.buf.push(...lines);
      r.lines += lines.length;
      wakeAll(r);
    }
  }

  /** The server stops: every reader gets EOF. */
  close(): void {
    for (const r of this.readers.values()) {
      if (!r.dropped) this.host.stats.ZHeadLink--;
      r.dropped = true;
      wakeAll(r);
    }
  }

  private take(r: Reader, size: number): Uint8Array {
    const out: Buffer[] = [];
    let n = 0;
    while (r.buf.length > 0 && n + r.buf[0]!.length <= size) {
      const l = r.buf.shift()!;
      out.push(l);
      n += l.length;
      r.lines--;
    }
    if (out.length === 0) {
      // a read smaller than a line: part of it (the rest stays for the next read)
      const l = r.buf[0]!;
      r.buf[0] = l.subarray(size);
      return l.subarray(0, size);
    }
    return out.length === 1 ? out[0]! : Buffer.concat(out);
  }
}

function wakeAll(r: Reader): void {
  const ws = r.wake;
  r.wake = [];
  for (const w of ws) w();
}

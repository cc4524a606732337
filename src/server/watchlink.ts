// Server side of one head/watch open ("watch link", wcfs-server.md §2.2): a bidirectional
// line channel over a FUSE stream file (FOPEN_STREAM|NONSEEKABLE|DIRECT_IO).
//
//   client write(2)  → WRITE request  → rx buffer → complete lines → handleLine
//   server send()    → tx queue       → READ requests take bytes from it (a read may get a
//                                        partial line or several lines); send() resolves once
//                                        the client has read the whole line
//   close()          → pending and later READs return 0 bytes (EOF)
//
// Invariants: tx bytes are delivered in order, each at most once; a READ waiting for data is
// released by data, by close (EOF) or by its interrupt (EINTR) — a client killed while
// blocked in read(2) exits at once.
//
// Protocol handling (watch requests, pins) is the server's business: this file only frames.
// Until the isolation protocol lands (issue 4) every watch request is answered with an error.

import createDebug from 'debug';
import { FuseError } from '../fuse/errors.js';
import { errno } from '../fuse/kernel.js';
import { formatFrame, parseClientRequest, parseFrame } from '../watchlink/wire.js';
import { hex16 } from '../zodb/ids.js';

const debug = createDebug('wcfs:watch');

interface TxItem {
  bytes: Buffer;
  off: number;
  done: () => void;
}

export class WatchLink {
  private rx = '';
  private readonly tx: TxItem[] = [];
  private readers: Array<() => void> = [];
  private closedFlag = false;

  constructor(
    readonly id: number,
    /** Pid of the opener (from the OPEN request). */
    readonly pid: number,
    private readonly onClose: (l: WatchLink) => void,
  ) {}

  get closed(): boolean {
    return this.closedFlag;
  }

  /** WRITE from the client: consume everything, handle complete lines. */
  write(data: Buffer): number {
    if (this.closedFlag) throw new FuseError(errno.EPIPE, `wlink ${this.id}: closed`);
    this.rx += data.toString('latin1');
    let nl: number;
    while (!this.closedFlag && (nl = this.rx.indexOf('\n')) >= 0) {
      const line = this.rx.slice(0, nl + 1);
      this.rx = this.rx.slice(nl + 1);
      this.handleLine(line);
    }
    return data.length;
  }

  /** READ from the client: up to `size` bytes, waiting for some; 0 bytes = EOF. */
  async read(size: number, signal: AbortSignal): Promise<Uint8Array> {
    for (;;) {
      if (this.tx.length > 0) return this.take(size);
      if (this.closedFlag) return new Uint8Array(0);
      await new Promise<void>((resolve, reject) => {
        if (signal.aborted) return reject(signal.reason);
        const wake = () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = () => {
          this.readers = this.readers.filter((r) => r !== wake);
          reject(signal.reason);
        };
        signal.addEventListener('abort', onAbort, { once: true });
        this.readers.push(wake);
      });
    }
  }

  /** Queue one frame; resolves when the client has read all of it (or the link closed). */
  send(stream: bigint, msg: string): Promise<void> {
    if (this.closedFlag) return Promise.resolve();
    debug('wlink %d: > %d %s', this.id, stream, msg);
    return new Promise<void>((resolve) => {
      this.tx.push({ bytes: Buffer.from(formatFrame(stream, msg), 'latin1'), off: 0, done: resolve });
      this.wakeReaders();
    });
  }

  /** Send a control message on stream 0 and close. */
  async fail(text: string): Promise<void> {
    if (this.closedFlag) return;
    process.stderr.write(`wcfs: wlink ${this.id} (pid ${this.pid}): ${text}\n`);
    const sent = this.send(0n, `error: ${text}`);
    this.close();
    await sent;
  }

  /** No more messages: readers get EOF once the queue is drained. */
  close(): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    this.wakeReaders();
    this.onClose(this);
  }

  /** RELEASE of the handle: drop whatever is queued. */
  release(): void {
    for (const t of this.tx.splice(0)) t.done();
    this.close();
  }

  private take(size: number): Uint8Array {
    const parts: Buffer[] = [];
    let n = 0;
    while (n < size && this.tx.length > 0) {
      const t = this.tx[0]!;
      const k = Math.min(size - n, t.bytes.length - t.off);
      parts.push(t.bytes.subarray(t.off, t.off + k));
      t.off += k;
      n += k;
      if (t.off === t.bytes.length) {
        this.tx.shift();
        t.done();
      }
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  private wakeReaders(): void {
    const rs = this.readers;
    this.readers = [];
    for (const r of rs) r();
  }

  private handleLine(line: string): void {
    let stream: bigint;
    let msg: string;
    try {
      ({ stream, msg } = parseFrame(line));
    } catch (e) {
      void this.fail((e as Error).message);
      return;
    }
    debug('wlink %d: < %d %s', this.id, stream, msg);
    if (stream === 0n || stream % 2n === 0n) {
      // A reply to a server request — none are sent before the isolation protocol lands.
      void this.fail(`unexpected reply on stream ${stream}: no request pending`);
      return;
    }
    let req;
    try {
      req = parseClientRequest(msg);
    } catch (e) {
      void this.send(stream, `error ${(e as Error).message}`);
      return;
    }
    if (req.kind === 'bye') {
      this.close();
      return;
    }
    const at = req.at === null ? 'ffffffffffffffff' : hex16(req.at);
    void this.send(stream, `error setup watch f${hex16(req.foid)} @${at}: isolation protocol not yet implemented`);
  }
}

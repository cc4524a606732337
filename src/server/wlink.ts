// Server side of one head/watch open ("watch link", wcfs-server.md §2.2, §2.3, §2.10): a
// bidirectional line channel over a FUSE stream file (FOPEN_STREAM|NONSEEKABLE|DIRECT_IO).
// The same framing, bounds and EOF rules serve .wcfs/auth (auth.ts): a link is generic in its
// request grammar (handlers.parse; head/watch's is the default).
//
//   client write(2) → WRITE → rx buffer → complete lines:
//        odd stream  → a client request (watch/bye) → handlers.request, not awaited, so acks
//                      and bye are processed while setups wait
//        even stream → the reply to one of our requests (a pin)
//   request(msg)    → next even stream, frame queued for the client's read(2), reply awaited
//                     with a deadline
//   client read(2)  → READ → bytes of queued frames (a read may get a partial line or several)
//   shutdown()      → first caller wins: the link goes down, our pending requests fail with
//                     LinkDownError, an optional stream-0 "error:"/"fatal:" line is queued, and
//                     then reads see EOF. handlers.down runs once.
//
// Bounds (the client is untrusted; memory per link must not grow with what it sends or fails
// to read — see notes.md "Protection against slow or faulty clients"):
//   B1 a line is ≤ MAX_LINE bytes, LF included: a longer one (complete or not) is a protocol
//      error; rx holds ≤ MAX_LINE bytes.
//   B2 ≤ MAX_INFLIGHT client requests in flight (received, reply not yet read by the client);
//      one more is a protocol error.
//   B3 frames are admitted to the outgoing queue (tx) only while it holds < TX_MAX bytes;
//      the others wait in order (txWait). A pin that waits past its deadline fails like an
//      unanswered one (timeout → the client is killed); a waiting reply keeps its request in
//      flight (B2). The stream-0 control line at shutdown is the one frame admitted anyway.
//   B4 peer text is quoted with at most QUOTE_MAX characters in replies and logs (wire.ts).
//
// The client process (`proc`, a ProcessRef = pidfd): the process of the thread that OPENed the
// link — the one killed when it fails a pin. Its pidfd is taken at OPEN (the opening thread is
// blocked in open(2) until we answer, so its id cannot have been reused; a process already
// gone is refused with ESRCH), and the server signals only through it, never by pid number.
// Takeover: if that process has exited while the link is up and another process uses the link
// (a READ or WRITE — typically a child that inherited the fd), that process becomes `proc`:
// it is now the one that must answer pins. Checked when a READ or WRITE arrives and when a
// READ is answered with data, i.e. while the requesting thread is blocked in our request.
//
// Invariants: frames go out whole and in order; each pending request settles exactly once;
// after down no request is sent and no "ok" can be queued (send() is a no-op); a READ that
// waits for data is released by data, EOF or its interrupt (EINTR); the link holds exactly one
// hold on `proc` until RELEASE (then none: no pidfd outlives the link, except a hold taken by
// a kill in progress).

import createDebug from 'debug';
import { FuseError } from '../fuse/errors.js';
import { errno } from '../fuse/kernel.js';
import { logLine } from '../util/log.js';
import { ProcessGoneError, ProcessRef } from '../util/proc.js';
import { LinkDownError, LinkTimeoutError } from '../watchlink/errors.js';
import { formatFrame, goQuote, parseClientRequest, parseFrame, type ClientRequest } from '../watchlink/wire.js';

const debug = createDebug('wcfs:watch');

/** B1: longest line accepted from a client, LF included (ours are < 100 bytes). */
export const MAX_LINE = 4096;
/** B2: most client requests in flight per link. */
export const MAX_INFLIGHT = 1024;
/** B3: outgoing bytes queued per link before further frames wait. */
export const TX_MAX = 64 * 1024;

interface TxItem {
  bytes: Buffer;
  off: number;
  done: () => void;
}

interface Pending {
  resolve: (reply: string) => void;
  reject: (e: Error) => void;
  /** performance.now() after which the request fails with LinkTimeoutError(timeoutMs). */
  deadline: number;
  timeoutMs: number;
  /** With debug on: when the request was queued (after its debug line), for the reply's rtt. */
  sentNs?: bigint;
}

/** A client request of head/watch (bye is handled by the link itself). */
export type WatchRequest = Extract<ClientRequest, { kind: 'watch' }>;

export interface LinkHandlers<R = WatchRequest> {
  /**
   * The request grammar of odd-stream messages [head/watch's, parseClientRequest]: returns
   * the request or bye; throws an Error whose message is sent back as `error <message>`.
   * Another stream file with the same framing (.wcfs/auth, auth.ts) brings its own.
   */
  parse?(msg: string): R | { kind: 'bye' };
  /**
   * A parsed client request on odd `stream`, written by thread `tid`. Resolves once its
   * reply was read by the client or the link is down (B2 counts it in flight until then).
   */
  request(link: WatchLink<R>, stream: bigint, req: R, tid: number): Promise<void>;
  /**
   * The link went down. `pendingRequests` = requests of ours that were in flight; `down` is
   * undefined for bye, else the error our requests failed with: `why` = protocol error, EOF
   * without bye, …; `cause` = the error shutdown() was given (a PinError for a failed pin).
   */
  down(link: WatchLink<R>, down: LinkDownError | undefined, pendingRequests: number): void;
  /** Where the link's warnings go: the server's log (default: stderr). */
  log?(line: string): void;
  /** What the link calls itself in messages ["wlink"]. */
  readonly name?: string;
  /**
   * Peer text as it may appear in logs and traces [as is]: .wcfs/auth hides keys (a request,
   * or a quoted bad frame, may carry one). Replies to the peer itself are not redacted.
   */
  redact?(text: string): string;
}

export class WatchLink<R = WatchRequest> {
  /** Bytes of the incomplete line received so far (B1: rxLen ≤ MAX_LINE). */
  private rx: Buffer[] = [];
  private rxLen = 0;
  /** Frames admitted, in order; txBytes = their bytes not yet read (B3). */
  private readonly tx: TxItem[] = [];
  private txBytes = 0;
  /** Frames waiting for room in tx, in order (B3). */
  private txWait: TxItem[] = [];
  /** Client requests in flight (B2). */
  private inflight = 0;
  private readers: Array<() => void> = [];
  private isDown = false;
  private eof = false;
  private nextStream = 0n;
  /** Our requests awaiting a reply (Map order = sending order). */
  private readonly pending = new Map<bigint, Pending>();
  /** Armed while a request may be pending: fires at the earliest deadline (deadlineAt; expire). */
  private deadlineTimer: NodeJS.Timeout | undefined;
  private deadlineAt = Infinity;
  /** Aborted when the link goes down: waits tied to the link's life use it. */
  private readonly ac = new AbortController();

  /** The client process (see the overview); null once the link's hold is dropped (RELEASE). */
  private client: ProcessRef | null;

  constructor(
    readonly id: number,
    /** The opener's process; the link takes over this hold. */
    proc: ProcessRef,
    private readonly handlers: LinkHandlers<R>,
  ) {
    this.client = proc;
  }

  /**
   * A link for the OPEN of head/watch by thread `tid` (the OPEN's pid field). Throws
   * FuseError(ESRCH) when the opener's process is gone.
   */
  static open<R = WatchRequest>(id: number, tid: number, handlers: LinkHandlers<R>): WatchLink<R> {
    let proc: ProcessRef;
    try {
      proc = ProcessRef.open(tid);
    } catch (e) {
      const msg = `${handlers.name ?? 'wlink'} ${id}: open refused: ${(e as Error).message}`;
      (handlers.log ?? logLine)(`wcfs: ${msg}`);
      throw new FuseError(e instanceof ProcessGoneError ? errno.ESRCH : errno.EIO, msg);
    }
    return new WatchLink<R>(id, proc, handlers);
  }

  get down(): boolean {
    return this.isDown;
  }
  get signal(): AbortSignal {
    return this.ac.signal;
  }
  /** The client process, or null after RELEASE. Callers that outlive the link take a hold(). */
  get proc(): ProcessRef | null {
    return this.client;
  }

  toString(): string {
    return `${this.handlers.name ?? 'wlink'} ${this.id} (pid${this.client?.pid ?? '?'})`;
  }

  // ---- client side of the pipe (FUSE handlers) ----

  /** WRITE from thread `tid`: consume everything, handle complete lines. */
  write(data: Buffer, tid: number): number {
    if (this.eof) throw new FuseError(errno.EPIPE, `${this}: closed`);
    this.usedBy(tid);
    let off = 0;
    while (!this.isDown) {
      const nl = data.indexOf(0x0a, off);
      const end = nl < 0 ? data.length : nl + 1;
      if (this.rxLen + end - off > MAX_LINE) {
        const head = Buffer.concat([...this.rx, data.subarray(off, Math.min(end, off + MAX_LINE))]);
        this.protocolError(`invalid frame: ${goQuote(head.toString('latin1'))} (line longer than ${MAX_LINE} bytes)`);
        break;
      }
      if (nl < 0) {
        // keep a copy of the tail only: `data` may be a large buffer
        if (off < data.length) this.rx.push(Buffer.from(data.subarray(off)));
        this.rxLen += data.length - off;
        break;
      }
      const part = data.subarray(off, end);
      const line = (this.rxLen === 0 ? part : Buffer.concat([...this.rx, part])).toString('latin1');
      this.rx = [];
      this.rxLen = 0;
      off = end;
      this.handleLine(line, tid);
    }
    if (this.isDown) {
      this.rx = [];
      this.rxLen = 0;
    }
    return data.length;
  }

  /** READ from thread `tid`: up to `size` bytes, waiting for some; 0 bytes = EOF. */
  async read(size: number, signal: AbortSignal, tid: number): Promise<Uint8Array> {
    this.usedBy(tid);
    for (let waited = false; ; waited = true) {
      if (this.tx.length > 0) {
        if (waited) this.usedBy(tid); // the owner may have exited while we waited
        return this.take(size);
      }
      if (this.eof) return new Uint8Array(0);
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

  /** RELEASE of the fd: the client is gone (closed it, or its process is exiting). */
  release(): void {
    for (const t of this.tx.splice(0)) t.done();
    this.txBytes = 0;
    this.shutdown('unexpected EOF');
    this.eof = true;
    this.client?.close();
    this.client = null;
  }

  /**
   * Thread `tid` is blocked in a READ or WRITE of this link (so it is alive and its id not
   * reused): if the client process has exited, tid's process takes the link over.
   */
  private usedBy(tid: number): void {
    const cur = this.client;
    if (cur === null || this.isDown || !cur.exited()) return;
    let next: ProcessRef;
    try {
      next = ProcessRef.open(tid);
    } catch {
      return; // that one is gone as well
    }
    this.log(`wcfs: ${this}: client exited; ${next} uses the link: it is the client now`);
    cur.close();
    this.client = next;
  }

  // ---- server side ----

  /** Queue one frame; resolves when the client has read all of it. No-op once down. */
  send(stream: bigint, msg: string): Promise<void> {
    if (this.isDown) return Promise.resolve();
    return this.queue(stream, msg);
  }

  /**
   * Send a request on the next even stream and wait for its reply, all within `timeoutMs`.
   * Rejects with LinkDownError / LinkTimeoutError. The deadlines share one timer per link
   * (armed for the earliest; see expire): a pin costs no timer of its own.
   */
  request(msg: string, timeoutMs: number): Promise<string> {
    if (this.isDown) return Promise.reject(new LinkDownError('link is down', ''));
    this.nextStream += 2n;
    const stream = this.nextStream;
    let p!: Pending;
    const reply = new Promise<string>((resolve, reject) => (p = { resolve, reject, deadline: performance.now() + timeoutMs, timeoutMs }));
    this.pending.set(stream, p);
    this.armDeadline(p.deadline);
    void this.queue(stream, msg);
    if (debug.enabled) p.sentNs = process.hrtime.bigint();
    return reply;
  }

  /**
   * Take the link down (first call wins; returns whether this call did). `reason` undefined
   * = graceful (bye); an Error becomes the cause of the LinkDownError. `control` = the
   * stream-0 line to send first ("error: …"/"fatal: …").
   */
  shutdown(reason: string | Error | undefined, control?: string): boolean {
    if (this.isDown) return false;
    this.isDown = true;
    const why = reason instanceof Error ? reason.message : reason;
    const down = new LinkDownError('link is down', why ?? 'bye', reason instanceof Error ? { cause: reason } : undefined);
    const npending = this.pending.size;
    for (const p of this.pending.values()) p.reject(down);
    this.pending.clear();
    clearTimeout(this.deadlineTimer);
    this.deadlineTimer = undefined;
    this.ac.abort(down);
    // frames still waiting for room are never sent (B3): their senders are told "done"
    for (const t of this.txWait.splice(0)) t.done();
    if (control !== undefined && !this.eof) {
      debug('%s: > 0 %s', this, this.redact(control));
      void this.queue(0n, control, true);
    }
    if (why !== undefined && control === undefined) debug('%s: down: %s', this, this.redact(why));
    this.eof = true; // readers get EOF once the queue (the control line) is drained
    this.wakeReaders();
    this.handlers.down(this, reason === undefined ? undefined : down, npending);
    return true;
  }

  // ---- internals ----

  /** Arm the deadline timer for `at` (performance.now() time), unless armed for earlier. */
  private armDeadline(at: number): void {
    if (this.deadlineTimer !== undefined) {
      if (this.deadlineAt <= at) return;
      clearTimeout(this.deadlineTimer);
    }
    this.deadlineAt = at;
    this.deadlineTimer = setTimeout(() => this.expire(), Math.max(0, at - performance.now()));
    this.deadlineTimer.unref(); // the FUSE session keeps the process; a pin need not
  }

  /**
   * The deadline timer fired: one pending request past its deadline fails, and the timer is
   * armed again for the earliest deadline left, if any (at once when that one is due too).
   * One at a time, as separate timers would: what the first failure does (a pin's failure
   * takes the link down) happens before the next one expires. Replies that came meanwhile
   * already left `pending`. One timer per link, whatever the number of requests in flight.
   */
  private expire(): void {
    this.deadlineTimer = undefined;
    const now = performance.now();
    let expired = false;
    let next = Infinity;
    for (const [stream, p] of this.pending) {
      if (!expired && p.deadline <= now) {
        expired = true;
        this.pending.delete(stream);
        p.reject(new LinkTimeoutError(p.timeoutMs));
        continue;
      }
      next = Math.min(next, p.deadline);
    }
    if (next !== Infinity) this.armDeadline(next);
  }

  /** Queue a frame (B3: admitted now if tx has room or `force`, else when it has). */
  private queue(stream: bigint, msg: string, force = false): Promise<void> {
    debug('%s: > %d %s', this, stream, this.redact(msg));
    return new Promise<void>((resolve) => {
      const t: TxItem = { bytes: Buffer.from(formatFrame(stream, msg), 'utf8'), off: 0, done: resolve };
      if (force || (this.txWait.length === 0 && this.txBytes < TX_MAX)) this.admit(t);
      else this.txWait.push(t);
    });
  }

  private admit(t: TxItem): void {
    this.tx.push(t);
    this.txBytes += t.bytes.length;
    this.wakeReaders();
  }

  /** Bytes queued for the client (tx), and frames waiting for room: for tests and stats. */
  get queued(): { bytes: number; waiting: number; inflight: number } {
    return { bytes: this.txBytes, waiting: this.txWait.length, inflight: this.inflight };
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
    this.txBytes -= n;
    while (this.txWait.length > 0 && this.txBytes < TX_MAX) this.admit(this.txWait.shift()!);
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  private redact(text: string): string {
    return this.handlers.redact ? this.handlers.redact(text) : text;
  }

  private log(line: string): void {
    (this.handlers.log ?? logLine)(line);
  }

  private wakeReaders(): void {
    const rs = this.readers;
    this.readers = [];
    for (const r of rs) r();
  }

  private protocolError(text: string): void {
    this.log(`wcfs: ${this}: serve rx: ${this.redact(text)}`);
    this.shutdown(text, `error: ${text}`);
  }

  private handleLine(line: string, tid: number): void {
    let stream: bigint;
    let msg: string;
    try {
      ({ stream, msg } = parseFrame(line));
    } catch (e) {
      this.protocolError((e as Error).message);
      return;
    }
    if (stream % 2n === 0n) {
      const p = this.pending.get(stream);
      // rtt: from right after the request's own debug line to here (the reply's line excluded)
      if (debug.enabled)
        debug('%s: < %d %s%s', this, stream, this.redact(msg), p?.sentNs ? ` (rtt ${(Number(process.hrtime.bigint() - p.sentNs) / 1e3).toFixed(1)} us)` : '');
      if (p === undefined) {
        this.protocolError(`${stream}: reply on unexpected stream`);
        return;
      }
      this.pending.delete(stream);
      p.resolve(msg);
      return;
    }
    debug('%s: < %d %s', this, stream, this.redact(msg));
    if (this.inflight >= MAX_INFLIGHT) {
      this.protocolError(`${stream}: too many requests in flight (${MAX_INFLIGHT})`);
      return;
    }
    let req: R | { kind: 'bye' };
    try {
      req = this.handlers.parse ? this.handlers.parse(msg) : (parseClientRequest(msg) as R | { kind: 'bye' });
    } catch (e) {
      this.track(this.send(stream, `error ${(e as Error).message}`));
      return;
    }
    if ((req as { kind?: unknown }).kind === 'bye') {
      this.shutdown(undefined);
      return;
    }
    this.track(this.handlers.request(this, stream, req as R, tid));
  }

  /** B2: a client request is in flight until `done` (its reply read, or the link down). */
  private track(done: Promise<void>): void {
    this.inflight++;
    const dec = () => void this.inflight--;
    done.then(dec, dec);
  }
}

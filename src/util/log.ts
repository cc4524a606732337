// Where src/ writes diagnostics to stderr: the default `log` of the server, the FUSE session,
// the watch links and FileStorage (each of them takes its own log function), and the CLI's
// messages to the user. Tracing goes through `debug` namespaces instead (README: Tracing).

/** Writes `text` to stderr as it is. */
export function writeStderr(text: string): void {
  process.stderr.write(text);
}

/** Writes one line to stderr: the default log function. */
export function logLine(line: string): void {
  writeStderr(line + '\n');
}

/** `wcfs: <msg>` on stderr: how the CLI talks to the user. */
export function say(msg: string): void {
  logLine(`wcfs: ${msg}`);
}

/**
 * Warnings a client can cause at will — a bad authentication key, a refused open — bounded per
 * kind, so that a hostile or looping client cannot flood stderr (and the server's time): at
 * most `burst` lines of one kind per `windowMs`; the rest are counted and reported in one line
 * when the window ends (or at close). Kinds are fixed strings in the code: the table is bounded.
 */
export class LogLimiter {
  private readonly kinds = new Map<string, { start: number; logged: number; dropped: number; timer?: NodeJS.Timeout }>();

  constructor(
    private readonly log: (msg: string) => void,
    readonly burst = 10,
    readonly windowMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Log `msg` (of kind `kind`) unless this kind's budget for the current window is spent. */
  line(kind: string, msg: string): void {
    const t = this.now();
    let k = this.kinds.get(kind);
    if (k !== undefined && t - k.start >= this.windowMs) {
      this.flush(kind);
      k = undefined;
    }
    if (k === undefined) this.kinds.set(kind, (k = { start: t, logged: 0, dropped: 0 }));
    if (k.logged < this.burst) {
      k.logged++;
      this.log(msg);
      return;
    }
    k.dropped++;
    if (k.timer === undefined) {
      k.timer = setTimeout(() => this.flush(kind), Math.max(0, k.start + this.windowMs - t));
      k.timer.unref();
    }
  }

  /** Report what was suppressed, and forget every window. */
  close(): void {
    for (const kind of [...this.kinds.keys()]) this.flush(kind);
  }

  private flush(kind: string): void {
    const k = this.kinds.get(kind);
    if (k === undefined) return;
    this.kinds.delete(kind);
    if (k.timer !== undefined) clearTimeout(k.timer);
    if (k.dropped > 0) {
      this.log(
        `${kind}: ${k.dropped} more such warning${k.dropped === 1 ? '' : 's'} suppressed (at most ${this.burst} per ${this.windowMs / 1000} s are logged)`,
      );
    }
  }
}

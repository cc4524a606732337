// A TCP proxy in front of a real ZEO server, for the network faults a test chooses: it
// forwards bytes both ways, splitting the client's stream into ZEO frames (4-byte big-endian
// length, then the payload), and, once armed with breakAt(), breaks the connection at the
// first client frame whose payload holds a marker (a method name: both encodings carry it as
// plain bytes). Connections made after the break are forwarded plainly (a reconnect works).
import net from 'node:net';

export interface BreakRule {
  /** Bytes the client frame must contain, e.g. 'tpc_finish'. */
  marker: string;
  /**
   * 'before': the frame never reaches the server; 'after-reply': it does, and what the server
   * sends back (its reply) is held until it has answered, then dropped with the connection.
   */
  at: 'before' | 'after-reply';
}

export class FaultyProxy {
  private rule: (BreakRule & { done: () => void }) | null = null;
  private readonly socks = new Set<net.Socket>();

  private constructor(
    private readonly srv: net.Server,
    readonly port: number,
  ) {}

  static async start(target: { host: string; port: number }): Promise<FaultyProxy> {
    let proxy!: FaultyProxy;
    const srv = net.createServer((client) => proxy.pipe(client, target));
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
    proxy = new FaultyProxy(srv, (srv.address() as net.AddressInfo).port);
    return proxy;
  }

  /** Arm the rule; resolves once the connection was broken by it. */
  breakAt(rule: BreakRule): Promise<void> {
    return new Promise<void>((done) => (this.rule = { ...rule, done }));
  }

  async close(): Promise<void> {
    for (const s of this.socks) s.destroy();
    await new Promise<void>((resolve) => this.srv.close(() => resolve()));
  }

  private pipe(client: net.Socket, target: { host: string; port: number }): void {
    const server = net.connect(target.port, target.host);
    for (const s of [client, server]) {
      this.socks.add(s);
      s.on('close', () => this.socks.delete(s));
      s.on('error', () => {});
    }
    const kill = () => {
      client.destroy();
      server.destroy();
    };
    client.on('close', kill);
    server.on('close', kill);
    let holding = false; // after-reply: the server's bytes are swallowed until the break
    server.on('data', (b) => {
      if (holding) return;
      client.write(b);
    });
    let rx = Buffer.alloc(0);
    client.on('data', (b) => {
      rx = Buffer.concat([rx, b]);
      while (rx.length >= 4 && rx.length >= 4 + rx.readUInt32BE(0)) {
        const n = 4 + rx.readUInt32BE(0);
        const frame = rx.subarray(0, n);
        rx = rx.subarray(n);
        const r = this.rule;
        if (r !== null && frame.includes(r.marker)) {
          this.rule = null;
          if (r.at === 'before') {
            kill();
            r.done();
            return;
          }
          holding = true;
          server.write(frame);
          // the server answers once it has done the call: break then (and a moment later, in
          // case that was something else), the answer unsent
          server.once('data', () =>
            setTimeout(() => {
              kill();
              r.done();
            }, 200),
          );
          return;
        }
        server.write(frame);
      }
    });
  }
}

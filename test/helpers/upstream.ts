/**
 * A real HTTP upstream for delivery tests: node:http on 127.0.0.1, port 0 unless given.
 * Records every request it receives (with arrival time), the most requests it ever had in
 * flight at once, and answers through a replaceable `respond` function.
 */
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface Received {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  /** Raw header list, as sent (for checking which names arrived). */
  rawHeaders: string[];
  body: Buffer;
  at: number;
}

export interface Answer {
  status: number;
  headers?: Record<string, string>;
  /** Wait this long before answering. */
  delayMs?: number;
  body?: string;
}

export type Respond = (r: Received, index: number) => Answer;

export class Upstream {
  readonly received: Received[] = [];
  respond: Respond = () => ({ status: 200 });
  inFlight = 0;
  maxInFlight = 0;
  port = 0;
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();

  static async start(port = 0, respond?: Respond): Promise<Upstream> {
    const u = new Upstream();
    if (respond) u.respond = respond;
    await u.listen(port);
    return u;
  }

  url(path = ''): string {
    return `http://127.0.0.1:${this.port}${path}`;
  }

  listen(port = this.port): Promise<void> {
    const server = createServer((req, res) => {
      this.inFlight++;
      this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const r: Received = { method: req.method!, url: req.url!, headers: req.headers, rawHeaders: req.rawHeaders, body: Buffer.concat(chunks), at: Date.now() };
        const index = this.received.length;
        this.received.push(r);
        const a = this.respond(r, index);
        const finish = (): void => {
          this.inFlight--;
          if (res.destroyed) return;
          answer(res, a);
        };
        if (a.delayMs) setTimeout(finish, a.delayMs);
        else finish();
      });
    });
    server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    this.server = server;
    return new Promise((res, rej) => {
      server.once('error', rej);
      server.listen(port, '127.0.0.1', () => {
        this.port = (server.address() as AddressInfo).port;
        res();
      });
    });
  }

  /** Stops listening and cuts every open connection (the upstream is down). */
  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (!s) return;
    for (const sock of this.sockets) sock.destroy();
    await new Promise<void>((r) => s.close(() => r()));
  }

  /** Distinct Crowd-Id values received. */
  ids(): Set<string> {
    return new Set(this.received.map((r) => String(r.headers['crowd-id'])));
  }

  /** Waits until `cond()` holds (polling), or fails after `timeoutMs`. */
  async until(cond: () => boolean, timeoutMs = 20_000, what = 'condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (received ${this.received.length})`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

function answer(res: ServerResponse, a: Answer): void {
  res.statusCode = a.status;
  for (const [k, v] of Object.entries(a.headers ?? {})) res.setHeader(k, v);
  res.end(a.body ?? '');
}

/** Waits until `cond()` resolves true, or fails after `timeoutMs`. */
export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs = 20_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

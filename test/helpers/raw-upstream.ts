/**
 * A misbehaving upstream for delivery tests: a raw `net` server that parses HTTP/1.1 requests
 * (Content-Length bodies only) and lets the test write whatever bytes it wants back, on the
 * socket the request came on. Counts connections; each request knows its connection.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

export interface RawRequest {
  method: string;
  path: string;
  /** Lower-cased names. */
  headers: Map<string, string>;
  body: Buffer;
  /** Crowd-Id header. */
  id: string;
  conn: RawConn;
}

export interface RawConn {
  readonly socket: Socket;
  readonly index: number;
  /** Requests received on this connection so far. */
  requests: number;
  /** Free for the test's own per-connection state. */
  state: Record<string, unknown>;
}

export type RawHandler = (req: RawRequest) => void;

export class RawUpstream {
  readonly received: RawRequest[] = [];
  connections = 0;
  port = 0;
  private readonly sockets = new Set<Socket>();
  private server: Server | null = null;

  constructor(public handle: RawHandler) {}

  static async start(handle: RawHandler): Promise<RawUpstream> {
    const u = new RawUpstream(handle);
    await u.listen();
    return u;
  }

  url(path = ''): string {
    return `http://127.0.0.1:${this.port}${path}`;
  }

  private listen(): Promise<void> {
    const server = createServer((socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => undefined);
      const conn: RawConn = { socket, index: this.connections++, requests: 0, state: {} };
      let buf = Buffer.alloc(0);
      socket.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        for (;;) {
          const end = buf.indexOf('\r\n\r\n');
          if (end < 0) return;
          const head = buf.subarray(0, end).toString('latin1').split('\r\n');
          const [method = '', path = ''] = head[0]!.split(' ');
          const headers = new Map<string, string>();
          for (const line of head.slice(1)) {
            const colon = line.indexOf(':');
            headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
          }
          const length = Number(headers.get('content-length') ?? 0);
          if (buf.length < end + 4 + length) return;
          const body = buf.subarray(end + 4, end + 4 + length);
          buf = buf.subarray(end + 4 + length);
          conn.requests++;
          const req: RawRequest = { method, path, headers, body, id: headers.get('crowd-id') ?? '', conn };
          this.received.push(req);
          this.handle(req);
        }
      });
    });
    this.server = server;
    return new Promise((res) => {
      server.listen(0, '127.0.0.1', () => {
        this.port = (server.address() as AddressInfo).port;
        res();
      });
    });
  }

  /** Requests received per Crowd-Id. */
  countById(): Map<string, number> {
    const m = new Map<string, number>();
    for (const r of this.received) m.set(r.id, (m.get(r.id) ?? 0) + 1);
    return m;
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (!s) return;
    for (const sock of this.sockets) sock.destroy();
    await new Promise<void>((r) => s.close(() => r()));
  }
}

/** A complete answer with an empty body. */
export function emptyAnswer(status: number, reason: string, headers: string[] = []): string {
  return `HTTP/1.1 ${status} ${reason}\r\n${headers.map((h) => `${h}\r\n`).join('')}content-length: 0\r\n\r\n`;
}

/**
 * The single source of crowd's configuration keys: type, default, bounds and a doc line
 * for each. `load.ts` validates a parsed TOML/JSON tree against it and collects every
 * problem with its key path; the README's config reference follows it.
 */
import { hostname } from 'node:os';

export type Spec =
  | { kind: 'string'; doc: string; default?: string | (() => string); optional?: true; pattern?: RegExp; hint?: string }
  | { kind: 'number'; doc: string; default?: number; min: number; max: number; integer?: true }
  | { kind: 'boolean'; doc: string; default: boolean }
  | { kind: 'enum'; doc: string; default?: string | number; values: readonly (string | number)[] }
  | { kind: 'duration'; doc: string; default: string; min_ms?: number; max_ms?: number }
  | { kind: 'size'; doc: string; default: string | number; min_bytes?: number; max_bytes?: number }
  | { kind: 'list'; doc: string; default: readonly unknown[]; of: Spec; max_items: number }
  | { kind: 'table'; doc: string; fields: Record<string, Spec> }
  | { kind: 'tables'; doc: string; fields: Record<string, Spec>; max_items: number };

/** Bounds that protect the process itself; the README names each one. */
export const LIMITS = {
  /** Largest accepted request body: bodies are held in memory until their commit. */
  max_body_bytes_max: 64 * 1024 * 1024,
  /** lmdb-js blocks the main thread with Atomics.wait above 300k outstanding writes. */
  max_pending_writes_max: 250_000,
  routes_max: 1024,
  targets_max: 256,
  peers_max: 32,
} as const;

export const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const NAME_HINT = 'letters, digits, "_", "." or "-", at most 64, starting with a letter or digit';
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;

export const SCHEMA: Record<string, Spec> = {
  node_id: {
    kind: 'string',
    doc: 'Name of this node; part of every request id and of the status output. Default: the hostname.',
    default: () => hostname(),
    pattern: NAME,
    hint: NAME_HINT,
  },
  server: {
    kind: 'table',
    doc: 'The ingest server clients send requests to.',
    fields: {
      host: { kind: 'string', doc: 'Address to listen on.', default: '0.0.0.0' },
      port: { kind: 'number', doc: 'TCP port; 0 picks a free one (logged at start).', default: 8080, min: 0, max: 65535, integer: true },
      max_body_bytes: {
        kind: 'size',
        doc: 'Largest request body; larger ones get 413 and the connection is closed.',
        default: 1024 * 1024,
        min_bytes: 1,
        max_bytes: LIMITS.max_body_bytes_max,
      },
      max_receiving_bytes: {
        kind: 'size',
        doc: 'Bytes of request bodies being received, all connections together (a declared Content-Length is reserved when the headers arrive, a chunked body as it grows); past it new requests get 503 + Retry-After and the connection is closed. Bodies over 64 KiB may fill only three quarters of it, so small requests still get through. At least server.max_body_bytes.',
        default: '64MiB',
        min_bytes: 64 * 1024,
        max_bytes: 64 * 1024 ** 3,
      },
      ack_status: { kind: 'enum', doc: 'Status of a stored-and-flushed answer.', default: 200, values: [200, 201, 202] },
      retry_after: {
        kind: 'duration',
        doc: 'Value of the Retry-After header on 503 answers (rounded up to whole seconds).',
        default: '1s',
        min_ms: 1000,
        max_ms: 3_600_000,
      },
    },
  },
  admin: {
    kind: 'table',
    doc: 'The admin server: /metrics, /healthz, /readyz, /status.',
    fields: {
      host: { kind: 'string', doc: 'Address to listen on.', default: '127.0.0.1' },
      port: { kind: 'number', doc: 'TCP port; 0 picks a free one (logged at start).', default: 9090, min: 0, max: 65535, integer: true },
      token: { kind: 'string', doc: 'When set, every admin call needs "Authorization: Bearer <token>".', optional: true, pattern: /^\S{8,}$/, hint: 'at least 8 characters, no spaces' },
    },
  },
  log: {
    kind: 'table',
    doc: 'The write-ahead log (one LMDB environment).',
    fields: {
      dir: {
        kind: 'string',
        doc: 'Directory of the log; created if missing. Relative paths are relative to the working directory.',
        default: './data',
        pattern: /^(?=[^]*\S)[^\0]*$/,
        hint: 'a directory path (not empty, no NUL byte)',
      },
      max_bytes: {
        kind: 'size',
        doc: 'Bytes of requests held in the log above which new requests get 503 + Retry-After.',
        default: '8GiB',
        min_bytes: 1024 * 1024,
        max_bytes: 4 * 1024 ** 4,
      },
      retention: { kind: 'duration', doc: 'How long entries every consumer has passed stay for replay.', default: '24h' },
      max_pending_writes: {
        kind: 'number',
        doc: 'Requests accepted but not yet flushed; past it new requests get 503 + Retry-After.',
        default: 65_536,
        min: 1,
        max: LIMITS.max_pending_writes_max,
        integer: true,
      },
      max_pending_bytes: {
        kind: 'size',
        doc: 'Bytes of requests accepted but not yet flushed (they are held in memory); past it new requests get 503 + Retry-After.',
        default: '256MiB',
        min_bytes: 1024 * 1024,
        max_bytes: 64 * 1024 ** 3,
      },
    },
  },
  routes: {
    kind: 'tables',
    doc: 'Which requests are accepted and where they go.',
    max_items: LIMITS.routes_max,
    fields: {
      name: { kind: 'string', doc: 'Route name (metrics label).', pattern: NAME, hint: NAME_HINT },
      path: {
        kind: 'string',
        doc: 'Exact path, or a prefix ending in "/*" ("/events/*" matches /events and everything under it).',
        pattern: /^\/(?:[^\s?#*]*\/)?\*$|^\/[^\s?#*]*$/,
        hint: 'a path starting with "/", optionally ending in "/*", without "?", "#" or other "*"',
      },
      methods: { kind: 'list', doc: 'Accepted methods; others get 405 with Allow.', default: ['POST'], of: { kind: 'enum', doc: 'HTTP method', values: METHODS }, max_items: METHODS.length },
      targets: { kind: 'list', doc: 'Names of targets that receive these requests; none: store only.', default: [], of: { kind: 'string', doc: 'target name' }, max_items: LIMITS.targets_max },
      token: { kind: 'string', doc: 'When set, requests need "Authorization: Bearer <token>" (else 401); the header is not stored.', optional: true, pattern: /^\S{8,}$/, hint: 'at least 8 characters, no spaces' },
    },
  },
  targets: {
    kind: 'tables',
    doc: 'Upstreams that stored requests are delivered to.',
    max_items: LIMITS.targets_max,
    fields: {
      name: { kind: 'string', doc: 'Target name.', pattern: NAME, hint: NAME_HINT },
      type: { kind: 'enum', doc: 'Sink type.', default: 'http', values: ['http', 'nats', 'redis'] },
      url: { kind: 'string', doc: 'Upstream URL; for http the request path and query are appended.', pattern: /^(https?|nats|redis|rediss):\/\/\S+$/, hint: 'an http://, https://, nats:// or redis:// URL' },
      concurrency: { kind: 'number', doc: 'Requests in flight.', default: 16, min: 1, max: 1024, integer: true },
      rate: { kind: 'number', doc: 'Requests per second; 0 = unlimited.', default: 0, min: 0, max: 1_000_000 },
      timeout: { kind: 'duration', doc: 'Time limit of one delivery attempt (connect, send and response headers).', default: '10s', min_ms: 1 },
      ordered: { kind: 'boolean', doc: 'Deliver in strict offset order, one request in flight; a retrying request holds back the ones after it.', default: false },
      max_read_ahead_bytes: {
        kind: 'size',
        doc: 'Bytes of requests read from the log and held in memory for this target (waiting to be sent or in flight); requests waiting for a retry keep only their offset. At least one request is always held, whatever its size.',
        default: '16MiB',
        min_bytes: 64 * 1024,
        max_bytes: 64 * 1024 ** 3,
      },
      max_lag_bytes: {
        kind: 'size',
        doc: 'Bytes of the log this target may hold back from retention (the records after its offset); past it, its oldest undelivered entries go to its dead-letter store instead of filling the log and stopping ingest for every route. 0: off.',
        default: 0,
      },
      retry: {
        kind: 'table',
        doc: 'Retry policy.',
        fields: {
          base: { kind: 'duration', doc: 'First backoff step (full jitter).', default: '200ms', min_ms: 1, max_ms: 86_400_000 },
          max: { kind: 'duration', doc: 'Largest backoff step; also the probe interval of a paused target.', default: '60s', min_ms: 1, max_ms: 86_400_000 },
          max_age: { kind: 'duration', doc: 'Requests older than this (from their receipt, or their replay from the dead letters) go to the dead-letter store unsent, whether they were attempted or not.', default: '72h', min_ms: 1 },
          permanent: {
            kind: 'list',
            doc: 'Upstream statuses that dead-letter a request at once (no retry).',
            default: [400, 404, 405, 410, 413, 415, 422],
            of: { kind: 'number', doc: 'HTTP status', min: 300, max: 599, integer: true },
            max_items: 100,
          },
        },
      },
    },
  },
  delivery: {
    kind: 'table',
    doc: 'Delivery to the targets.',
    fields: {
      max_read_ahead_bytes: {
        kind: 'size',
        doc: 'Bytes of requests held in memory for delivery over all targets together (each target also has its own targets[].max_read_ahead_bytes); past it, a target holding one request or more reads no more.',
        default: '256MiB',
        min_bytes: 1024 * 1024,
        max_bytes: 256 * 1024 ** 3,
      },
    },
  },
  cluster: {
    kind: 'table',
    doc: 'Replication between crowd nodes.',
    fields: {
      peers: { kind: 'list', doc: 'Ingest URLs of the other nodes.', default: [], of: { kind: 'string', doc: 'peer URL', pattern: /^https?:\/\/\S+$/, hint: 'an http:// or https:// URL' }, max_items: LIMITS.peers_max },
      ack: { kind: 'enum', doc: 'local: ack after the local fsync (replication follows behind); quorum: ack only once cluster.min_insync copies (this node included) are fsynced.', default: 'local', values: ['local', 'quorum'] },
      secret: { kind: 'string', doc: 'Shared secret every node presents on /_crowd/replicate (required with peers, or secret_file).', optional: true, pattern: /^\S{16,}$/, hint: 'at least 16 characters, no spaces' },
      secret_file: { kind: 'string', doc: 'A file holding the shared secret (instead of secret; one line, at least 16 characters).', optional: true },
      min_insync: { kind: 'number', doc: 'Copies flushed (this node included) before a quorum ack; 0 = a majority of 1 + peers.', default: 0, min: 0, max: LIMITS.peers_max + 1, integer: true },
      ack_timeout: { kind: 'duration', doc: 'A quorum not reached in this time: 503 + Retry-After (the request stays stored and may still be delivered).', default: '2s', min_ms: 10, max_ms: 60_000 },
      takeover_after: { kind: 'duration', doc: "A peer unheard of this long is down: the live node that wins the rendezvous hash delivers its replica's backlog.", default: '15s', min_ms: 1000, max_ms: 3_600_000 },
    },
  },
};

export type Method = (typeof METHODS)[number];

export interface RouteConfig {
  readonly name: string;
  readonly path: string;
  readonly methods: readonly Method[];
  readonly targets: readonly string[];
  readonly token?: string;
}

export interface TargetConfig {
  readonly name: string;
  readonly type: 'http' | 'nats' | 'redis';
  readonly url: string;
  readonly concurrency: number;
  readonly rate: number;
  /** Milliseconds. */
  readonly timeout: number;
  readonly ordered: boolean;
  /** Bytes of envelopes held in memory for this target. */
  readonly max_read_ahead_bytes: number;
  /** Bytes of the log this target may hold back; 0: no bound. */
  readonly max_lag_bytes: number;
  /** Durations in milliseconds. */
  readonly retry: { readonly base: number; readonly max: number; readonly max_age: number; readonly permanent: readonly number[] };
}

/** The resolved configuration: durations in milliseconds, sizes in bytes, deep-frozen. */
export interface Config {
  readonly node_id: string;
  readonly server: {
    readonly host: string;
    readonly port: number;
    readonly max_body_bytes: number;
    readonly max_receiving_bytes: number;
    readonly ack_status: 200 | 201 | 202;
    readonly retry_after: number;
  };
  readonly admin: { readonly host: string; readonly port: number; readonly token?: string };
  readonly log: { readonly dir: string; readonly max_bytes: number; readonly retention: number; readonly max_pending_writes: number; readonly max_pending_bytes: number };
  readonly routes: readonly RouteConfig[];
  readonly targets: readonly TargetConfig[];
  readonly delivery: { readonly max_read_ahead_bytes: number };
  readonly cluster: {
    readonly peers: readonly string[];
    readonly ack: 'local' | 'quorum';
    /** Resolved from secret or secret_file. */
    readonly secret?: string;
    readonly secret_file?: string;
    /** Resolved: a majority when 0 was configured. */
    readonly min_insync: number;
    readonly ack_timeout: number;
    readonly takeover_after: number;
  };
}

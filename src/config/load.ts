/**
 * Finds, parses and validates the configuration. Every problem is collected with its key
 * path, so `crowd check` reports all of them at once; the result is deep-frozen.
 *
 * Lookup order: the -c flag, then CROWD_CONFIG, then ./crowd.toml, then the built-in defaults.
 */
import { existsSync, readFileSync } from 'node:fs';
import { extname, resolve } from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { CrowdError } from '../errors';
import { overlapsReserved } from '../http/routes';
import { SCHEMA, type Config, type Spec } from './schema';
import { describe, parseDurationMs, parseSizeBytes } from './units';

export interface ConfigProblem {
  /** Key path such as `routes[0].path`, or `line 3` for a syntax error. */
  readonly where: string;
  readonly problem: string;
}

export class ConfigError extends CrowdError {
  readonly file: string;
  readonly problems: readonly ConfigProblem[];
  constructor(file: string, problems: readonly ConfigProblem[]) {
    super('CROWD_ERR_CONFIG', problems.map((p) => formatProblem(file, p)).join('\n'));
    this.file = file;
    this.problems = problems;
  }
}

/** The one-line form `crowd check` prints: `crowd: config error: <file>: <key.path>: <problem>`. */
export function formatProblem(file: string, p: ConfigProblem): string {
  return `crowd: config error: ${file}: ${p.where}: ${p.problem}`;
}

export const DEFAULTS_NAME = '(built-in defaults)';

/** Returns the config file to use, or null for the built-in defaults. */
export function findConfigFile(flag: string | undefined, env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): string | null {
  if (flag) return flag;
  if (env.CROWD_CONFIG) return env.CROWD_CONFIG;
  const local = resolve(cwd, 'crowd.toml');
  return existsSync(local) ? 'crowd.toml' : null;
}

export interface LoadedConfig {
  readonly file: string;
  readonly config: Config;
}

export function loadConfig(flag?: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  const file = findConfigFile(flag, env);
  if (file === null) return { file: DEFAULTS_NAME, config: validateConfig({}, DEFAULTS_NAME) };
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new ConfigError(file, [{ where: 'file', problem: `cannot read the file (${code})` }]);
  }
  return { file, config: parseConfigText(text, file) };
}

/** Parses TOML or JSON (chosen by the file extension) and validates it. */
export function parseConfigText(text: string, file: string): Config {
  const ext = extname(file).toLowerCase();
  let raw: unknown;
  if (ext === '.toml') {
    try {
      raw = parseToml(text);
    } catch (err) {
      const e = err as TomlError;
      const where = typeof e.line === 'number' ? `line ${e.line}, column ${e.column}` : 'file';
      const first = String(e.message).split('\n')[0];
      throw new ConfigError(file, [{ where, problem: `not valid TOML: ${first}` }]);
    }
  } else if (ext === '.json') {
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new ConfigError(file, [{ where: 'file', problem: `not valid JSON: ${(err as Error).message}` }]);
    }
  } else {
    throw new ConfigError(file, [{ where: 'file', problem: `unknown config format "${ext || '(none)'}": use a .toml or .json file` }]);
  }
  return validateConfig(raw, file);
}

export function validateConfig(raw: unknown, file: string): Config {
  const problems: ConfigProblem[] = [];
  const out = checkTable(raw, SCHEMA, '', problems) as Record<string, unknown>;
  if (problems.length === 0) crossCheck(out as unknown as Config, problems);
  if (problems.length > 0) throw new ConfigError(file, problems);
  const config = out as unknown as Config & { log: { dir: string } };
  (config.log as { dir: string }).dir = resolve(config.log.dir);
  return deepFreeze(config);
}

function join(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

function checkTable(raw: unknown, fields: Record<string, Spec>, path: string, problems: ConfigProblem[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (raw === undefined) raw = {};
  const proto = raw !== null && typeof raw === 'object' ? Object.getPrototypeOf(raw) : undefined;
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw) || (proto !== Object.prototype && proto !== null)) {
    problems.push({ where: path || 'file', problem: `expected a table, got ${describe(raw)}` });
    return out;
  }
  const obj = raw as Record<string, unknown>;
  for (const key of Object.keys(obj)) {
    if (!Object.hasOwn(fields, key)) {
      const known = Object.keys(fields).join(', ');
      problems.push({ where: join(path, key), problem: `unknown key (known keys${path ? ` of ${path}` : ''}: ${known})` });
    }
  }
  for (const [key, spec] of Object.entries(fields)) {
    const value = checkValue(obj[key], spec, join(path, key), problems);
    if (value !== undefined) out[key] = value;
  }
  return out;
}

function checkValue(raw: unknown, spec: Spec, path: string, problems: ConfigProblem[]): unknown {
  if (raw === undefined) {
    switch (spec.kind) {
      case 'table':
        return checkTable({}, spec.fields, path, problems);
      case 'tables':
        return [];
      case 'list':
        return [...spec.default];
      case 'duration':
      case 'size':
        return checkValue(spec.default, spec, path, problems);
      case 'string':
        if (spec.default !== undefined) return typeof spec.default === 'function' ? spec.default() : spec.default;
        if (spec.optional) return undefined;
        problems.push({ where: path, problem: 'required key is missing' });
        return undefined;
      default:
        if (spec.default !== undefined) return spec.default;
        problems.push({ where: path, problem: 'required key is missing' });
        return undefined;
    }
  }
  const bad = (problem: string): undefined => {
    problems.push({ where: path, problem });
    return undefined;
  };
  switch (spec.kind) {
    case 'string':
      if (typeof raw !== 'string') return bad(`expected a string, got ${describe(raw)}`);
      if (spec.pattern && !spec.pattern.test(raw)) return bad(`"${raw}" is not valid: expected ${spec.hint ?? spec.pattern}`);
      return raw;
    case 'number': {
      if (typeof raw !== 'number' || !Number.isFinite(raw)) return bad(`expected a number, got ${describe(raw)}`);
      if (spec.integer && !Number.isInteger(raw)) return bad(`expected a whole number, got ${raw}`);
      if (raw < spec.min || raw > spec.max) return bad(`${raw} is out of range (${spec.min} to ${spec.max})`);
      return raw;
    }
    case 'boolean':
      if (typeof raw !== 'boolean') return bad(`expected true or false, got ${describe(raw)}`);
      return raw;
    case 'enum':
      if (!spec.values.includes(raw as string | number)) {
        return bad(`${describe(raw)} is not one of ${spec.values.map((v) => JSON.stringify(v)).join(', ')}`);
      }
      return raw;
    case 'duration': {
      const r = parseDurationMs(raw);
      if (!r.ok) return bad(r.problem);
      if (spec.min_ms !== undefined && r.value < spec.min_ms) return bad(`${JSON.stringify(raw)} is below the minimum of ${formatDuration(spec.min_ms)}`);
      if (spec.max_ms !== undefined && r.value > spec.max_ms) return bad(`${JSON.stringify(raw)} is above the maximum of ${formatDuration(spec.max_ms)}`);
      return r.value;
    }
    case 'size': {
      const r = parseSizeBytes(raw);
      if (!r.ok) return bad(r.problem);
      if (spec.min_bytes !== undefined && r.value < spec.min_bytes) return bad(`${JSON.stringify(raw)} is below the minimum of ${spec.min_bytes} bytes`);
      if (spec.max_bytes !== undefined && r.value > spec.max_bytes) return bad(`${JSON.stringify(raw)} is above the maximum of ${spec.max_bytes} bytes`);
      return r.value;
    }
    case 'list': {
      if (!Array.isArray(raw)) return bad(`expected an array, got ${describe(raw)}`);
      if (raw.length > spec.max_items) return bad(`at most ${spec.max_items} items, got ${raw.length}`);
      return raw.map((item, i) => checkValue(item, spec.of, `${path}[${i}]`, problems));
    }
    case 'table':
      return checkTable(raw, spec.fields, path, problems);
    case 'tables': {
      if (!Array.isArray(raw)) return bad(`expected an array of tables, got ${describe(raw)}`);
      if (raw.length > spec.max_items) return bad(`at most ${spec.max_items} entries, got ${raw.length}`);
      return raw.map((item, i) => checkTable(item, spec.fields, `${path}[${i}]`, problems));
    }
  }
}

const RESERVED_PATHS = ['/healthz', '/_crowd'];

/** True when `url` has a user name or password (`http://user:pass@host/`). */
/** cluster.*: the secret (from secret_file too), min_insync resolved, no peer twice or naming this node. */
function checkCluster(c: Config, problems: ConfigProblem[]): void {
  const cl = c.cluster as { -readonly [K in keyof Config['cluster']]: Config['cluster'][K] };
  if (cl.secret !== undefined && cl.secret_file !== undefined) problems.push({ where: 'cluster.secret_file', problem: 'set either cluster.secret or cluster.secret_file, not both' });
  if (cl.secret_file !== undefined && cl.secret === undefined) {
    try {
      const text = readFileSync(resolve(cl.secret_file), 'utf8').replace(/\r?\n$/, '');
      if (!/^\S{16,}$/.test(text)) problems.push({ where: 'cluster.secret_file', problem: `${cl.secret_file} must hold one line of at least 16 characters, no spaces` });
      else cl.secret = text;
    } catch (err) {
      problems.push({ where: 'cluster.secret_file', problem: `cannot read ${cl.secret_file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` });
    }
  }
  const n = 1 + cl.peers.length;
  if (cl.peers.length > 0 && cl.secret === undefined && cl.secret_file === undefined) problems.push({ where: 'cluster.secret', problem: 'is required when cluster.peers is set (or cluster.secret_file): peers authenticate with it' });
  if (cl.min_insync === 0) cl.min_insync = Math.floor(n / 2) + 1;
  else if (cl.min_insync > n) problems.push({ where: 'cluster.min_insync', problem: `${cl.min_insync} is more than the ${n} nodes this one knows (itself and ${cl.peers.length} peers)` });
  if (cl.ack === 'quorum' && cl.peers.length > 0 && cl.min_insync === 1) problems.push({ where: 'cluster.min_insync', problem: 'is 1 with ack = "quorum": the quorum would be this node alone, which is ack = "local"; set 2 or more, or ack = "local"' });
  if (cl.ack === 'quorum' && cl.peers.length === 0) problems.push({ where: 'cluster.ack', problem: '"quorum" needs cluster.peers: with no peers only the local copy exists' });
  const seen = new Set<string>();
  cl.peers.forEach((p, i) => {
    let u: URL;
    try {
      u = new URL(p);
    } catch {
      problems.push({ where: `cluster.peers[${i}]`, problem: `${JSON.stringify(p)} is not a URL` });
      return;
    }
    if (u.pathname !== '/' || u.search || u.hash || u.username || u.password) problems.push({ where: `cluster.peers[${i}]`, problem: 'must be a bare http(s)://host:port (no path, query or credentials)' });
    const key = `${u.protocol}//${u.host}`;
    if (seen.has(key)) problems.push({ where: `cluster.peers[${i}]`, problem: `${key} is listed twice` });
    seen.add(key);
    const port = Number(u.port || (u.protocol === 'https:' ? 443 : 80));
    const local = ['127.0.0.1', 'localhost', '[::1]', c.server.host].includes(u.hostname);
    if (local && port === c.server.port && c.server.port !== 0) problems.push({ where: `cluster.peers[${i}]`, problem: `${key} is this node's own server.port: a node must not list itself` });
  });
}

function hasCredentials(url: string): boolean {
  try {
    const u = new URL(url);
    return u.username !== '' || u.password !== '';
  } catch {
    return false;
  }
}

/** Rules that span keys: unique names, known targets, reserved paths. */
function crossCheck(c: Config, problems: ConfigProblem[]): void {
  const targetNames = new Set<string>();
  c.targets.forEach((t, i) => {
    if (targetNames.has(t.name)) problems.push({ where: `targets[${i}].name`, problem: `duplicate target name "${t.name}"` });
    targetNames.add(t.name);
    if (t.type !== 'http') problems.push({ where: `targets[${i}].type`, problem: `"${t.type}" is not supported by this version; use "http"` });
    if (t.type === 'http' && !/^https?:\/\//.test(t.url)) problems.push({ where: `targets[${i}].url`, problem: `an http target needs an http:// or https:// URL, got "${t.url}"` });
    if (t.type === 'http' && hasCredentials(t.url)) {
      // Not echoed: the problem lines go to terminals and logs.
      problems.push({ where: `targets[${i}].url`, problem: 'credentials in the URL ("user:password@") are not supported: crowd would not send them and would show them in /status; remove them' });
    }
    if (t.retry.base > t.retry.max) problems.push({ where: `targets[${i}].retry.base`, problem: 'must not be larger than retry.max' });
    t.retry.permanent.forEach((code, j) => {
      if (code === 401 || code === 403) problems.push({ where: `targets[${i}].retry.permanent[${j}]`, problem: `${code} pauses the target (a credentials problem), it cannot dead-letter requests` });
    });
  });
  const routeNames = new Set<string>();
  const paths = new Map<string, number>();
  c.routes.forEach((r, i) => {
    if (routeNames.has(r.name)) problems.push({ where: `routes[${i}].name`, problem: `duplicate route name "${r.name}"` });
    routeNames.add(r.name);
    const other = paths.get(r.path);
    if (other !== undefined) problems.push({ where: `routes[${i}].path`, problem: `"${r.path}" is already used by routes[${other}]` });
    paths.set(r.path, i);
    const reserved = RESERVED_PATHS.find((p) => overlapsReserved(r.path, p));
    if (reserved) problems.push({ where: `routes[${i}].path`, problem: `"${r.path}" overlaps "${reserved}", which crowd reserves for itself` });
    if (r.methods.length === 0) problems.push({ where: `routes[${i}].methods`, problem: 'needs at least one method' });
    if (new Set(r.methods).size !== r.methods.length) problems.push({ where: `routes[${i}].methods`, problem: 'lists a method twice' });
    r.targets.forEach((t, j) => {
      if (!targetNames.has(t)) problems.push({ where: `routes[${i}].targets[${j}]`, problem: `no target is named "${t}"` });
    });
  });
  checkCluster(c, problems);
  c.targets.forEach((t, i) => {
    // An ordered target sends nothing past a retrying request, so its oldest entries never
    // leave the main line for the dead letters: the bound could not hold.
    if (t.ordered && t.max_lag_bytes > 0) problems.push({ where: `targets[${i}].max_lag_bytes`, problem: 'cannot be used with ordered = true (an ordered target holds its entries in order until they are delivered)' });
    if (t.max_lag_bytes > 0 && t.max_lag_bytes >= c.log.max_bytes * 0.9) {
      problems.push({ where: `targets[${i}].max_lag_bytes`, problem: `must be below 90% of log.max_bytes (${c.log.max_bytes}), where retention starts removing delivered entries` });
    }
  });
  if (c.server.max_receiving_bytes < c.server.max_body_bytes) {
    problems.push({ where: 'server.max_receiving_bytes', problem: `must be at least server.max_body_bytes (${c.server.max_body_bytes})` });
  }
  if (c.server.port !== 0 && c.server.port === c.admin.port && c.server.host === c.admin.host) {
    problems.push({ where: 'admin.port', problem: `${c.admin.port} is also server.port` });
  }
}

export function formatDuration(ms: number): string {
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** The resolved config as the user would write it: durations back as strings, tokens hidden. */
export function displayConfig(config: Config): unknown {
  const walk = (value: unknown, spec: Spec): unknown => {
    if (value === undefined) return undefined;
    switch (spec.kind) {
      case 'duration':
        return formatDuration(value as number);
      case 'table':
        return walkTable(value as Record<string, unknown>, spec.fields);
      case 'tables':
        return (value as Record<string, unknown>[]).map((v) => walkTable(v, spec.fields));
      case 'string':
        return spec.optional && /token|secret/i.test(spec.doc) ? '(set)' : value;
      default:
        return value;
    }
  };
  const walkTable = (obj: Record<string, unknown>, fields: Record<string, Spec>): Record<string, unknown> => {
    const out: Record<string, unknown> = {};
    for (const [k, spec] of Object.entries(fields)) {
      const v = walk(obj[k], spec);
      if (v !== undefined) out[k] = v;
    }
    return out;
  };
  return walkTable(config as unknown as Record<string, unknown>, SCHEMA);
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

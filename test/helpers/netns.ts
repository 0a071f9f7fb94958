/**
 * Network namespaces for cluster tests: a NetLab gives each name its own namespace
 * (`crowdt-<id>-<name>`, address 10.<k>.0.<i+1>/24) joined by one veth pair to a bridge in
 * the root namespace (10.<k>.0.254/24), so the test process reaches every namespace and
 * the namespaces reach each other. partition() cuts one namespace off, netem() shapes what
 * it sends, exec() runs a command in it (crowd, an upstream, a client).
 *
 * Nothing may outlive the test: the lab is destroyed by t.teardown, by a process 'exit'
 * handler (an uncaught exception, process.exit) and on SIGTERM, SIGINT and SIGHUP; what a
 * SIGKILL leaves is swept by the next NetLab.create (or NetLab.sweep()): each lab records
 * its creator's pid and start time in /run/crowdt/<id>.json before it creates anything, and
 * deletes that record last, so a namespace or link whose record is missing or names a dead
 * process is stale.
 *
 * The ip and tc calls are short and run synchronously (the exit handler needs them so).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { existsSync, linkSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { request } from './http';

export const RUN_DIR = '/run/crowdt';
export const NS_PREFIX = 'crowdt-';
const ID_CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789';
const ID_LENGTH = 4;
/** Namespace names: short, so `crowdt-<id>-<name>` stays readable. */
const NAME = /^[a-z][a-z0-9]{0,15}$/;
/** Veth names are ct<id><index><a|b>: 9 characters at most with two index digits (the kernel's limit is 15). */
const NAMES_MAX = 50;
/** Labs take 10.<k>.0.0/24 with k in this range. */
const SUBNET_FIRST = 100;
const SUBNET_LAST = 250;
const CMD_TIMEOUT_MS = 10_000;
const NS_RE = /^crowdt-([a-z0-9]{4})-/;
const LINK_RE = /^ct([a-z0-9]{4})(?:br|\d{1,2}b)$/;
/** What ip and tc say about a namespace, link or qdisc that is not there. */
const GONE = /Cannot find device|No such file or directory|does not exist|Cannot open network namespace|Cannot delete qdisc with handle of zero/;

const SEARCH_PATH = [...(process.env.PATH ?? '').split(':').filter(Boolean), '/usr/sbin', '/sbin', '/usr/bin', '/bin'];

function which(cmd: string): string | null {
  for (const dir of SEARCH_PATH) if (existsSync(join(dir, cmd))) return join(dir, cmd);
  return null;
}

const IP = which('ip');
const TC = which('tc');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function sh(argv: string[]): Run {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: CMD_TIMEOUT_MS, killSignal: 'SIGKILL' });
  if (r.error) return { code: null, stdout: '', stderr: r.error.message };
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ip(...args: string[]): Run {
  if (!IP) throw new Error('the ip command (iproute2) is not installed');
  return sh([IP, ...args]);
}

function must(argv: string[]): string {
  const r = sh(argv);
  if (r.code !== 0) throw new Error(`${argv.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** Runs a cleanup step: a thing already gone is fine, anything else is returned as a problem. */
function quiet(argv: string[]): string | null {
  const r = sh(argv);
  if (r.code === 0 || GONE.test(r.stderr)) return null;
  return `${argv.join(' ')}: ${r.stderr.trim() || `exit ${r.code}`}`;
}

// ---- records under RUN_DIR ----

interface LabRecord {
  pid: number;
  /** The creator's start time (/proc/<pid>/stat field 22), so a reused pid is not taken for it. */
  start: string;
  created: number;
  /** The subnet's second octet, once claimed. */
  k: number | null;
}

/** A running process's start time, null when it is gone or a zombie (its parent may never reap it). */
function procStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z' || fields[0] === 'X') return null;
    return fields[19] ?? null;
  } catch {
    return null;
  }
}

function recordPath(id: string): string {
  return join(RUN_DIR, `${id}.json`);
}

function netPath(k: number): string {
  return join(RUN_DIR, `net-${k}`);
}

/** Creates `path` holding `content` unless it exists; readers never see it half written. */
function createExclusive(path: string, content: string): boolean {
  const tmp = `${path}.tmp-${process.pid}-${randomInt(1e9)}`;
  writeFileSync(tmp, content);
  try {
    linkSync(tmp, path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    rmSync(tmp, { force: true });
  }
}

function readRecord(id: string): LabRecord | null {
  try {
    return JSON.parse(readFileSync(recordPath(id), 'utf8')) as LabRecord;
  } catch {
    return null;
  }
}

function recordAlive(rec: LabRecord | null): boolean {
  return rec !== null && procStart(rec.pid) === rec.start;
}

/** A fresh lab id, recorded as this process's before anything of the lab exists. */
function claimId(): string {
  mkdirSync(RUN_DIR, { recursive: true });
  const rec: LabRecord = { pid: process.pid, start: procStart(process.pid) ?? '', created: Date.now(), k: null };
  for (let tries = 0; tries < 100; tries++) {
    let id = '';
    for (let i = 0; i < ID_LENGTH; i++) id += ID_CHARS[randomInt(ID_CHARS.length)];
    if (createExclusive(recordPath(id), JSON.stringify(rec))) return id;
  }
  throw new Error(`no free lab id in ${RUN_DIR} after 100 tries`);
}

/** Claims a 10.<k>.0.0/24 no interface or route of this machine uses and no other lab holds. */
function claimSubnet(id: string): number {
  const used = new Set<number>();
  for (const m of (ip('-4', '-o', 'addr', 'show').stdout + ip('-4', 'route', 'show', 'table', 'all').stdout).matchAll(/\b10\.(\d+)\./g)) used.add(Number(m[1]));
  const candidates: number[] = [];
  for (let k = SUBNET_FIRST; k <= SUBNET_LAST; k++) if (!used.has(k)) candidates.push(k);
  for (let i = candidates.length - 1; i > 0; i--) {
    const j = randomInt(i + 1);
    [candidates[i], candidates[j]] = [candidates[j]!, candidates[i]!];
  }
  for (const k of candidates) {
    if (!createExclusive(netPath(k), id)) continue;
    const rec = readRecord(id)!;
    rec.k = k;
    const tmp = `${recordPath(id)}.tmp-${process.pid}`;
    writeFileSync(tmp, JSON.stringify(rec));
    renameSync(tmp, recordPath(id));
    return k;
  }
  throw new Error(`no free subnet 10.${SUBNET_FIRST}-${SUBNET_LAST}.0.0/24 (all used by interfaces, routes or other labs)`);
}

/**
 * Removes what one lab left: kills the processes in its namespaces, deletes its root-side
 * links (a veth pair goes with either end; a deleted namespace frees its end only later),
 * the namespaces, the subnet claim and last the record. Returns the problems (not "already gone").
 */
function removeLab(id: string, namespaces: string[], links: string[], k: number | null): string[] {
  const problems: string[] = [];
  for (const ns of namespaces) {
    const pids = ip('netns', 'pids', ns);
    for (const pid of pids.stdout.split(/\s+/).filter(Boolean).map(Number)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  for (const link of links) {
    const p = quiet([IP!, 'link', 'del', link]);
    if (p) problems.push(p);
  }
  for (const ns of namespaces) {
    const p = quiet([IP!, 'netns', 'del', ns]);
    if (p) problems.push(p);
  }
  if (k !== null) {
    try {
      if (readFileSync(netPath(k), 'utf8') === id) rmSync(netPath(k), { force: true });
    } catch {
      // not there
    }
  }
  rmSync(recordPath(id), { force: true });
  return problems;
}

function listNamespaces(): string[] {
  return ip('netns', 'list').stdout.split('\n').map((l) => l.trim().split(/\s+/)[0] ?? '').filter(Boolean);
}

function listLinks(): string[] {
  // "7: ct1a2b0b@if2: <BROADCAST,...": the name, without the peer after '@'.
  return ip('-o', 'link', 'show').stdout.split('\n').map((l) => (l.split(': ')[1] ?? '').split('@')[0]!).filter(Boolean);
}

// ---- process exit and signals ----

const live = new Set<NetLab>();
const SIGNALS: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];

function onExit(): void {
  for (const lab of [...live]) {
    try {
      lab.destroySync();
    } catch (err) {
      process.stderr.write(`${(err as Error).message}\n`);
    }
  }
}

/**
 * Cleans up, then lets the signal do what it would have done: this listener removes itself
 * and raises the signal again (the default action, or the other listeners, e.g. tap's).
 */
function onSignal(sig: NodeJS.Signals): void {
  onExit();
  for (const s of SIGNALS) process.removeListener(s, onSignal);
  process.removeListener('exit', onExit);
  process.kill(process.pid, sig);
}

function watchProcess(): void {
  if (process.listeners('exit').includes(onExit)) return;
  process.on('exit', onExit);
  for (const s of SIGNALS) process.on(s, onSignal);
}

function unwatchProcess(): void {
  if (live.size > 0) return;
  process.removeListener('exit', onExit);
  for (const s of SIGNALS) process.removeListener(s, onSignal);
}

// ---- the lab ----

/** What NetLab.create needs of a tap test (a child script may pass its own). */
export interface Teardown {
  teardown(fn: () => unknown): void;
}

let availability: Promise<string | null> | null = null;
let netemAvailability: Promise<string | null> | null = null;

/** Creates a probe lab's namespace and runs `check` in it; returns the first failure. */
function probe(check: (ns: string, id: string) => string | null): string | null {
  const id = claimId();
  const ns = `${NS_PREFIX}${id}-probe`;
  const links = [`ct${id}br`, `ct${id}0b`];
  try {
    const add = ip('netns', 'add', ns);
    if (add.code !== 0) return `ip netns add failed: ${add.stderr.trim()}`;
    return check(ns, id);
  } finally {
    removeLab(id, [ns], links, null);
  }
}

export class NetLab {
  readonly id: string;
  readonly names: readonly string[];
  /** The subnet's second octet: addresses are 10.<k>.0.x. */
  k = 0;
  private destroyed = false;

  private constructor(id: string, names: string[]) {
    this.id = id;
    this.names = names;
  }

  /**
   * Null when labs can be built here (root, iproute2, network namespaces, bridges and veth
   * pairs work: tried on a probe namespace), else why not. Tests skip with it, visibly.
   */
  static available(): Promise<string | null> {
    availability ??= Promise.resolve().then(() => {
      if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`;
      const uid = process.getuid?.();
      if (uid !== 0) return `network namespaces need root (uid ${uid})`;
      if (!IP) return 'the ip command (iproute2) is not installed: `make deps` installs it';
      try {
        return probe((ns, id) => {
          const br = ip('link', 'add', `ct${id}br`, 'type', 'bridge');
          if (br.code !== 0) return `cannot create a bridge: ${br.stderr.trim()}`;
          const veth = ip('link', 'add', `ct${id}0b`, 'type', 'veth', 'peer', 'name', `ct${id}0a`, 'netns', ns);
          if (veth.code !== 0) return `cannot create a veth pair: ${veth.stderr.trim()}`;
          return null;
        });
      } catch (err) {
        return `cannot record a lab in ${RUN_DIR}: ${(err as Error).message}`;
      }
    });
    return availability;
  }

  /** Null when netem() works here (tc is installed and the kernel has sch_netem), else why not. */
  static netemAvailable(): Promise<string | null> {
    netemAvailability ??= NetLab.available().then((why) => {
      if (why) return why;
      if (!TC) return 'the tc command (iproute2) is not installed: `make deps` installs it';
      try {
        return probe((ns) => {
          const r = sh([IP!, 'netns', 'exec', ns, TC, 'qdisc', 'add', 'dev', 'lo', 'root', 'netem', 'delay', '1ms']);
          return r.code === 0 ? null : `tc netem does not work here (the kernel may lack sch_netem): ${r.stderr.trim()}`;
        });
      } catch (err) {
        return `cannot record a lab in ${RUN_DIR}: ${(err as Error).message}`;
      }
    });
    return netemAvailability;
  }

  /**
   * Removes what labs of processes that are gone left behind (a SIGKILL skips every other
   * cleanup). Returns the ids removed.
   */
  static async sweep(): Promise<string[]> {
    if (!IP) return [];
    const records = new Map<string, LabRecord | null>();
    try {
      for (const f of readdirSync(RUN_DIR)) {
        const m = /^([a-z0-9]{4})\.json$/.exec(f);
        if (m) records.set(m[1]!, readRecord(m[1]!));
      }
    } catch {
      // no RUN_DIR yet
    }
    const stale = (id: string): boolean => !recordAlive(records.has(id) ? records.get(id)! : readRecord(id));
    const found = new Map<string, { namespaces: string[]; links: string[] }>();
    const entry = (id: string) => found.get(id) ?? found.set(id, { namespaces: [], links: [] }).get(id)!;
    for (const ns of listNamespaces()) {
      const m = NS_RE.exec(ns);
      if (m && stale(m[1]!)) entry(m[1]!).namespaces.push(ns);
    }
    for (const link of listLinks()) {
      const m = LINK_RE.exec(link);
      if (m && stale(m[1]!)) entry(m[1]!).links.push(link);
    }
    for (const id of records.keys()) if (stale(id)) entry(id);
    for (const [id, { namespaces, links }] of found) removeLab(id, namespaces, links, records.get(id)?.k ?? null);
    // Subnet claims whose lab has no live record (claimed after the record, released before it).
    try {
      for (const f of readdirSync(RUN_DIR)) {
        const m = /^net-(\d+)$/.exec(f);
        if (!m) continue;
        const owner = readFileSync(join(RUN_DIR, f), 'utf8');
        if (!recordAlive(readRecord(owner))) rmSync(join(RUN_DIR, f), { force: true });
      }
    } catch {
      // no RUN_DIR yet
    }
    return [...found.keys()];
  }

  /**
   * Builds a lab with one namespace per name and registers its destruction with
   * `t.teardown` (and with the process's exit, in case the teardown never runs).
   */
  static async create(t: Teardown, names: string[]): Promise<NetLab> {
    if (names.length === 0 || names.length > NAMES_MAX) throw new Error(`NetLab: 1 to ${NAMES_MAX} names, not ${names.length}`);
    for (const n of names) if (!NAME.test(n)) throw new Error(`NetLab: bad name ${JSON.stringify(n)} (${NAME})`);
    if (new Set(names).size !== names.length) throw new Error(`NetLab: names repeat: ${names.join(', ')}`);
    const why = await NetLab.available();
    if (why) throw new Error(`NetLab: ${why}`);
    await NetLab.sweep();
    const lab = new NetLab(claimId(), names);
    live.add(lab);
    watchProcess();
    t.teardown(() => lab.destroy());
    try {
      lab.build();
    } catch (err) {
      lab.destroySync();
      throw err;
    }
    return lab;
  }

  private build(): void {
    this.k = claimSubnet(this.id);
    const br = this.bridge;
    // Bridged frames skip iptables, whatever a firewall's FORWARD policy says (br_netfilter).
    must([IP!, 'link', 'add', br, 'type', 'bridge', 'nf_call_iptables', '0', 'nf_call_ip6tables', '0', 'nf_call_arptables', '0']);
    must([IP!, 'addr', 'add', `${this.bridgeIp}/24`, 'dev', br]);
    must([IP!, 'link', 'set', br, 'up']);
    this.names.forEach((name, i) => {
      const ns = this.ns(name);
      const { inside, outside } = this.veth(name);
      must([IP!, 'netns', 'add', ns]);
      must([IP!, 'link', 'add', outside, 'type', 'veth', 'peer', 'name', inside, 'netns', ns]);
      must([IP!, 'link', 'set', outside, 'master', br, 'up']);
      must([IP!, '-n', ns, 'addr', 'add', `10.${this.k}.0.${i + 1}/24`, 'dev', inside]);
      must([IP!, '-n', ns, 'link', 'set', inside, 'up']);
      must([IP!, '-n', ns, 'link', 'set', 'lo', 'up']);
    });
  }

  private index(name: string): number {
    const i = this.names.indexOf(name);
    if (i < 0) throw new Error(`NetLab ${this.id}: no namespace ${JSON.stringify(name)} (have ${this.names.join(', ')})`);
    return i;
  }

  get bridge(): string {
    return `ct${this.id}br`;
  }

  /** The root namespace's address on the lab's bridge (the test process talks from it). */
  get bridgeIp(): string {
    return `10.${this.k}.0.254`;
  }

  /** The kernel's name of a namespace. */
  ns(name: string): string {
    this.index(name);
    return `${NS_PREFIX}${this.id}-${name}`;
  }

  /** The veth pair of a namespace: `inside` is in the namespace, `outside` on the bridge. */
  veth(name: string): { inside: string; outside: string } {
    const i = this.index(name);
    return { inside: `ct${this.id}${i}a`, outside: `ct${this.id}${i}b` };
  }

  /** A namespace's address. */
  ip(name: string): string {
    return `10.${this.k}.0.${this.index(name) + 1}`;
  }

  /** The argv that runs `argv` inside a namespace (Crowd's `wrap` is `exec(name, [])`). */
  exec(name: string, argv: string[]): string[] {
    return [IP ?? 'ip', 'netns', 'exec', this.ns(name), ...argv];
  }

  /** Cuts a namespace from everyone (its bridge port goes down; its own side stays configured). */
  async partition(name: string): Promise<void> {
    must([IP!, 'link', 'set', this.veth(name).outside, 'down']);
  }

  /** Undoes partition(). */
  async heal(name: string): Promise<void> {
    must([IP!, 'link', 'set', this.veth(name).outside, 'up']);
  }

  /**
   * Cuts two namespaces from each other only (a blackhole route to the other's address on
   * each side): both still reach everyone else.
   */
  async cut(x: string, y: string): Promise<void> {
    must([IP!, '-n', this.ns(x), 'route', 'replace', 'blackhole', `${this.ip(y)}/32`]);
    must([IP!, '-n', this.ns(y), 'route', 'replace', 'blackhole', `${this.ip(x)}/32`]);
  }

  /** Undoes cut(). */
  async uncut(x: string, y: string): Promise<void> {
    must([IP!, '-n', this.ns(x), 'route', 'del', 'blackhole', `${this.ip(y)}/32`]);
    must([IP!, '-n', this.ns(y), 'route', 'del', 'blackhole', `${this.ip(x)}/32`]);
  }

  /**
   * Shapes what a namespace sends with netem, e.g. 'loss 20% delay 30ms 10ms'; null removes
   * it. See NetLab.netemAvailable().
   */
  async netem(name: string, spec: string | null): Promise<void> {
    if (!TC) throw new Error('the tc command (iproute2) is not installed: `make deps` installs it');
    const dev = this.veth(name).inside;
    const base = [IP!, 'netns', 'exec', this.ns(name), TC, 'qdisc'];
    if (spec === null) {
      const p = quiet([...base, 'del', 'dev', dev, 'root']);
      if (p) throw new Error(p);
      return;
    }
    const argv = [...base, 'replace', 'dev', dev, 'root', 'netem', ...spec.trim().split(/\s+/)];
    const r = sh(argv);
    if (r.code === 0) return;
    const hint = /qdisc kind is unknown/.test(r.stderr) ? ' (this kernel has no sch_netem: see NetLab.netemAvailable())' : '';
    throw new Error(`${argv.join(' ')} failed (${r.code}): ${r.stderr.trim()}${hint}`);
  }

  /**
   * Deletes the namespaces (killing what still runs in them), the links and the bridge.
   * Idempotent; throws only when something could not be removed.
   */
  async destroy(): Promise<void> {
    this.destroySync();
  }

  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    live.delete(this);
    unwatchProcess();
    const links = [...this.names.map((n) => this.veth(n).outside), this.bridge];
    const problems = removeLab(this.id, this.names.map((n) => this.ns(n)), links, this.k || null);
    const left = [...listNamespaces().filter((n) => n.startsWith(`${NS_PREFIX}${this.id}-`)), ...listLinks().filter((l) => l.startsWith(`ct${this.id}`))];
    if (left.length > 0) problems.push(`still there: ${left.join(', ')}`);
    if (problems.length > 0) throw new Error(`NetLab ${this.id}: cleanup failed: ${problems.join('; ')}`);
  }
}

// ---- processes in a lab ----

/** Spawns argv and resolves once a stdout line matches `ready` (rejects if it exits or times out first). */
export function spawnReady(argv: string[], ready: RegExp, timeoutMs = 10_000): Promise<{ proc: ChildProcess; match: RegExpMatchArray }> {
  const proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const output: string[] = [];
  createInterface({ input: proc.stderr! }).on('line', (l) => output.length < 50 && output.push(l));
  return new Promise((res, rej) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      rej(new Error(`${argv.join(' ')} not ready within ${timeoutMs} ms:\n${output.join('\n')}`));
    }, timeoutMs);
    createInterface({ input: proc.stdout! }).on('line', (l) => {
      const m = ready.exec(l);
      if (m) {
        clearTimeout(timer);
        res({ proc, match: m });
      } else if (output.length < 50) output.push(l);
    });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      rej(new Error(`${argv.join(' ')} exited (${code ?? signal}) before it was ready:\n${output.join('\n')}`));
    });
  });
}

/** netns-upstream.js in a namespace: answers 200 to every POST and counts the Crowd-Ids it sees. */
export class LabUpstream {
  private constructor(
    readonly proc: ChildProcess,
    readonly host: string,
    readonly port: number,
  ) {}

  static async start(lab: NetLab, name: string, opts: { port?: number; delayMs?: number } = {}): Promise<LabUpstream> {
    const args = ['--host', lab.ip(name), '--port', String(opts.port ?? 0), ...(opts.delayMs ? ['--delay-ms', String(opts.delayMs)] : [])];
    const { proc, match } = await spawnReady(lab.exec(name, [process.execPath, join(__dirname, 'netns-upstream.js'), ...args]), /^listening (\d+)$/);
    return new LabUpstream(proc, lab.ip(name), Number(match[1]));
  }

  get url(): string {
    return `http://${this.host}:${this.port}`;
  }

  /** Deliveries per Crowd-Id (from the root namespace, through the bridge). */
  async ids(): Promise<Record<string, number>> {
    const r = await request(`${this.url}/_ids`, { method: 'GET', timeoutMs: 5000 });
    return JSON.parse(r.body);
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise((res) => this.proc.once('exit', res));
    this.proc.kill('SIGKILL');
    await exited;
  }
}

export interface ClientLine {
  i: number;
  /** The HTTP status, or null when no answer came (connection error or timeout). */
  status: number | null;
  /** The Crowd-Id of an acknowledgement. */
  id: string | null;
  ms: number;
  error?: string;
}

/** Runs netns-client.js in a namespace to completion and returns one line per request. */
export function runClient(lab: NetLab, name: string, opts: { url: string; count: number; concurrency?: number; timeoutMs?: number }): Promise<ClientLine[]> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const concurrency = opts.concurrency ?? 1;
  const args = ['--url', opts.url, '--count', String(opts.count), '--concurrency', String(concurrency), '--timeout-ms', String(timeoutMs)];
  const argv = lab.exec(name, [process.execPath, join(__dirname, 'netns-client.js'), ...args]);
  // Every request ends within its timeout: the whole run within (rounds + 1) timeouts plus start-up.
  const limitMs = (Math.ceil(opts.count / concurrency) + 1) * timeoutMs + 10_000;
  return new Promise((res, rej) => {
    const proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout!.on('data', (d) => (stdout += d));
    proc.stderr!.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => proc.kill('SIGKILL'), limitMs);
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0) return rej(new Error(`netns-client in ${name} exited ${code ?? signal}: ${stderr}`));
      res(stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as ClientLine));
    });
  });
}

/**
 * Power-cut harness: runs crowd with dist/powercut/shim.so preloaded (test/powercut/shim.c),
 * which keeps an undo journal of every write to files under the log directory. cut() kills
 * crowd with SIGKILL, then rolls every watched file back to what a power cut would have left
 * on the device: its bytes and size at its last completed fsync/fdatasync, plus the writes
 * made through O_DSYNC descriptors. The next start runs on that rolled-back log.
 */
import { closeSync, existsSync, fstatSync, openSync, readFileSync, renameSync, ftruncateSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, join } from 'node:path';
import { Crowd, ROOT, tempDir, type CrowdOptions, type ExitInfo } from './crowd';

export const SHIM = join(ROOT, 'dist', 'powercut', 'shim.so');

interface JournalRecord {
  type: 'P' | 'D' | 'S';
  seq: bigint;
  dev: bigint;
  ino: bigint;
  off: bigint;
  oldSize: bigint;
  path: string;
  bytes: Buffer;
}

export function readJournal(file: string): JournalRecord[] {
  if (!existsSync(file)) return [];
  const b = readFileSync(file);
  const out: JournalRecord[] = [];
  let p = 0;
  while (p + 61 <= b.length) {
    if (b.readUInt32LE(p) !== 0x54554350) throw new Error(`powercut journal ${file}: bad magic at ${p}`);
    const type = String.fromCharCode(b[p + 4]!) as JournalRecord['type'];
    const seq = b.readBigUInt64LE(p + 5);
    const dev = b.readBigUInt64LE(p + 13);
    const ino = b.readBigUInt64LE(p + 21);
    const off = b.readBigInt64LE(p + 29);
    const len = Number(b.readBigUInt64LE(p + 37));
    const oldSize = b.readBigInt64LE(p + 45);
    const plen = b.readUInt32LE(p + 53);
    const end = p + 57 + plen + len;
    if (end > b.length) break; // a record cut short by the kill: its write never happened
    const path = b.subarray(p + 57, p + 57 + plen).toString();
    out.push({ type, seq, dev, ino, off, oldSize, path, bytes: b.subarray(p + 57 + plen, end) });
    p = end;
  }
  return out;
}

export interface RollbackStats {
  files: number;
  preImages: number;
  durableWrites: number;
  syncs: number;
  /** Pre-images undone per file (by its base name). */
  byFile: Record<string, number>;
}

/**
 * Puts each journaled file back to its state at its last completed sync: undoes the
 * pre-images recorded since, newest first, then replays the synchronous (O_DSYNC) writes
 * made since, oldest first. A file whose path now names another inode is left alone.
 */
export function rollback(journal: string): RollbackStats {
  const recs = readJournal(journal);
  const byFile = new Map<string, JournalRecord[]>();
  for (const r of recs) {
    const k = `${r.dev}:${r.ino}`;
    let l = byFile.get(k);
    if (!l) byFile.set(k, (l = []));
    l.push(r);
  }
  const stats: RollbackStats = { files: 0, preImages: 0, durableWrites: 0, syncs: 0, byFile: {} };
  for (const list of byFile.values()) {
    let durableBelow = 0n;
    for (const r of list) if (r.type === 'S') { stats.syncs++; if (r.off > durableBelow) durableBelow = r.off; }
    const pending = list.filter((r) => r.type !== 'S' && r.seq >= durableBelow);
    if (pending.length === 0) continue;
    const path = pending[0]!.path;
    if (!existsSync(path)) continue;
    const fd = openSync(path, 'r+');
    try {
      const st = fstatSync(fd, { bigint: true });
      if (st.dev !== pending[0]!.dev || st.ino !== pending[0]!.ino) continue;
      stats.files++;
      for (let i = pending.length - 1; i >= 0; i--) {
        const r = pending[i]!;
        if (r.type !== 'P') continue;
        if (r.bytes.length) writeSync(fd, r.bytes, 0, r.bytes.length, Number(r.off));
        ftruncateSync(fd, Number(r.oldSize));
        stats.preImages++;
        const name = basename(r.path);
        stats.byFile[name] = (stats.byFile[name] ?? 0) + 1;
      }
      for (const r of pending) {
        if (r.type !== 'D') continue;
        writeSync(fd, r.bytes, 0, r.bytes.length, Number(r.off));
        stats.durableWrites++;
      }
    } finally {
      closeSync(fd);
    }
  }
  return stats;
}

export interface PowerCutOptions extends CrowdOptions {
  /** The negative control: the shim acknowledges syncs without syncing anything. */
  fakeSync?: boolean;
  /** The second negative control: writes through O_DSYNC descriptors (LMDB's meta page) are durable only once a later sync of the file covers them. */
  dropDsync?: boolean;
  /** Each sync of a log file first sleeps this long (a slower device); `setSyncDelay` changes it while crowd runs. */
  syncDelayUs?: number;
}

/** A boot id as /proc/sys/kernel/random/boot_id prints it. */
function newBootId(): string {
  const h = randomBytes(16).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}\n`;
}

/** A Crowd whose log directory loses its page cache on cut(). */
export class PowerCutCrowd extends Crowd {
  readonly journal: string;
  /** Read by the shim at each sync: the delay set by `setSyncDelay`. */
  private readonly delayFile: string;
  private cuts = 0;
  /** The environment the next start runs with (a cut gives it a new boot id). */
  private readonly shimEnv: NodeJS.ProcessEnv;

  constructor(opts: PowerCutOptions = {}) {
    const dir = opts.dir ?? tempDir('crowd-powercut-');
    const journal = join(dir, 'powercut.journal');
    const delayFile = join(dir, 'powercut.sync-delay');
    const env: NodeJS.ProcessEnv = {
      ...opts.env,
      LD_PRELOAD: SHIM,
      POWERCUT_DIR: join(dir, 'data'),
      POWERCUT_JOURNAL: journal,
      POWERCUT_FAKE_SYNC: opts.fakeSync ? '1' : '0',
      POWERCUT_DROP_DSYNC: opts.dropDsync ? '1' : '0',
      POWERCUT_SYNC_DELAY_US: String(opts.syncDelayUs ?? 0),
      POWERCUT_SYNC_DELAY_FILE: delayFile,
      UV_USE_IO_URING: '0', // every write and sync through libc, where the shim sees it
      POWERCUT_BOOT_ID: newBootId(),
    };
    super({ ...opts, dir, env });
    this.shimEnv = env;
    this.journal = journal;
    this.delayFile = delayFile;
  }

  /**
   * From the next sync on, each sync of a log file sleeps `us` microseconds, in the running
   * process and the next starts; null goes back to the `syncDelayUs` it was built with.
   */
  setSyncDelay(us: number | null): void {
    if (us === null) rmSync(this.delayFile, { force: true });
    else writeFileSync(this.delayFile, String(Math.round(us)));
  }

  /**
   * The environment of another process on this node's machine (`crowd tail` beside the running
   * node): the boot id crowd sees now, nothing journaled. A reader with another boot id does not
   * trust the newest meta page while crowd runs (LMDB marks it flushed only in the half page it
   * reads after a reboot) and may read the transaction before it.
   */
  machineEnv(): NodeJS.ProcessEnv {
    return { LD_PRELOAD: SHIM, POWERCUT_BOOT_ID: this.shimEnv.POWERCUT_BOOT_ID };
  }

  /** SIGKILL, then the rollback; the journal is set aside, the next start begins a new one. */
  async cut(): Promise<{ exit: ExitInfo; stats: RollbackStats }> {
    const exit = await this.kill9();
    const stats = rollback(this.journal);
    if (existsSync(this.journal)) renameSync(this.journal, `${this.journal}.${++this.cuts}`);
    this.shimEnv.POWERCUT_BOOT_ID = newBootId(); // the power comes back: a new boot
    return { exit, stats };
  }
}

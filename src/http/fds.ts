/**
 * File descriptor limits and sockets of this process, from /proc (Linux): the limit crowd
 * warns about at start, and the ingest connections still open at shutdown.
 */
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';

/** The soft limit on open files (RLIMIT_NOFILE) of this process, or null where /proc cannot tell. */
export function openFilesLimit(): { soft: number; hard: number } | null {
  try {
    const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (!m) return null;
    const n = (v: string) => (v === 'unlimited' ? Infinity : Number(v));
    return { soft: n(m[1]!), hard: n(m[2]!) };
  } catch {
    return null;
  }
}

// TCP states of a connection this side still holds: established, or the peer closed first.
const HELD_STATES = new Set(['01', '08']);

/**
 * Connections accepted on local `port` that this process still holds open. Reads
 * /proc/net/tcp{,6} (the whole network namespace) and keeps the sockets whose descriptors
 * are this process's.
 */
export function connectionsOnPort(port: number): number {
  const hexPort = ':' + port.toString(16).toUpperCase().padStart(4, '0');
  const inodes = new Set<string>();
  for (const file of ['/proc/self/net/tcp', '/proc/self/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(file, 'latin1');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      const f = line.trim().split(/\s+/);
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      if (f.length < 10 || !f[1]!.endsWith(hexPort) || !HELD_STATES.has(f[3]!)) continue;
      inodes.add(f[9]!);
    }
  }
  if (inodes.size === 0) return 0;
  let n = 0;
  let fds: string[];
  try {
    fds = readdirSync('/proc/self/fd');
  } catch {
    return inodes.size;
  }
  for (const fd of fds) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    if (target.startsWith('socket:[') && inodes.has(target.slice(8, -1))) n++;
  }
  return n;
}

/**
 * Request ids: UUIDv7 (48-bit millisecond time, 74 random bits). Unique across nodes,
 * restarts and wiped data dirs because they come from the clock and a CSPRNG, never from
 * the offset; time-ordered so they sort roughly by arrival.
 */
import { randomFillSync } from 'node:crypto';

const POOL_IDS = 512;
const pool = Buffer.alloc(16 * POOL_IDS);
let poolIndex = POOL_IDS;
const HEX: string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

export function newId(nowMs: number = Date.now()): string {
  if (poolIndex === POOL_IDS) {
    randomFillSync(pool);
    poolIndex = 0;
  }
  const o = poolIndex++ * 16;
  const b = pool;
  // 48-bit big-endian timestamp in bytes 0..5
  const hi = Math.floor(nowMs / 0x1_0000_0000);
  const lo = nowMs >>> 0;
  b[o] = (hi >>> 8) & 0xff;
  b[o + 1] = hi & 0xff;
  b[o + 2] = (lo >>> 24) & 0xff;
  b[o + 3] = (lo >>> 16) & 0xff;
  b[o + 4] = (lo >>> 8) & 0xff;
  b[o + 5] = lo & 0xff;
  b[o + 6] = (b[o + 6]! & 0x0f) | 0x70; // version 7
  b[o + 8] = (b[o + 8]! & 0x3f) | 0x80; // RFC 9562 variant
  let s = '';
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) s += '-';
    s += HEX[b[o + i]!];
  }
  return s;
}

export const ID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

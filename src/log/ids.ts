/**
 * Request ids: UUIDv7 (48-bit millisecond time, 74 random bits). Unique across nodes,
 * restarts and wiped data dirs because they come from the clock and a CSPRNG, never from
 * the offset; time-ordered so they sort roughly by arrival.
 */
import { randomFillSync } from 'node:crypto';

const POOL_IDS = 512;
const pool = Buffer.alloc(16 * POOL_IDS);
let poolIndex = POOL_IDS;

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
  // Written as ASCII into a scratch buffer and read back once: a flat string (no rope of
  // 20 concatenations that the encoder would have to flatten again).
  let q = 0;
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) text[q++] = 0x2d; // '-'
    const byte = b[o + i]!;
    text[q++] = HEX_ASCII[byte >> 4]!;
    text[q++] = HEX_ASCII[byte & 15]!;
  }
  return text.toString('latin1', 0, 36);
}

const text = Buffer.alloc(36);
const HEX_ASCII = Buffer.from('0123456789abcdef', 'latin1');

export const ID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

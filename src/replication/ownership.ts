/**
 * Who delivers a log whose origin is down: among the nodes a node believes live (itself
 * included), the one with the highest rendezvous score for (origin, node). Every node
 * computes the same winner from the same view; views that differ (a partition) can pick two
 * winners, which gives duplicates (same Idempotency-Key), never a loss. When a node joins or
 * leaves the live set, only the origins it wins or won change hands.
 */
import { createHash } from 'node:crypto';

/** The score of `node` for `origin`: the first 8 bytes of SHA-256(origin NUL node). */
export function rendezvousScore(origin: string, node: string): bigint {
  return createHash('sha256').update(origin).update('\0').update(node).digest().readBigUInt64BE(0);
}

/** The node among `live` that delivers `origin`'s log (ties, which SHA-256 makes unlikely, go to the smaller node_id); null when none is live. */
export function taker(origin: string, live: Iterable<string>): string | null {
  let best: string | null = null;
  let bestScore = -1n;
  for (const node of live) {
    if (node === origin) continue;
    const s = rendezvousScore(origin, node);
    if (s > bestScore || (s === bestScore && best !== null && node < best)) {
      best = node;
      bestScore = s;
    }
  }
  return best;
}

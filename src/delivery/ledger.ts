/**
 * Who owns each offset of one target, so that no request is sent by two lines at once:
 *
 * - `window`: read by the main line and not passed yet (pending, in flight, waiting for a
 *   retry inside the window, or dead and not written yet);
 * - `retry`: held by the retry line (a retry record exists or is being written);
 * - `dead`: a dead letter the main line has not reached (after a restart or a rewind): it
 *   must not be sent from the log;
 * - `done`: finished by the retry line (delivered or gone) ahead of the main line, which
 *   must not send it again when it gets there.
 *
 * An offset without an entry is either finished behind the main line (delivered, dead,
 * purged, not for this target) or still only in the log ahead of it. The main line drops
 * a `dead` or `done` entry when it passes the offset. Every move
 * names the owner it takes the offset from, and a wrong one is a bug: it throws.
 */
export type Owner = 'window' | 'retry' | 'dead' | 'done';

export class InvariantError extends Error {
  constructor(message: string) {
    super(`delivery invariant broken: ${message}`);
    this.name = 'InvariantError';
  }
}

export function invariant(cond: boolean, message: () => string): asserts cond {
  if (!cond) throw new InvariantError(message());
}

export class Ledger {
  private readonly owners = new Map<number, Owner>();

  constructor(private readonly target: string) {}

  owner(offset: number): Owner | undefined {
    return this.owners.get(offset);
  }

  get size(): number {
    return this.owners.size;
  }

  /** Moves `offset` from `from` to `to` (undefined: no owner, i.e. log or done). */
  move(offset: number, from: Owner | undefined | readonly (Owner | undefined)[], to: Owner | undefined): void {
    const now = this.owners.get(offset);
    const ok = Array.isArray(from) ? from.includes(now) : now === from;
    invariant(ok, () => `target ${this.target}: offset ${offset} is owned by ${now ?? 'nobody'}, expected ${String(from)} (moving to ${to ?? 'nobody'})`);
    if (to === undefined) this.owners.delete(offset);
    else this.owners.set(offset, to);
  }

  /** Offsets in [from, through] the main line does not send (retry, dead or done). */
  heldOutsideIn(from: number, through: number): number {
    let n = 0;
    for (const [o, w] of this.owners) if (w !== 'window' && o >= from && o <= through) n++;
    return n;
  }

  /** Drops the `dead` and `done` entries below `offset` (the main line will never reach them). */
  forgetBelow(offset: number): void {
    for (const [o, w] of this.owners) if ((w === 'dead' || w === 'done') && o < offset) this.owners.delete(o);
  }
}

/**
 * Deno KV's limits on one atomic operation, and the room left in an atomic being filled: the one
 * sizing rule of every module that packs many writes into an atomic (the account actors, the
 * recorder, the rollup compactor).
 */

/** What one part adds to an atomic: upper bounds of its checks, mutations and bytes. */
export interface Footprint {
  checks: number;
  mutations: number;
  /** Σ encoded key sizes (`keyBytes`) of every check and mutation. */
  keyBytes: number;
  /** Σ key and value sizes. */
  bytes: number;
}

/** Deno KV's limits per atomic: checks, mutations, total key bytes, total bytes. */
export const ATOMIC_LIMITS: Readonly<Footprint> = {
  checks: 100,
  mutations: 1000,
  keyBytes: 81_920,
  bytes: 800 * 1024,
};

/**
 * What is left of one atomic's limits. Footprints are upper bounds, so the limits themselves are
 * the bounds; `margin` keeps room for what the caller adds afterwards (a queue message).
 *
 * @example
 * ```ts
 * const room = new AtomicRoom({ mutations: 1 });
 * if (room.fits({ checks: 1, mutations: 2, keyBytes: 80, bytes: 600 })) room.take(...);
 * ```
 */
export class AtomicRoom implements Footprint {
  checks: number;
  mutations: number;
  keyBytes: number;
  bytes: number;

  constructor(margin: Partial<Footprint> = {}, limits: Footprint = ATOMIC_LIMITS) {
    this.checks = limits.checks - (margin.checks ?? 0);
    this.mutations = limits.mutations - (margin.mutations ?? 0);
    this.keyBytes = limits.keyBytes - (margin.keyBytes ?? 0);
    this.bytes = limits.bytes - (margin.bytes ?? 0);
  }

  /** Whether `f` fits in what is left. */
  fits(f: Footprint): boolean {
    return f.checks <= this.checks && f.mutations <= this.mutations &&
      f.keyBytes <= this.keyBytes && f.bytes <= this.bytes;
  }

  /** Takes `f` out of what is left (whether or not it fits: a lone part is tried regardless). */
  take(f: Footprint): void {
    this.checks -= f.checks;
    this.mutations -= f.mutations;
    this.keyBytes -= f.keyBytes;
    this.bytes -= f.bytes;
  }
}

/** A footprint of nothing, to add parts to. */
export const emptyFootprint = (): Footprint => ({ checks: 0, mutations: 0, keyBytes: 0, bytes: 0 });

/** `a` + `b`, into `a`. */
export function addFootprint(a: Footprint, b: Footprint): Footprint {
  a.checks += b.checks;
  a.mutations += b.mutations;
  a.keyBytes += b.keyBytes;
  a.bytes += b.bytes;
  return a;
}

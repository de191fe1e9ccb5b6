/**
 * This process's side of its balance leases: per account, the credit its lease holds (as last
 * committed), the holds granted from it in memory, and the spend rate a lease is sized by. A
 * reserve that fits is granted here at once, with no KV round trip (`tryReserve`); everything that
 * touches KV goes through the account's actor, whose decisions update this state before and after
 * they commit, so that a hold is never granted on credit a commit in flight gives away.
 */
import { checkKey } from "../auth/keys.ts";
import type { ApiKey, Lease, LimitReset } from "./types.ts";
import { MAX_LEASE_KEYS, sliceFree } from "./lease.ts";

/** A hold granted from this process's lease: in memory only, settled onto the lease. */
export interface LocalHold {
  keyId: string;
  amount: bigint;
}

/** What a decision needs of this process's lease on one account. */
export interface LocalLeaseView {
  id: string;
  holds: ReadonlyMap<string, LocalHold>;
  /** Σ holds, and per key. */
  held: bigint;
  keyHeld: ReadonlyMap<string, bigint>;
  /** The keys it serves (or is about to). */
  keys: ReadonlyMap<string, unknown>;
}

export interface LeaseOptions {
  /** How long a lease lives unrenewed: a crashed process's lease returns after this. */
  ttlMs: number;
  /** A lease without holds or reserves for this long is returned. */
  idleMs: number;
  /** How often leases are looked after: idle ones returned, recalls noticed, expiries renewed. */
  tickMs: number;
  /** How long after a recall no process takes a lease on the account. */
  recallMs: number;
  /** How long a reserve refused while others' leases hold credit waits for them to return it. */
  recallWaitMs: number;
}

/** How a decision sizes this process's lease on one account. */
export interface LeasePolicy {
  /** Credit a lease is filled to: seconds of this process's reserves, × the leases open. */
  want: bigint;
  /** Below this much a lease is not worth it (a few of the account's recent largest holds). */
  least: bigint;
}

/** How a committing decision changes the lease (see `decide`). */
export interface LeaseEffect {
  id: string;
  /** The lease as written; null when returned or found gone. */
  value: Lease | null;
  /** Holds granted from it by the decision. */
  add: [holdId: string, hold: LocalHold][];
  /** Holds settled or released by it. */
  remove: string[];
  /** The lease was reclaimed by another process: its holds are orphans now. */
  lost: boolean;
}

// Sizing: the lease is filled to LEASE_SPAN_S of this process's reserve rate (an EWMA over
// RATE_TAU_S) times the account's open leases, so that its shared commits per second stay flat as
// processes are added, and topped up below a quarter of that (lib/billing/lease_ops.ts); it is at
// least LEAST_HOLDS of its recent largest holds (remembered over MAX_TAU_S).
const LEASE_SPAN_S = 4;
const RATE_TAU_S = 1;
const MAX_TAU_S = 30;
const LEAST_HOLDS = 4;
const RATE_IDLE_MS = 60_000;

interface Pool {
  /** Credit as last committed (granted − spent). */
  free: bigint;
  /** While a decision that lowers it commits: the lower figure. */
  pending: bigint | null;
}

const room = (p: Pool) => (p.pending !== null && p.pending < p.free ? p.pending : p.free);

class LocalLease implements LocalLeaseView {
  pool: Pool = { free: 0n, pending: null };
  held = 0n;
  holds = new Map<string, LocalHold>();
  keyHeld = new Map<string, bigint>();
  /** Keys in the lease (or being added), with the limit their slice was taken under. */
  keys = new Map<string, { limit: bigint | null; reset: LimitReset | null; slice: Pool | null }>();
  expiresMs = 0;
  lastUse = 0;
  /** When a commit last wrote it (and its holds). */
  writtenMs = 0;
  constructor(readonly id: string) {}

  add(holdId: string, h: LocalHold) {
    this.holds.set(holdId, h);
    this.held += h.amount;
    this.keyHeld.set(h.keyId, (this.keyHeld.get(h.keyId) ?? 0n) + h.amount);
  }

  remove(holdId: string): LocalHold | undefined {
    const h = this.holds.get(holdId);
    if (!h) return;
    this.holds.delete(holdId);
    this.held -= h.amount;
    const k = this.keyHeld.get(h.keyId)! - h.amount;
    if (k === 0n) this.keyHeld.delete(h.keyId);
    else this.keyHeld.set(h.keyId, k);
    return h;
  }

  /** Sets the committed figures from the lease as written (or lowers `pending` to them). */
  apply(v: Lease, pendingOnly: boolean) {
    const set = (p: Pool, free: bigint) => {
      if (!pendingOnly) {
        p.free = free;
        p.pending = null;
      } else if (free < room(p)) p.pending = free;
    };
    set(this.pool, v.granted - v.spent);
    for (const [id, k] of Object.entries(v.keys)) {
      let local = this.keys.get(id);
      if (!local) this.keys.set(id, local = { limit: k.limit, reset: k.reset, slice: null });
      if (!pendingOnly) {
        local.limit = k.limit;
        local.reset = k.reset;
      }
      if (k.slice === null) local.slice = null;
      else set(local.slice ??= { free: 0n, pending: null }, sliceFree(k));
    }
    if (!pendingOnly) this.expiresMs = v.expires_ms;
  }
}

interface Rate {
  /** Reserved nano-USD per second, decayed. */
  rate: number;
  /** The recent largest hold, decayed. */
  max: number;
  at: number;
}

/** This process's leases, one per account at most, and its holds on leases lost to a reclaim. */
export class LocalLeases {
  #leases = new Map<string, LocalLease>();
  #rates = new Map<string, Rate>();
  /** Holds of leases another process reclaimed: settled on the shared balance, capped. */
  readonly orphans = new Map<string, LocalHold & { accountId: string }>();

  /** Accounts this process holds a lease on. */
  accounts(): IterableIterator<string> {
    return this.#leases.keys();
  }

  view(accountId: string): LocalLeaseView | null {
    return this.#leases.get(accountId) ?? null;
  }

  /** The lease's expiry as last committed, whether it has holds, and when it was last used. */
  status(accountId: string) {
    const l = this.#leases.get(accountId);
    return l &&
      { expiresMs: l.expiresMs, holds: l.holds.size, lastUse: l.lastUse, writtenMs: l.writtenMs };
  }

  /** Counts a reserve of `amount` in the account's rate (whichever path grants it). */
  note(accountId: string, amount: bigint, now: number) {
    const a = Number(amount);
    const r = this.#rates.get(accountId);
    if (!r) {
      this.#rates.set(accountId, { rate: a / RATE_TAU_S, max: a, at: now });
      return;
    }
    const dt = Math.max(0, now - r.at) / 1000;
    r.rate = r.rate * Math.exp(-dt / RATE_TAU_S) + a / RATE_TAU_S;
    r.max = Math.max(r.max * Math.exp(-dt / MAX_TAU_S), a);
    r.at = now;
  }

  /** How to size the account's lease, given how many leases it has open. */
  policy(accountId: string, leases: number, now: number): LeasePolicy {
    const r = this.#rates.get(accountId);
    if (!r) return { want: 0n, least: 0n };
    const decay = Math.exp(-Math.max(0, now - r.at) / 1000 / RATE_TAU_S);
    const least = BigInt(Math.ceil(LEAST_HOLDS * r.max));
    const want = BigInt(Math.ceil(r.rate * decay * LEASE_SPAN_S * Math.max(1, leases)));
    return { want: want > least ? want : least, least };
  }

  /**
   * Grants a hold of `amount` from the account's lease if it covers it (and the key's slice, for
   * a key with a credit limit): no KV involved. False sends the reserve to the actor. A key with a
   * rate limit, or not live by the caller's (briefly cached) record, never takes this path.
   */
  tryReserve(
    accountId: string,
    key: ApiKey,
    holdId: string,
    amount: bigint,
    now: number,
    minLifeMs: number,
  ): boolean {
    const l = this.#leases.get(accountId);
    // A lease about to lapse is renewed first (another process could reclaim it).
    if (!l || l.expiresMs - now < minLifeMs) return false;
    if (key.rate_limit_rpm !== null || !checkKey(key, now).ok) return false;
    if (room(l.pool) - l.held < amount) return false;
    const k = l.keys.get(key.id);
    if (key.credit_limit !== null) {
      if (!k?.slice || k.limit !== key.credit_limit || k.reset !== key.limit_reset) return false;
      if (room(k.slice) - (l.keyHeld.get(key.id) ?? 0n) < amount) return false;
    } else if (!k) {
      // Counted at once, so that concurrent reserves of new keys keep the lease within its bound.
      if (l.keys.size >= MAX_LEASE_KEYS) return false;
      l.keys.set(key.id, { limit: null, reset: null, slice: null });
    }
    l.add(holdId, { keyId: key.id, amount });
    l.lastUse = now;
    return true;
  }

  /**
   * The room left in the account's lease after its holds, or null without a lease: the actor tops
   * up a lease running low before a reserve finds it short.
   */
  roomLeft(accountId: string): bigint | null {
    const l = this.#leases.get(accountId);
    return l ? room(l.pool) - l.held : null;
  }

  /** Drops a hold whose request ended without settling it (nothing is charged). */
  abandon(accountId: string, holdId: string): boolean {
    return this.#leases.get(accountId)?.remove(holdId) !== undefined ||
      this.orphans.delete(holdId);
  }

  /** Before a decision commits: its holds are counted, and credit it gives away is not lent. */
  before(accountId: string, e: LeaseEffect, now: number) {
    let l = this.#leases.get(accountId);
    if (e.lost || !l && !e.value) return;
    if (!l || l.id !== e.id) this.#leases.set(accountId, l = new LocalLease(e.id));
    for (const [id, h] of e.add) l.add(id, h);
    if (e.add.length) l.lastUse = now;
    if (e.value) l.apply(e.value, true);
    else l.pool.pending = 0n;
  }

  /** After the decision: committed (`ok`) its figures hold, else what `before` did is undone. */
  after(accountId: string, e: LeaseEffect, ok: boolean, now: number) {
    const l = this.#leases.get(accountId);
    if (!ok) {
      if (!l || l.id !== e.id) return;
      for (const [id] of e.add) l.remove(id);
      l.pool.pending = null;
      for (const k of l.keys.values()) if (k.slice) k.slice.pending = null;
      if (l.pool.free === 0n && l.holds.size === 0 && !l.expiresMs) this.#leases.delete(accountId);
      return;
    }
    if (e.lost) {
      // Reclaimed elsewhere: its holds' requests are still alive here, settled shared.
      if (l && l.id === e.id) {
        for (const [id, h] of l.holds) this.orphans.set(id, { ...h, accountId });
        this.#leases.delete(accountId);
      }
      return;
    }
    if (!l || l.id !== e.id) return;
    for (const id of e.remove) l.remove(id);
    if (e.value) {
      l.apply(e.value, false);
      l.writtenMs = now;
    } else if (l.holds.size === 0) this.#leases.delete(accountId);
  }

  /** Forgets rates of accounts idle for a minute: memory stays bounded. */
  evictRates(now: number) {
    for (const [id, r] of this.#rates) {
      if (now - r.at > RATE_IDLE_MS && !this.#leases.has(id)) this.#rates.delete(id);
    }
  }
}

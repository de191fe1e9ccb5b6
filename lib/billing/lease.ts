/**
 * Balance leases (escrow), the records' arithmetic, pure: folding a lease's debits into the
 * balance and the keys' spends, and what customers see of an account with leases open (the same
 * figures as without: a lease is an internal detail).
 */
import { currentSpend } from "./periods.ts";
import {
  type ApiKey,
  type BalanceState,
  EMPTY_KEY_SPEND,
  type KeySpend,
  type Lease,
  type LeaseKey,
  type LimitReset,
} from "./types.ts";

/** The most keys one lease serves; further keys of the account take the shared path. */
export const MAX_LEASE_KEYS = 16;

/** The later of two ISO times (either may be null). */
const later = (a: string | null, b: string | null) => (a === null || (b !== null && b > a) ? b : a);

/** `s` with `cost` added to every counter of the periods containing `now` (rolled there first). */
export function addSpend(
  s: KeySpend,
  reset: LimitReset | null,
  cost: bigint,
  now: number,
): KeySpend {
  const r = currentSpend(s, reset, now);
  return {
    ...r,
    spend: r.spend + cost,
    period_spend: r.period_spend + cost,
    usage_today: r.usage_today + cost,
    usage_month: r.usage_month + cost,
    last_used_at: later(r.last_used_at, new Date(now).toISOString()),
  };
}

/**
 * A key's spend record with a lease's delta merged in, both as of `now`: the delta's counters count
 * only where they belong to the current period, day and month (as if settled on the record).
 */
export function mergeDelta(
  s: KeySpend,
  delta: KeySpend,
  reset: LimitReset | null,
  now: number,
): KeySpend {
  const r = currentSpend(s, reset, now);
  return {
    ...r,
    spend: r.spend + delta.spend,
    period_spend: r.period_spend + (delta.period === r.period ? delta.period_spend : 0n),
    usage_today: r.usage_today + (delta.day === r.day ? delta.usage_today : 0n),
    usage_month: r.usage_month + (delta.month === r.month ? delta.usage_month : 0n),
    last_used_at: later(r.last_used_at, delta.last_used_at),
  };
}

/** What is left of a key's credit limit for the shared path: less its holds and its slices. */
export const keyRemaining = (key: ApiKey, s: KeySpend) =>
  key.credit_limit! - (key.limit_reset ? s.period_spend : s.spend) - s.reserved - (s.leased ?? 0n);

/** A copy of a lease that can be changed without changing it (its keys copied too). */
export const cloneLease = (l: Lease): Lease => ({
  ...l,
  keys: Object.fromEntries(Object.entries(l.keys).map(([id, k]) => [id, { ...k }])),
});

/** A lease's part for a key not in it yet. */
export const newLeaseKey = (limit: bigint | null, reset: LimitReset | null): LeaseKey => ({
  delta: EMPTY_KEY_SPEND,
  slice: null,
  limit,
  reset,
  held: 0n,
});

/** What a slice of a key's limit still covers: its credit less what was settled on it. */
export const sliceFree = (k: LeaseKey) => (k.slice ?? 0n) - k.delta.spend;

/** The account's figures as customers see them: every lease's debits and holds counted in. */
export function balanceView(b: BalanceState, leases: readonly Lease[]): BalanceState {
  let spent = 0n, held = 0n;
  for (const l of leases) {
    spent += l.spent;
    held += l.held;
  }
  return {
    balance: b.balance - spent,
    reserved: b.reserved + held,
    total_purchased: b.total_purchased,
    total_used: b.total_used + spent,
  };
}

/** A key's spend as customers see it, as of `now`: its leases' deltas and holds counted in. */
export function keySpendView(
  s: KeySpend,
  keyId: string,
  reset: LimitReset | null,
  leases: readonly Lease[],
  now: number,
): KeySpend {
  let v = currentSpend(s, reset, now);
  for (const l of leases) {
    const k = l.keys[keyId];
    if (!k) continue;
    v = mergeDelta(v, k.delta, reset, now);
    v = { ...v, reserved: v.reserved + k.held };
  }
  const { leased: _leased, ...shown } = v;
  return shown;
}

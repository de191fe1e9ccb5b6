/**
 * The lease path of a batch (see decide.ts and batch.ts): holds granted from this process's lease,
 * settled onto it, the lease taken, topped up, folded into the balance, shrunk, returned, written;
 * other processes' expired leases reclaimed.
 */
import { leaseKey } from "../kv/schema.ts";
import type { ApiKey, Lease } from "./types.ts";
import type { Op, ReserveOp } from "./ops.ts";
import {
  addSpend,
  cloneLease,
  keyRemaining,
  MAX_LEASE_KEYS,
  mergeDelta,
  newLeaseKey,
  sliceFree,
} from "./lease.ts";
import type { LocalHold } from "./local_lease.ts";
import type { Batch } from "./batch.ts";

/** A lease takes at most this fraction (1/n) of the available credit, and of a key's remaining. */
const LEASE_FRACTION = 4n;

/** Folds the lease's debits into the balance and its keys' deltas into their spends. */
export function fold(b: Batch, l: Lease) {
  // Written with the balance, or a lease would keep debits the balance has already taken.
  if (l === b.lease) b.leaseDirty = true;
  if (l.spent !== 0n) {
    b.bal = {
      ...b.bal,
      balance: b.bal.balance - l.spent,
      total_used: b.bal.total_used + l.spent,
      leased: (b.bal.leased ?? 0n) - l.spent,
    };
    l.granted -= l.spent;
    l.spent = 0n;
    b.touchBalance();
  }
  for (const [id, k] of Object.entries(l.keys)) {
    const s = b.spends.get(id);
    // A key not read in this batch keeps its delta for a later fold.
    if (!s || (k.delta.spend === 0n && k.delta.last_used_at === null)) continue;
    const reset = b.key(id)?.limit_reset ?? null;
    const folded = k.slice === null ? 0n : k.delta.spend;
    b.spends.set(id, {
      ...mergeDelta(s, k.delta, reset, b.now),
      leased: (s.leased ?? 0n) - folded,
    });
    b.touched.add(id);
    l.keys[id] = {
      ...k,
      slice: k.slice === null ? null : k.slice - folded,
      delta: { ...k.delta, spend: 0n, period_spend: 0n, usage_today: 0n, usage_month: 0n },
    };
    l.keys[id].delta.last_used_at = null;
    b.shared = true;
  }
}

/** Gives back what the lease's holds do not need, then deletes it if it holds nothing. */
export function shrink(b: Batch) {
  const l = b.lease;
  if (!l) return;
  b.shrunk = true;
  fold(b, l);
  const free = l.granted - b.held;
  if (free > 0n) {
    b.d.counts.shrinks++;
    l.granted -= free;
    b.bal = { ...b.bal, leased: (b.bal.leased ?? 0n) - free };
    b.touchBalance();
  }
  for (const [id, k] of Object.entries(l.keys)) {
    if (k.slice === null) continue;
    const s = b.spends.get(id);
    const back = k.slice - (b.keyHeld.get(id) ?? 0n);
    if (!s || back <= 0n) continue;
    b.spends.set(id, { ...s, leased: (s.leased ?? 0n) - back });
    b.touched.add(id);
    l.keys[id] = { ...k, slice: k.slice - back };
  }
  b.leaseDirty = true;
}

/** Takes a lease (or tops this one up) to the wanted size, within the available fraction. */
export function topUp(b: Batch, need: bigint): boolean {
  const p = b.ctx.policy;
  if (!p || b.lost || b.recalled()) return false;
  const cap = b.available() / LEASE_FRACTION;
  // Near exhaustion: the last credit is reserved exactly, one shared hold at a time.
  if (cap < p.least || cap < need) return false;
  let x = p.want + need - b.ownFree();
  if (x <= 0n) return true;
  if (x > cap) x = cap;
  // A background top-up smaller than a quarter of the wanted size is not worth a commit.
  if (need === 0n && x * 4n < p.want) return true;
  if (!b.lease) {
    b.lease = {
      id: b.ctx.newLeaseId,
      owner: b.ctx.owner,
      granted: 0n,
      spent: 0n,
      held: 0n,
      expires_ms: 0,
      keys: {},
    };
    b.leaseNew = true;
    b.d.counts.takes++;
    b.bal = { ...b.bal, leases: (b.bal.leases ?? 0) + 1 };
  }
  fold(b, b.lease);
  b.toppedUp = true;
  if (!b.leaseNew) b.d.counts.topups++;
  b.lease.granted += x;
  b.bal = { ...b.bal, leased: (b.bal.leased ?? 0n) + x };
  b.touchBalance();
  b.leaseDirty = true;
  return true;
}

/** Tops up the key's slice of its credit limit to the wanted size, within its fraction. */
export function topUpSlice(b: Batch, key: ApiKey, need: bigint): boolean {
  const p = b.ctx.policy!;
  const l = b.lease!;
  const s = b.spends.get(key.id)!;
  const cap = keyRemaining(key, s) / LEASE_FRACTION;
  if (cap < p.least || cap < need) return false;
  const k = l.keys[key.id];
  let x = p.want + need - (sliceFree(k) - (b.keyHeld.get(key.id) ?? 0n));
  if (x <= 0n) return true;
  if (x > cap) x = cap;
  l.keys[key.id] = { ...k, slice: (k.slice ?? 0n) + x };
  b.spends.set(key.id, { ...s, leased: (s.leased ?? 0n) + x });
  b.touched.add(key.id);
  b.touchBalance();
  b.leaseDirty = true;
  return true;
}

/** Grants the hold from this process's lease (topping it up if need be), or false. */
export function leaseReserve(b: Batch, key: ApiKey, op: ReserveOp): boolean {
  if (!b.ctx.policy || b.lost || key.rate_limit_rpm !== null || b.recalled()) {
    return false;
  }
  const old = b.lease?.keys[key.id];
  if (old && (old.limit !== key.credit_limit || old.reset !== key.limit_reset)) {
    // The key's limit changed: its slice is given back, and taken anew under the new limit.
    shrink(b);
    const l = b.lease!;
    l.keys[key.id] = { ...l.keys[key.id], limit: key.credit_limit, reset: key.limit_reset };
  }
  if (b.ownFree() < op.amount && !topUp(b, op.amount)) return false;
  const l = b.lease;
  if (!l || b.ownFree() < op.amount) return false;
  if (!l.keys[key.id]) {
    if (Object.keys(l.keys).length >= MAX_LEASE_KEYS) return false;
    l.keys[key.id] = newLeaseKey(key.credit_limit, key.limit_reset);
  }
  if (key.credit_limit !== null) {
    if (l.keys[key.id].slice === null) l.keys[key.id] = { ...l.keys[key.id], slice: 0n };
    const room = () => sliceFree(l.keys[key.id]) - (b.keyHeld.get(key.id) ?? 0n);
    if (room() < op.amount && (!topUpSlice(b, key, op.amount) || room() < op.amount)) {
      b.leaseDirty = true;
      return false;
    }
  }
  const h: LocalHold = { keyId: key.id, amount: op.amount };
  b.add.push([op.holdId, h]);
  b.held += h.amount;
  b.keyHeld.set(key.id, (b.keyHeld.get(key.id) ?? 0n) + h.amount);
  b.leaseDirty = true;
  return true;
}

export function reclaim(b: Batch, op: Extract<Op, { kind: "reclaim" }>): boolean {
  const e = b.state.others.get(op.leaseId)!;
  const l = e.value;
  b.shared = true;
  if (!l || l.owner === b.ctx.owner || l.expires_ms > b.now) return false;
  // Every key it serves must be read, or a delta would be lost with it: listed again next sweep.
  if (Object.keys(l.keys).some((id) => !b.spends.has(id))) return false;
  const w = cloneLease(l);
  fold(b, w);
  b.bal = {
    ...b.bal,
    leased: (b.bal.leased ?? 0n) - w.granted,
    leases: Math.max(0, (b.bal.leases ?? 1) - 1),
  };
  for (const [id, k] of Object.entries(w.keys)) {
    if (k.slice === null || k.slice === 0n) continue;
    const s = b.spends.get(id)!;
    b.spends.set(id, { ...s, leased: (s.leased ?? 0n) - k.slice });
    b.touched.add(id);
  }
  b.touchBalance();
  b.reclaimed.push(e);
  b.d.counts.reclaims++;
  return true;
}

export function leaseAction(b: Batch, action: "topup" | "sync" | "return") {
  if (!b.lease && action !== "topup") return;
  if (action === "topup") topUp(b, 0n);
  else if (action === "return") shrink(b);
  else b.leaseDirty = true;
}

/** Settles a hold granted from this process's lease. */
export function settleOnLease(
  b: Batch,
  op: Extract<Op, { kind: "settle" }>,
  local: LocalHold,
) {
  b.dropLocal(op.holdId, local);
  if (op.cost > local.amount) {
    // More than its hold (an upstream reporting past the worst case): the lease gives back all
    // its holds do not need, and the cost is charged on the shared balance, as a shared hold's
    // would be, capped by what is available.
    shrink(b);
    return b.chargeShared(op.keyId, op.cost, op.event);
  }
  // Within its hold: the lease never spends past its credit.
  const l = b.lease!;
  const charged = op.cost;
  l.spent += charged;
  const k = l.keys[op.keyId] ?? newLeaseKey(null, null);
  l.keys[op.keyId] = {
    ...k,
    delta: addSpend(k.delta, b.key(op.keyId)?.limit_reset ?? null, charged, b.now),
  };
  // The balance as this process knows it, less its own debits since: exact with one process.
  const after = b.bal.balance - l.spent;
  b.d.events.push({ ...op.event, cost: charged, balance_after: after });
  return { balanceAfter: after, charged };
}

/**
 * The lease's part of closing a batch: shrunk if recalled, topped up if low, folded whenever the
 * balance is written, then written with its expiry pushed out and its holds' figures, or deleted
 * once it holds nothing. Returns the lease as written (null when deleted).
 */
export function finishLease(b: Batch): Lease | null {
  const { d, ctx } = b;
  const l = b.lease;
  if (!l) return null;
  if (b.recalled() && (b.ownFree() > 0n || !b.held)) shrink(b);
  else if (
    b.leaseDirty && !b.toppedUp && !b.shrunk && ctx.policy && b.ownFree() * 4n < ctx.policy.want
  ) {
    // Running low (under a quarter of its wanted size): topped up in the commit that writes the
    // lease anyway, before a reserve finds it short.
    topUp(b, 0n);
  }
  // Whenever the balance is written anyway, this process's lease is folded into it.
  if (b.balDirty) fold(b, l);
  if (!b.leaseDirty) return l;
  const acct = b.state.accountId;
  const drop = l.granted === 0n && l.spent === 0n && b.held === 0n &&
    Object.values(l.keys).every((k) => !k.slice && k.delta.spend === 0n);
  if (!drop) {
    l.expires_ms = b.now + ctx.leaseTtlMs;
    l.held = b.held > 0n ? b.held : 0n;
    for (const [id, k] of Object.entries(l.keys)) {
      const held = b.keyHeld.get(id) ?? 0n;
      if (k.held !== held) l.keys[id] = { ...k, held: held > 0n ? held : 0n };
    }
    d.sets.push({ key: leaseKey(acct, l.id), value: l, state: true });
    return l;
  }
  if (!b.leaseNew) {
    d.counts.returns++;
    b.bal = { ...b.bal, leases: Math.max(0, (b.bal.leases ?? 1) - 1) };
    b.touchBalance();
    d.deletes.push(leaseKey(acct, l.id));
  } else if (b.balDirty) b.bal = { ...b.bal, leases: (b.bal.leases ?? 1) - 1 };
  return null;
}

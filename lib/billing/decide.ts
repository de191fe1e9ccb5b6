/**
 * The account actor's decisions, pure: given an account's entries (read by key, as this process
 * last committed or read them), this process's lease on it, and a batch of operations, each
 * operation's result, the checks and writes of the atomic that commits the batch, the usage events
 * it records, and what changes in this process's lease. No KV, no clock, no process state: the
 * scheduler (actor.ts) reads, commits, and remembers what was committed.
 *
 * A batch that only settles or releases holds granted from this process's lease writes nothing
 * but the lease (and the events): two processes serving one account never write the same key in
 * the common case. Anything else that moves money (a shared hold, a credit, a lease topped up,
 * folded, returned or reclaimed) writes the balance record, checked.
 */
import { apiKeyKey, balanceKey, holdKey, keySpendKey, leaseKey, ledgerKey } from "../kv/schema.ts";
import { keyString } from "../kv/util.ts";
import { newId } from "../ids.ts";
import { checkKey } from "../auth/keys.ts";
import { countRequest, currentSpend, rateLimitWait, rateWindow } from "./periods.ts";
import {
  type ApiKey,
  type BalanceState,
  EMPTY_BALANCE,
  EMPTY_KEY_SPEND,
  type Hold,
  type KeySpend,
  type Lease,
  type LedgerEntry,
  type UsageEvent,
} from "./types.ts";
import type { Op, ReserveDecision, ReserveOp, ReserveResult } from "./ops.ts";
import { addSpend, MAX_LEASE_KEYS, mergeDelta, newLeaseKey, sliceFree } from "./lease.ts";
import type { LeaseEffect, LeasePolicy, LocalHold, LocalLeaseView } from "./local_lease.ts";

type Entry<T> = Deno.KvEntryMaybe<T>;

/** A lease takes at most this fraction (1/n) of the available credit, and of a key's remaining. */
const LEASE_FRACTION = 4n;

/** One account's entries that a batch reads, each found by its id. */
export interface AccountState {
  accountId: string;
  balance: Entry<BalanceState>;
  /** By key id. */
  keys: ReadonlyMap<string, Entry<ApiKey>>;
  /** By key id. */
  spends: ReadonlyMap<string, Entry<KeySpend>>;
  /** Holds written to KV, by hold id. */
  holds: ReadonlyMap<string, Entry<Hold>>;
  /** Once-keys of credits, by `keyString`. */
  once: ReadonlyMap<string, Entry<unknown>>;
  /** This process's lease on the account, when it has one. */
  lease: Entry<Lease> | null;
  /** Other processes' leases named by reclaims, by lease id. */
  others: ReadonlyMap<string, Entry<Lease>>;
}

/** What a decision needs of this process (see `LocalLeases`). */
export interface Local {
  lease: LocalLeaseView | null;
  /** Holds of this process's leases that another process reclaimed. */
  orphans: ReadonlyMap<string, LocalHold>;
}

/** A value the atomic sets. `state`: one of the account's entries, remembered once committed. */
export interface Write {
  key: Deno.KvKey;
  value: unknown;
  expireIn?: number;
  state: boolean;
}

export interface Decision {
  /** Each operation's result, in the batch's order. */
  results: unknown[];
  /** The entries the decisions rest on: a write elsewhere since fails the commit. */
  checks: Entry<unknown>[];
  sets: Write[];
  deletes: Deno.KvKey[];
  /** Usage events to commit as outbox entries. */
  events: UsageEvent[];
  /** Holds reserved by this batch (their requests are alive in this process). */
  reserved: Hold[];
  /** Holds no longer served here: settled, released, expired, or found gone. */
  unserved: string[];
  /** Holds renewed by this batch, as written. */
  renewed: Hold[];
  /** What changes in this process's lease, if anything. */
  lease: LeaseEffect | null;
  /** Orphaned holds settled or released by this batch. */
  orphansDone: string[];
  /** What this batch did to leases, counted by the actor (`GET /v1/admin/stats`). */
  counts: LeaseCounts;
}

/** Lease events of a batch. */
export interface LeaseCounts {
  /** Leases taken, topped up, shrunk (recalled, or a cost past its hold), returned, reclaimed. */
  takes: number;
  topups: number;
  shrinks: number;
  returns: number;
  reclaims: number;
  /** Recalls written, and reserves that took the shared path. */
  recalls: number;
  shared_reserves: number;
}

export interface DecideContext {
  now: number;
  /** Whether a shared hold's request is alive in this process (only those are renewed). */
  isLive(holdId: string): boolean;
  /** This process's id: its leases' owner. */
  owner: string;
  /** Lease sizing; null when leases are off. */
  policy: LeasePolicy | null;
  /** The id of a lease this batch takes, if it takes one. */
  newLeaseId: string;
  leaseTtlMs: number;
  /** How long after a recall no process takes a lease on the account. */
  recallMs: number;
}

/** What this process's lease means for the reads: its id, keys, and which holds are its own. */
export interface LocalKeys {
  leaseId: string | null;
  leaseKeyIds: readonly string[];
  isLocalHold(holdId: string): boolean;
}

/** The keys a batch reads, each once: balance, keys and spends, KV holds, once-keys, leases. */
export function readKeys(accountId: string, ops: readonly Op[], local: LocalKeys): Deno.KvKey[] {
  const keys = new Map<string, Deno.KvKey>();
  const add = (k: Deno.KvKey) => keys.set(keyString(k), k);
  visitReads(accountId, ops, local, add);
  return [...keys.values()];
}

function visitReads(
  accountId: string,
  ops: readonly Op[],
  local: LocalKeys,
  add: (k: Deno.KvKey, kind?: "key" | "spend" | "hold" | "once" | "other", id?: string) => void,
) {
  add(balanceKey(accountId));
  const keyOf = (id: string) => {
    add(apiKeyKey(id), "key", id);
    add(keySpendKey(accountId, id), "spend", id);
  };
  if (local.leaseId) {
    add(leaseKey(accountId, local.leaseId));
    // A fold moves the lease's deltas into its keys' spends.
    for (const id of local.leaseKeyIds) keyOf(id);
  }
  for (const op of ops) {
    if ("keyId" in op) keyOf(op.keyId);
    if ("holdId" in op && !local.isLocalHold(op.holdId)) {
      add(holdKey(accountId, op.holdId), "hold", op.holdId);
    }
    if (op.kind === "credit" && op.once) add(op.once.key, "once", keyString(op.once.key));
    if (op.kind === "reclaim") {
      add(leaseKey(accountId, op.leaseId), "other", op.leaseId);
      for (const id of op.keyIds) keyOf(id);
    }
  }
}

/** The account's state for `ops`, each entry found by `get` (a read or a cache, by key). */
export function stateOf(
  accountId: string,
  ops: readonly Op[],
  local: LocalKeys,
  get: (key: Deno.KvKey) => Entry<unknown>,
): AccountState {
  const keys = new Map<string, Entry<ApiKey>>();
  const spends = new Map<string, Entry<KeySpend>>();
  const holds = new Map<string, Entry<Hold>>();
  const once = new Map<string, Entry<unknown>>();
  const others = new Map<string, Entry<Lease>>();
  const maps = { key: keys, spend: spends, hold: holds, once, other: others } as Record<
    string,
    Map<string, Entry<unknown>>
  >;
  visitReads(accountId, ops, local, (k, kind, id) => {
    if (kind) maps[kind].set(id!, get(k));
  });
  return {
    accountId,
    balance: get(balanceKey(accountId)) as Entry<BalanceState>,
    keys,
    spends,
    holds,
    once,
    lease: local.leaseId ? get(leaseKey(accountId, local.leaseId)) as Entry<Lease> : null,
    others,
  };
}

/**
 * Why `amount` cannot be held on the shared balance: the account's available credit (less its
 * holds and leases), then the key's credit limit (less its holds and slices).
 */
export function moneyRefusal(
  key: ApiKey,
  s: KeySpend,
  bal: BalanceState,
  amount: bigint,
): ReserveResult | null {
  const available = bal.balance - bal.reserved - (bal.leased ?? 0n);
  if (amount > available) {
    return { ok: false, code: "insufficient_credits", available: available > 0n ? available : 0n };
  }
  if (key.credit_limit !== null) {
    const remaining = keyRemaining(key, s);
    if (amount > remaining) {
      return { ok: false, code: "key_limit_exceeded", remaining: remaining > 0n ? remaining : 0n };
    }
  }
  return null;
}

/** What is left of a key's credit limit for the shared path: less its holds and its slices. */
const keyRemaining = (key: ApiKey, s: KeySpend) =>
  key.credit_limit! - (key.limit_reset ? s.period_spend : s.spend) - s.reserved - (s.leased ?? 0n);

const clone = (l: Lease): Lease => ({
  ...l,
  keys: Object.fromEntries(Object.entries(l.keys).map(([id, k]) => [id, { ...k }])),
});

/** The working state of one batch: `decide` runs the operations on it in order. */
class Batch {
  readonly d: Decision = {
    results: [],
    checks: [],
    sets: [],
    deletes: [],
    events: [],
    reserved: [],
    unserved: [],
    renewed: [],
    lease: null,
    orphansDone: [],
    counts: {
      takes: 0,
      topups: 0,
      shrinks: 0,
      returns: 0,
      reclaims: 0,
      recalls: 0,
      shared_reserves: 0,
    },
  };
  bal: BalanceState;
  balDirty = false;
  /** Whether a decision rests on the shared entries (then every entry read is checked). */
  shared = false;
  spends = new Map<string, KeySpend>();
  touched = new Set<string>();
  holds = new Map<string, Hold | null>();
  onceStored = new Map<string, unknown>();
  /** This process's lease as it is being changed (null: none, or lost). */
  lease: Lease | null;
  leaseDirty = false;
  /** Taken by this batch: not in KV yet. */
  leaseNew = false;
  toppedUp = false;
  /** Given back in this batch: not topped up again in it. */
  shrunk = false;
  lost: boolean;
  add: [string, LocalHold][] = [];
  remove = new Set<string>();
  held: bigint;
  keyHeld: Map<string, bigint>;
  reclaimed: Entry<Lease>[] = [];

  constructor(readonly state: AccountState, readonly local: Local, readonly ctx: DecideContext) {
    this.bal = { ...EMPTY_BALANCE, ...state.balance.value };
    for (const [id, e] of state.spends) {
      const key = state.keys.get(id)?.value ?? null;
      this.spends.set(
        id,
        currentSpend(e.value ?? EMPTY_KEY_SPEND, key?.limit_reset ?? null, ctx.now),
      );
    }
    for (const [id, e] of state.holds) this.holds.set(id, e.value);
    for (const [k, e] of state.once) if (e.value !== null) this.onceStored.set(k, e.value);
    const mine = state.lease?.value ?? null;
    // Another process reclaimed it (it had expired for them): its holds are orphans now.
    this.lost = local.lease !== null && mine === null;
    this.lease = mine && clone(mine);
    this.held = local.lease?.held ?? 0n;
    this.keyHeld = new Map(local.lease?.keyHeld ?? []);
  }

  get now() {
    return this.ctx.now;
  }

  key(id: string): ApiKey | null {
    return this.state.keys.get(id)?.value ?? null;
  }

  available(): bigint {
    return this.bal.balance - this.bal.reserved - (this.bal.leased ?? 0n);
  }

  /** A local hold of this process's live lease, not yet settled in this batch. */
  localHold(holdId: string): LocalHold | undefined {
    if (this.lost || this.remove.has(holdId)) return;
    return this.local.lease?.holds.get(holdId) ?? this.add.find(([id]) => id === holdId)?.[1];
  }

  orphan(holdId: string): LocalHold | undefined {
    if (this.d.orphansDone.includes(holdId)) return;
    return this.local.orphans.get(holdId) ??
      (this.lost ? this.local.lease?.holds.get(holdId) : undefined);
  }

  dropLocal(holdId: string, h: LocalHold) {
    this.remove.add(holdId);
    this.held -= h.amount;
    this.keyHeld.set(h.keyId, (this.keyHeld.get(h.keyId) ?? 0n) - h.amount);
    this.leaseDirty = true;
  }

  touchBalance() {
    this.shared = true;
    this.balDirty = true;
  }

  recalled(): boolean {
    const r = this.bal.recall_ms;
    return r !== undefined && this.now < r + this.ctx.recallMs;
  }

  // ---- shared holds

  unhold(holdId: string) {
    // Gone already (expired by a sweep): no longer this process's to protect or renew either.
    this.d.unserved.push(holdId);
    const h = this.holds.get(holdId);
    this.shared = true;
    if (!h) return;
    this.holds.set(holdId, null);
    this.bal = { ...this.bal, reserved: this.bal.reserved - h.amount };
    this.balDirty = true;
    const s = this.spends.get(h.key_id);
    if (s) {
      this.spends.set(h.key_id, { ...s, reserved: s.reserved - h.amount });
      this.touched.add(h.key_id);
    }
    this.d.deletes.push(holdKey(this.state.accountId, holdId));
  }

  /** Charges `cost` to the shared balance, capped by what is available (never below zero). */
  chargeShared(keyId: string, cost: bigint, event: UsageEvent) {
    const left = this.available();
    const charged = cost <= left ? cost : left > 0n ? left : 0n;
    this.bal = {
      ...this.bal,
      balance: this.bal.balance - charged,
      total_used: this.bal.total_used + charged,
    };
    this.touchBalance();
    const s = this.spends.get(keyId) ?? EMPTY_KEY_SPEND;
    this.spends.set(keyId, addSpend(s, this.key(keyId)?.limit_reset ?? null, charged, this.now));
    this.touched.add(keyId);
    // Other processes' lease debits are not in `balance` until folded: exact with one process.
    const after = this.bal.balance - (this.lease?.spent ?? 0n);
    this.d.events.push({ ...event, cost: charged, balance_after: after });
    return { balanceAfter: after, charged };
  }

  // ---- this process's lease

  ownGranted = () => this.lease?.granted ?? 0n;
  ownFree = () => this.lease ? this.lease.granted - this.lease.spent - this.held : 0n;

  /** Folds the lease's debits into the balance and its keys' deltas into their spends. */
  fold(l: Lease) {
    // Written with the balance, or a lease would keep debits the balance has already taken.
    if (l === this.lease) this.leaseDirty = true;
    if (l.spent !== 0n) {
      this.bal = {
        ...this.bal,
        balance: this.bal.balance - l.spent,
        total_used: this.bal.total_used + l.spent,
        leased: (this.bal.leased ?? 0n) - l.spent,
      };
      l.granted -= l.spent;
      l.spent = 0n;
      this.touchBalance();
    }
    for (const [id, k] of Object.entries(l.keys)) {
      const s = this.spends.get(id);
      // A key not read in this batch keeps its delta for a later fold.
      if (!s || (k.delta.spend === 0n && k.delta.last_used_at === null)) continue;
      const reset = this.key(id)?.limit_reset ?? null;
      const folded = k.slice === null ? 0n : k.delta.spend;
      this.spends.set(id, {
        ...mergeDelta(s, k.delta, reset, this.now),
        leased: (s.leased ?? 0n) - folded,
      });
      this.touched.add(id);
      l.keys[id] = {
        ...k,
        slice: k.slice === null ? null : k.slice - folded,
        delta: { ...k.delta, spend: 0n, period_spend: 0n, usage_today: 0n, usage_month: 0n },
      };
      l.keys[id].delta.last_used_at = null;
      this.shared = true;
    }
  }

  /** Gives back what the lease's holds do not need, then deletes it if it holds nothing. */
  shrink() {
    const l = this.lease;
    if (!l) return;
    this.shrunk = true;
    this.fold(l);
    const free = l.granted - this.held;
    if (free > 0n) {
      this.d.counts.shrinks++;
      l.granted -= free;
      this.bal = { ...this.bal, leased: (this.bal.leased ?? 0n) - free };
      this.touchBalance();
    }
    for (const [id, k] of Object.entries(l.keys)) {
      if (k.slice === null) continue;
      const s = this.spends.get(id);
      const back = k.slice - (this.keyHeld.get(id) ?? 0n);
      if (!s || back <= 0n) continue;
      this.spends.set(id, { ...s, leased: (s.leased ?? 0n) - back });
      this.touched.add(id);
      l.keys[id] = { ...k, slice: k.slice - back };
    }
    this.leaseDirty = true;
  }

  /** Takes a lease (or tops this one up) to the wanted size, within the available fraction. */
  topUp(need: bigint): boolean {
    const p = this.ctx.policy;
    if (!p || this.lost || this.recalled()) return false;
    const cap = this.available() / LEASE_FRACTION;
    // Near exhaustion: the last credit is reserved exactly, one shared hold at a time.
    if (cap < p.least || cap < need) return false;
    let x = p.want + need - this.ownFree();
    if (x <= 0n) return true;
    if (x > cap) x = cap;
    // A background top-up smaller than a quarter of the wanted size is not worth a commit.
    if (need === 0n && x * 4n < p.want) return true;
    if (!this.lease) {
      this.lease = {
        id: this.ctx.newLeaseId,
        owner: this.ctx.owner,
        granted: 0n,
        spent: 0n,
        held: 0n,
        expires_ms: 0,
        keys: {},
      };
      this.leaseNew = true;
      this.d.counts.takes++;
      this.bal = { ...this.bal, leases: (this.bal.leases ?? 0) + 1 };
    }
    this.fold(this.lease);
    this.toppedUp = true;
    if (!this.leaseNew) this.d.counts.topups++;
    this.lease.granted += x;
    this.bal = { ...this.bal, leased: (this.bal.leased ?? 0n) + x };
    this.touchBalance();
    this.leaseDirty = true;
    return true;
  }

  /** Tops up the key's slice of its credit limit to the wanted size, within its fraction. */
  topUpSlice(key: ApiKey, need: bigint): boolean {
    const p = this.ctx.policy!;
    const l = this.lease!;
    const s = this.spends.get(key.id)!;
    const cap = keyRemaining(key, s) / LEASE_FRACTION;
    if (cap < p.least || cap < need) return false;
    const k = l.keys[key.id];
    let x = p.want + need - (sliceFree(k) - (this.keyHeld.get(key.id) ?? 0n));
    if (x <= 0n) return true;
    if (x > cap) x = cap;
    l.keys[key.id] = { ...k, slice: (k.slice ?? 0n) + x };
    this.spends.set(key.id, { ...s, leased: (s.leased ?? 0n) + x });
    this.touched.add(key.id);
    this.touchBalance();
    this.leaseDirty = true;
    return true;
  }

  /** Grants the hold from this process's lease (topping it up if need be), or false. */
  leaseReserve(key: ApiKey, op: ReserveOp): boolean {
    if (!this.ctx.policy || this.lost || key.rate_limit_rpm !== null || this.recalled()) {
      return false;
    }
    const old = this.lease?.keys[key.id];
    if (old && (old.limit !== key.credit_limit || old.reset !== key.limit_reset)) {
      // The key's limit changed: its slice is given back, and taken anew under the new limit.
      this.shrink();
      const l = this.lease!;
      l.keys[key.id] = { ...l.keys[key.id], limit: key.credit_limit, reset: key.limit_reset };
    }
    if (this.ownFree() < op.amount && !this.topUp(op.amount)) return false;
    const l = this.lease;
    if (!l || this.ownFree() < op.amount) return false;
    if (!l.keys[key.id]) {
      if (Object.keys(l.keys).length >= MAX_LEASE_KEYS) return false;
      l.keys[key.id] = newLeaseKey(key.credit_limit, key.limit_reset);
    }
    if (key.credit_limit !== null) {
      if (l.keys[key.id].slice === null) l.keys[key.id] = { ...l.keys[key.id], slice: 0n };
      const room = () => sliceFree(l.keys[key.id]) - (this.keyHeld.get(key.id) ?? 0n);
      if (room() < op.amount && (!this.topUpSlice(key, op.amount) || room() < op.amount)) {
        this.leaseDirty = true;
        return false;
      }
    }
    const h: LocalHold = { keyId: key.id, amount: op.amount };
    this.add.push([op.holdId, h]);
    this.held += h.amount;
    this.keyHeld.set(key.id, (this.keyHeld.get(key.id) ?? 0n) + h.amount);
    this.leaseDirty = true;
    return true;
  }

  // ---- operations

  reserve(op: ReserveOp): ReserveDecision {
    const check = checkKey(this.key(op.keyId), this.now);
    if (!check.ok) return { ok: false, code: check.code };
    const key = check.key;
    if (this.leaseReserve(key, op)) return { ok: true };
    this.shared = true;
    const s = this.spends.get(op.keyId)!;
    // The rate window lives in the key's spend record, checked and written in this atomic,
    // so `rate_limit_rpm` holds across processes.
    const window = key.rate_limit_rpm === null ? null : rateWindow(s.rate, this.now);
    if (window && key.rate_limit_rpm !== null) {
      const wait = rateLimitWait(window, key.rate_limit_rpm, this.now);
      if (wait > 0) {
        return { ok: false, code: "rate_limited", rpm: key.rate_limit_rpm, retryAfterSec: wait };
      }
    }
    let short = moneyRefusal(key, s, this.bal, op.amount);
    // Never refused while this process's own lease holds what would cover it.
    if (short && this.ownFree() > 0n) {
      this.shrink();
      short = moneyRefusal(key, this.spends.get(op.keyId)!, this.bal, op.amount);
    }
    if (short) return this.othersHold(short, op.keyId) ? this.recall(short) : short;
    this.d.counts.shared_reserves++;
    this.bal = { ...this.bal, reserved: this.bal.reserved + op.amount };
    this.balDirty = true;
    const cur = this.spends.get(op.keyId)!;
    this.spends.set(op.keyId, {
      ...cur,
      reserved: cur.reserved + op.amount,
      ...(window ? { rate: countRequest(window, this.now) } : {}),
    });
    this.touched.add(op.keyId);
    const hold: Hold = {
      id: op.holdId,
      key_id: op.keyId,
      amount: op.amount,
      created_ms: this.now,
      expires_ms: this.now + op.ttlMs,
    };
    this.holds.set(op.holdId, hold);
    this.d.sets.push({ key: holdKey(this.state.accountId, op.holdId), value: hold, state: true });
    this.d.reserved.push(hold);
    return { ok: true };
  }

  /** Whether other processes' leases hold credit the refused reserve would need. */
  othersHold(short: ReserveResult, keyId: string): boolean {
    if (short.ok) return false;
    if (short.code === "insufficient_credits") return (this.bal.leased ?? 0n) > this.ownGranted();
    if (short.code !== "key_limit_exceeded") return false;
    const own = this.lease?.keys[keyId]?.slice ?? 0n;
    return (this.spends.get(keyId)?.leased ?? 0n) > own;
  }

  /** Asks the processes holding leases on the account to give back what their holds do not need. */
  recall(short: ReserveResult): ReserveDecision {
    const r = this.bal.recall_ms;
    // One recall stands for its whole window: refusals meanwhile do not write it again.
    if (r === undefined || this.now >= r + this.ctx.recallMs / 2) {
      this.d.counts.recalls++;
      this.bal = { ...this.bal, recall_ms: this.now };
      this.touchBalance();
    }
    return { ...short, recall: true } as ReserveDecision;
  }

  settle(op: Extract<Op, { kind: "settle" }>) {
    const local = this.localHold(op.holdId);
    if (local && this.lease && op.cost > local.amount) {
      // More than its hold (an upstream reporting past the worst case): the lease gives back all
      // its holds do not need, and the cost is charged on the shared balance, as a shared hold's
      // would be, capped by what is available.
      this.dropLocal(op.holdId, local);
      this.shrink();
      return this.chargeShared(op.keyId, op.cost, op.event);
    }
    if (local && this.lease) {
      // Settled on the lease, within its hold: the lease never spends past its credit.
      this.dropLocal(op.holdId, local);
      const charged = op.cost;
      const l = this.lease;
      l.spent += charged;
      const k = l.keys[op.keyId] ?? newLeaseKey(null, null);
      l.keys[op.keyId] = {
        ...k,
        delta: addSpend(k.delta, this.key(op.keyId)?.limit_reset ?? null, charged, this.now),
      };
      // The balance as this process knows it, less its own debits since: exact with one process.
      const after = this.bal.balance - l.spent;
      this.d.events.push({ ...op.event, cost: charged, balance_after: after });
      return { balanceAfter: after, charged };
    }
    if (this.orphan(op.holdId)) {
      // Its lease was reclaimed: charged on the shared balance, capped by what is available.
      this.d.orphansDone.push(op.holdId);
      return this.chargeShared(op.keyId, op.cost, op.event);
    }
    this.unhold(op.holdId);
    return this.chargeShared(op.keyId, op.cost, op.event);
  }

  release(op: Extract<Op, { kind: "release" }>) {
    const local = this.localHold(op.holdId);
    if (local) this.dropLocal(op.holdId, local);
    else if (this.orphan(op.holdId)) this.d.orphansDone.push(op.holdId);
    else this.unhold(op.holdId);
    if (op.event) this.d.events.push(op.event);
  }

  credit(op: Extract<Op, { kind: "credit" }>) {
    const ks = op.once ? keyString(op.once.key) : null;
    this.shared = true;
    if (ks !== null && this.onceStored.has(ks)) {
      return { replayed: true, stored: this.onceStored.get(ks) };
    }
    this.bal = {
      ...this.bal,
      balance: this.bal.balance + op.amount,
      total_purchased: this.bal.total_purchased + (op.type === "purchase" ? op.amount : 0n),
    };
    this.balDirty = true;
    const entry: LedgerEntry = {
      id: newId("txn", this.now),
      type: op.type,
      amount: op.amount,
      balance_after: this.bal.balance - (this.lease?.spent ?? 0n),
      created_at: new Date(this.now).toISOString(),
      description: op.description,
      reference: op.reference,
    };
    this.d.sets.push({
      key: ledgerKey(this.state.accountId, this.now, entry.id),
      value: entry,
      state: false,
    });
    if (op.once && ks !== null) {
      const stored = op.once.value(entry);
      // Once-keys are read afresh each time (credits are rare): not remembered.
      this.d.sets.push({
        key: op.once.key,
        value: stored,
        expireIn: op.once.expireIn,
        state: false,
      });
      this.onceStored.set(ks, stored);
    }
    // Credit taken back below what leases hold: their owners give back what they do not need.
    if (this.available() < 0n && (this.bal.leased ?? 0n) > this.ownGranted()) {
      this.bal = { ...this.bal, recall_ms: this.now };
    }
    return { replayed: false, entry };
  }

  reclaim(op: Extract<Op, { kind: "reclaim" }>) {
    const e = this.state.others.get(op.leaseId)!;
    const l = e.value;
    this.shared = true;
    if (!l || l.owner === this.ctx.owner || l.expires_ms > this.now) return false;
    // Every key it serves must be read, or a delta would be lost with it: listed again next sweep.
    if (Object.keys(l.keys).some((id) => !this.spends.has(id))) return false;
    const w = clone(l);
    this.fold(w);
    this.bal = {
      ...this.bal,
      leased: (this.bal.leased ?? 0n) - w.granted,
      leases: Math.max(0, (this.bal.leases ?? 1) - 1),
    };
    for (const [id, k] of Object.entries(w.keys)) {
      if (k.slice === null || k.slice === 0n) continue;
      const s = this.spends.get(id)!;
      this.spends.set(id, { ...s, leased: (s.leased ?? 0n) - k.slice });
      this.touched.add(id);
    }
    this.touchBalance();
    this.reclaimed.push(e);
    this.d.counts.reclaims++;
    return true;
  }

  leaseOp(action: "topup" | "sync" | "return") {
    if (!this.lease && action !== "topup") return;
    if (action === "topup") this.topUp(0n);
    else if (action === "return") this.shrink();
    else this.leaseDirty = true;
  }

  /** Closes the batch: folds, writes and checks. */
  finish(): Decision {
    const { d, state, ctx } = this;
    const acct = state.accountId;
    const l = this.lease;
    if (l && this.recalled() && (this.ownFree() > 0n || !this.held)) this.shrink();
    else if (
      l && this.leaseDirty && !this.toppedUp && !this.shrunk && ctx.policy &&
      this.ownFree() * 2n < ctx.policy.want
    ) {
      // Running low: topped up in the commit that writes the lease anyway, before a reserve
      // finds it short.
      this.topUp(0n);
    }
    // Whenever the balance is written anyway, this process's lease is folded into it.
    if (l && this.balDirty) this.fold(l);
    let leaseValue: Lease | null = l;
    if (l && this.leaseDirty) {
      const drop = l.granted === 0n && l.spent === 0n && this.held === 0n &&
        Object.values(l.keys).every((k) => !k.slice && k.delta.spend === 0n);
      if (drop) {
        leaseValue = null;
        if (!this.leaseNew) {
          d.counts.returns++;
          this.bal = { ...this.bal, leases: Math.max(0, (this.bal.leases ?? 1) - 1) };
          this.touchBalance();
          d.deletes.push(leaseKey(acct, l.id));
        } else if (this.balDirty) this.bal = { ...this.bal, leases: (this.bal.leases ?? 1) - 1 };
      } else {
        l.expires_ms = this.now + ctx.leaseTtlMs;
        l.held = this.held > 0n ? this.held : 0n;
        for (const [id, k] of Object.entries(l.keys)) {
          const held = this.keyHeld.get(id) ?? 0n;
          if (k.held !== held) l.keys[id] = { ...k, held: held > 0n ? held : 0n };
        }
        d.sets.push({ key: leaseKey(acct, l.id), value: l, state: true });
      }
    }
    if (this.shared) {
      d.checks.push(state.balance);
      for (const m of [state.keys, state.spends, state.holds, state.once, state.others]) {
        for (const e of m.values()) d.checks.push(e);
      }
    }
    const leaseWritten = l !== null && this.leaseDirty;
    if (leaseWritten || (this.shared && state.lease)) {
      d.checks.push(
        this.leaseNew ? { key: leaseKey(acct, l!.id), value: null, versionstamp: null } : state
          .lease!,
      );
    }
    for (const e of this.reclaimed) d.deletes.push(e.key);
    if (this.balDirty) d.sets.push({ key: balanceKey(acct), value: this.bal, state: true });
    for (const id of this.touched) {
      d.sets.push({ key: keySpendKey(acct, id), value: this.spends.get(id)!, state: true });
    }
    if (this.lost) {
      d.lease = {
        id: this.local.lease!.id,
        value: null,
        add: [],
        remove: [...this.remove],
        lost: true,
      };
    } else if (l && (leaseWritten || this.add.length || this.remove.size)) {
      d.lease = {
        id: l.id,
        value: leaseWritten ? leaseValue : l,
        add: this.add,
        remove: [...this.remove],
        lost: false,
      };
    }
    return d;
  }
}

/**
 * Decides a batch of one account's operations, in order, on `state` and this process's lease.
 */
export function decide(
  state: AccountState,
  ops: readonly Op[],
  local: Local,
  ctx: DecideContext,
): Decision {
  const b = new Batch(state, local, ctx);
  const { d } = b;
  for (const op of ops) {
    switch (op.kind) {
      case "reserve":
        d.results.push(b.reserve(op));
        break;
      case "settle":
        d.results.push(b.settle(op));
        break;
      case "release":
        b.release(op);
        d.results.push(undefined);
        break;
      case "expire": {
        const h = b.holds.get(op.holdId);
        if (h && h.expires_ms <= ctx.now) b.unhold(op.holdId);
        d.results.push(undefined);
        break;
      }
      case "renew": {
        const h = b.holds.get(op.holdId);
        b.shared = true;
        if (!h || !ctx.isLive(op.holdId)) {
          // Its request settled, or a sweep released it meanwhile: nothing left to keep.
          d.unserved.push(op.holdId);
          d.results.push(null);
          break;
        }
        const expires = ctx.now + op.ttlMs;
        if (expires > h.expires_ms) {
          const hold = { ...h, expires_ms: expires };
          b.holds.set(op.holdId, hold);
          d.sets.push({ key: holdKey(state.accountId, op.holdId), value: hold, state: true });
          d.renewed.push(hold);
        }
        d.results.push(b.holds.get(op.holdId)!.expires_ms);
        break;
      }
      case "record":
        d.events.push(op.event);
        d.results.push(undefined);
        break;
      case "credit":
        d.results.push(b.credit(op));
        break;
      case "lease":
        b.leaseOp(op.action);
        d.results.push(undefined);
        break;
      case "reclaim":
        d.results.push(b.reclaim(op));
        break;
    }
  }
  return b.finish();
}

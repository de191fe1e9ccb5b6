/**
 * One batch's working state and the decisions of the shared path (see decide.ts): shared holds,
 * credits, charges on the balance, refusals and recalls. The lease path is lease_ops.ts.
 */
import { balanceKey, holdKey, keySpendKey, leaseKey, ledgerKey } from "../kv/schema.ts";
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
import { addSpend, cloneLease, keyRemaining } from "./lease.ts";
import type { LocalHold } from "./local_lease.ts";
import type { AccountState, DecideContext, Decision, Local } from "./decide.ts";
import { finishLease, leaseReserve, settleOnLease, shrink } from "./lease_ops.ts";
import { ledgerTotalSum } from "./totals.ts";

type Entry<T> = Deno.KvEntryMaybe<T>;

/** Lease events of a batch (each a count; see `emptyLeaseCounts`). */
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

export const emptyLeaseCounts = (): LeaseCounts => ({
  takes: 0,
  topups: 0,
  shrinks: 0,
  returns: 0,
  reclaims: 0,
  recalls: 0,
  shared_reserves: 0,
});

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

/** The working state of one batch: `decide` runs the operations on it in order. */
export class Batch {
  readonly d: Decision = {
    results: [],
    checks: [],
    sets: [],
    deletes: [],
    events: [],
    sums: [],
    accountEvents: [],
    reserved: [],
    unserved: [],
    renewed: [],
    lease: null,
    orphansDone: [],
    counts: emptyLeaseCounts(),
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
    this.lease = mine && cloneLease(mine);
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

  // ---- operations

  reserve(op: ReserveOp): ReserveDecision {
    const check = checkKey(this.key(op.keyId), this.now);
    if (!check.ok) {
      // Refused on the key's record: checked, so that one changed elsewhere is read afresh.
      this.shared = true;
      return { ok: false, code: check.code };
    }
    const key = check.key;
    if (leaseReserve(this, key, op)) return { ok: true };
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
      shrink(this);
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
    if (local && this.lease) return settleOnLease(this, op, local);
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
      ...(op.receipt_url ? { receipt_url: op.receipt_url } : {}),
    };
    this.d.sets.push({
      key: ledgerKey(this.state.accountId, this.now, entry.id),
      value: entry,
      state: false,
    });
    const total = ledgerTotalSum(this.state.accountId, op.amount);
    if (total) this.d.sums.push(total);
    if (op.event) this.d.accountEvents.push(op.event(entry));
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

  /** Closes the batch: folds, writes and checks. */
  finish(): Decision {
    const { d, state } = this;
    const acct = state.accountId;
    const l = this.lease;
    const leaseValue = finishLease(this);
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

/**
 * The account actor's decisions, pure: given an account's entries (read by key, as this process
 * last committed or read them) and a batch of operations, each operation's result, the checks and
 * writes of the atomic that commits the batch, and the usage events it records. No KV, no clock,
 * no process state: the scheduler (actor.ts) reads, commits, and remembers what was committed.
 */
import { apiKeyKey, balanceKey, holdKey, keySpendKey, ledgerKey } from "../kv/schema.ts";
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
  type LedgerEntry,
  type UsageEvent,
} from "./types.ts";
import type { Op, ReserveResult } from "./ops.ts";

type Entry<T> = Deno.KvEntryMaybe<T>;

/** One account's entries that a batch reads, each found by its id. */
export interface AccountState {
  accountId: string;
  balance: Entry<BalanceState>;
  /** By key id. */
  keys: ReadonlyMap<string, Entry<ApiKey>>;
  /** By key id. */
  spends: ReadonlyMap<string, Entry<KeySpend>>;
  /** By hold id. */
  holds: ReadonlyMap<string, Entry<Hold>>;
  /** Once-keys of credits, by `keyString`. */
  once: ReadonlyMap<string, Entry<unknown>>;
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
}

export interface DecideContext {
  now: number;
  /** Whether a hold's request is alive in this process (only those are renewed). */
  isLive(holdId: string): boolean;
}

/** The keys a batch reads: balance, its keys and their spends, its holds, once-keys. */
export function readKeys(accountId: string, ops: readonly Op[]): Deno.KvKey[] {
  const keys = new Map<string, Deno.KvKey>();
  const add = (k: Deno.KvKey) => keys.set(keyString(k), k);
  add(balanceKey(accountId));
  for (const op of ops) {
    if ("keyId" in op) {
      add(apiKeyKey(op.keyId));
      add(keySpendKey(accountId, op.keyId));
    }
    if ("holdId" in op) add(holdKey(accountId, op.holdId));
    if (op.kind === "credit" && op.once) add(op.once.key);
  }
  return [...keys.values()];
}

/** The account's state for `ops`, each entry found by `get` (a read or a cache, by key). */
export function stateOf(
  accountId: string,
  ops: readonly Op[],
  get: (key: Deno.KvKey) => Entry<unknown>,
): AccountState {
  const keys = new Map<string, Entry<ApiKey>>();
  const spends = new Map<string, Entry<KeySpend>>();
  const holds = new Map<string, Entry<Hold>>();
  const once = new Map<string, Entry<unknown>>();
  for (const op of ops) {
    if ("keyId" in op) {
      keys.set(op.keyId, get(apiKeyKey(op.keyId)) as Entry<ApiKey>);
      spends.set(op.keyId, get(keySpendKey(accountId, op.keyId)) as Entry<KeySpend>);
    }
    if ("holdId" in op) holds.set(op.holdId, get(holdKey(accountId, op.holdId)) as Entry<Hold>);
    if (op.kind === "credit" && op.once) once.set(keyString(op.once.key), get(op.once.key));
  }
  return {
    accountId,
    balance: get(balanceKey(accountId)) as Entry<BalanceState>,
    keys,
    spends,
    holds,
    once,
  };
}

/** Why `amount` cannot be held: the account's available balance, then the key's credit limit. */
export function moneyRefusal(
  key: ApiKey,
  s: KeySpend,
  bal: BalanceState,
  amount: bigint,
): ReserveResult | null {
  const available = bal.balance - bal.reserved;
  if (amount > available) {
    return { ok: false, code: "insufficient_credits", available: available > 0n ? available : 0n };
  }
  if (key.credit_limit !== null) {
    const used = key.limit_reset ? s.period_spend : s.spend;
    const remaining = key.credit_limit - used - s.reserved;
    if (amount > remaining) {
      return { ok: false, code: "key_limit_exceeded", remaining: remaining > 0n ? remaining : 0n };
    }
  }
  return null;
}

/** A key's spend with `cost` added to every counter of the current periods. */
function spent(s: KeySpend, cost: bigint, nowIso: string): KeySpend {
  return {
    ...s,
    spend: s.spend + cost,
    period_spend: s.period_spend + cost,
    usage_today: s.usage_today + cost,
    usage_month: s.usage_month + cost,
    last_used_at: nowIso,
  };
}

/**
 * Decides a batch of one account's operations, in order, on `state`. Every entry of the state is
 * checked by the atomic; the balance and each touched key spend are written back.
 */
export function decide(state: AccountState, ops: readonly Op[], ctx: DecideContext): Decision {
  const { accountId } = state;
  const { now } = ctx;
  const nowIso = new Date(now).toISOString();
  const d: Decision = {
    results: [],
    checks: [],
    sets: [],
    deletes: [],
    events: [],
    reserved: [],
    unserved: [],
    renewed: [],
  };
  d.checks.push(state.balance);
  for (const m of [state.keys, state.spends, state.holds, state.once]) {
    for (const e of m.values()) d.checks.push(e);
  }

  let bal: BalanceState = { ...EMPTY_BALANCE, ...state.balance.value };
  const spends = new Map<string, KeySpend>();
  for (const [id, e] of state.spends) {
    const key = state.keys.get(id)?.value ?? null;
    spends.set(id, currentSpend(e.value ?? EMPTY_KEY_SPEND, key?.limit_reset ?? null, now));
  }
  const holds = new Map<string, Hold | null>();
  for (const [id, e] of state.holds) holds.set(id, e.value);
  const onceStored = new Map<string, unknown>();
  for (const [k, e] of state.once) if (e.value !== null) onceStored.set(k, e.value);
  const touched = new Set<string>();

  const unhold = (holdId: string) => {
    // Gone already (expired by a sweep): no longer this process's to protect or renew either.
    d.unserved.push(holdId);
    const h = holds.get(holdId);
    if (!h) return;
    holds.set(holdId, null);
    bal.reserved -= h.amount;
    const s = spends.get(h.key_id);
    if (s) {
      spends.set(h.key_id, { ...s, reserved: s.reserved - h.amount });
      touched.add(h.key_id);
    }
    d.deletes.push(holdKey(accountId, holdId));
  };

  for (const op of ops) {
    switch (op.kind) {
      case "reserve": {
        const check = checkKey(state.keys.get(op.keyId)?.value ?? null, now);
        if (!check.ok) {
          d.results.push({ ok: false, code: check.code });
          break;
        }
        const key = check.key;
        const s = spends.get(op.keyId)!;
        // The rate window lives in the key's spend record, checked and written in this atomic,
        // so `rate_limit_rpm` holds across processes.
        const window = key.rate_limit_rpm === null ? null : rateWindow(s.rate, now);
        if (window && key.rate_limit_rpm !== null) {
          const wait = rateLimitWait(window, key.rate_limit_rpm, now);
          if (wait > 0) {
            d.results.push({
              ok: false,
              code: "rate_limited",
              rpm: key.rate_limit_rpm,
              retryAfterSec: wait,
            });
            break;
          }
        }
        const short = moneyRefusal(key, s, bal, op.amount);
        if (short) {
          d.results.push(short);
          break;
        }
        bal = { ...bal, reserved: bal.reserved + op.amount };
        spends.set(op.keyId, {
          ...s,
          reserved: s.reserved + op.amount,
          ...(window ? { rate: countRequest(window, now) } : {}),
        });
        touched.add(op.keyId);
        const hold: Hold = {
          id: op.holdId,
          key_id: op.keyId,
          amount: op.amount,
          created_ms: now,
          expires_ms: now + op.ttlMs,
        };
        holds.set(op.holdId, hold);
        d.sets.push({ key: holdKey(accountId, op.holdId), value: hold, state: true });
        d.reserved.push(hold);
        d.results.push({ ok: true });
        break;
      }
      case "settle": {
        unhold(op.holdId);
        // A balance never goes below zero, nor eats into other requests' holds: a cost beyond
        // that (an upstream reporting more usage than the worst case held) is not charged.
        const left = bal.balance - bal.reserved;
        const cost = op.cost <= left ? op.cost : left > 0n ? left : 0n;
        bal = { ...bal, balance: bal.balance - cost, total_used: bal.total_used + cost };
        spends.set(op.keyId, spent(spends.get(op.keyId)!, cost, nowIso));
        touched.add(op.keyId);
        d.events.push({ ...op.event, cost, balance_after: bal.balance });
        d.results.push({ balanceAfter: bal.balance, charged: cost });
        break;
      }
      case "release":
        unhold(op.holdId);
        if (op.event) d.events.push(op.event);
        d.results.push(undefined);
        break;
      case "expire": {
        const h = holds.get(op.holdId);
        if (h && h.expires_ms <= now) unhold(op.holdId);
        d.results.push(undefined);
        break;
      }
      case "renew": {
        const h = holds.get(op.holdId);
        if (!h || !ctx.isLive(op.holdId)) {
          // Its request settled, or a sweep released it meanwhile: nothing left to keep.
          d.unserved.push(op.holdId);
          d.results.push(null);
          break;
        }
        const expires = now + op.ttlMs;
        if (expires > h.expires_ms) {
          const hold = { ...h, expires_ms: expires };
          holds.set(op.holdId, hold);
          d.sets.push({ key: holdKey(accountId, op.holdId), value: hold, state: true });
          d.renewed.push(hold);
        }
        d.results.push(holds.get(op.holdId)!.expires_ms);
        break;
      }
      case "record":
        d.events.push(op.event);
        d.results.push(undefined);
        break;
      case "credit": {
        const ks = op.once ? keyString(op.once.key) : null;
        if (ks !== null && onceStored.has(ks)) {
          d.results.push({ replayed: true, stored: onceStored.get(ks) });
          break;
        }
        bal = {
          ...bal,
          balance: bal.balance + op.amount,
          total_purchased: bal.total_purchased + (op.type === "purchase" ? op.amount : 0n),
        };
        const entry: LedgerEntry = {
          id: newId("txn", now),
          type: op.type,
          amount: op.amount,
          balance_after: bal.balance,
          created_at: nowIso,
          description: op.description,
          reference: op.reference,
        };
        d.sets.push({ key: ledgerKey(accountId, now, entry.id), value: entry, state: false });
        if (op.once && ks !== null) {
          const stored = op.once.value(entry);
          // Once-keys are read afresh each time (credits are rare): not remembered.
          d.sets.push({
            key: op.once.key,
            value: stored,
            expireIn: op.once.expireIn,
            state: false,
          });
          onceStored.set(ks, stored);
        }
        d.results.push({ replayed: false, entry });
        break;
      }
    }
  }

  d.sets.push({ key: balanceKey(accountId), value: bal, state: true });
  for (const id of touched) {
    d.sets.push({ key: keySpendKey(accountId, id), value: spends.get(id)!, state: true });
  }
  return d;
}

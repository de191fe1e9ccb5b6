import { apiKeyKey, balanceKey, holdKey, keySpendKey, ledgerKey, outboxKey } from "../kv/schema.ts";
import { approxBytes, getAll, isLocked, keyBytes, keyString, sleep } from "../kv/util.ts";
import { newId } from "../ids.ts";
import { checkKey } from "../auth/keys.ts";
import { countRequest, currentSpend, rateLimitWait, rateWindow } from "./periods.ts";
import { countLedger } from "./totals.ts";
import {
  type ApiKey,
  type BalanceState,
  EMPTY_BALANCE,
  EMPTY_KEY_SPEND,
  type Hold,
  type KeySpend,
  type LedgerEntry,
  type LedgerType,
  type UsageEvent,
} from "./types.ts";
import { type AccountEvent, emitEvent, MAX_EVENT_BYTES } from "../webhooks/events.ts";

/** Take `amount` out of the available balance (and the key's limit) until settled or released. */
export interface ReserveOp {
  kind: "reserve";
  keyId: string;
  holdId: string;
  amount: bigint;
  ttlMs: number;
}
/** Release the hold, debit the actual cost, and commit the usage event. */
export interface SettleOp {
  kind: "settle";
  keyId: string;
  holdId: string;
  cost: bigint;
  event: UsageEvent;
}
/** Release a hold without charge (the provider failed); the event, if any, is recorded. */
export interface ReleaseOp {
  kind: "release";
  holdId: string;
  event: UsageEvent | null;
}
/** Record an event that moved no money (a refused request). */
export interface RecordOp {
  kind: "record";
  event: UsageEvent;
}
/** Release a hold whose request died with its process. */
export interface ExpireOp {
  kind: "expire";
  holdId: string;
}
/**
 * Push back the expiry of a hold this process still serves, to `ttlMs` from now, so that no
 * process's sweep releases it. A hold already gone (settled, released or expired) is not recreated.
 */
export interface RenewOp {
  kind: "renew";
  holdId: string;
  ttlMs: number;
}
/**
 * Add a ledger entry and move the balance by `amount` (signed). With `once`, the credit is applied
 * at most once: the key is written in the same atomic, and a second attempt replays what was stored.
 */
export interface CreditOp {
  kind: "credit";
  type: Exclude<LedgerType, "usage_debit">;
  amount: bigint;
  description: string;
  reference: string | null;
  once?: { key: Deno.KvKey; value: (entry: LedgerEntry) => unknown; expireIn?: number };
  /** A purchase's receipt, kept on its ledger entry. */
  receipt_url?: string;
  /** The customer webhook event this credit emits, committed with it (`emitEvent`). */
  event?: (entry: LedgerEntry) => AccountEvent;
}
export type Op = ReserveOp | SettleOp | ReleaseOp | RecordOp | ExpireOp | RenewOp | CreditOp;

export type ReserveResult =
  | { ok: true }
  | { ok: false; code: "insufficient_credits"; available: bigint }
  | { ok: false; code: "key_limit_exceeded"; remaining: bigint }
  | { ok: false; code: "rate_limited"; rpm: number; retryAfterSec: number }
  | { ok: false; code: "key_disabled" | "invalid_api_key" };
export type CreditResult = { replayed: false; entry: LedgerEntry } | {
  replayed: true;
  stored: unknown;
};
export interface SettleResult {
  balanceAfter: bigint;
  /** What was debited: the cost, or less when the cost would have overdrawn the balance. */
  charged: bigint;
}

/** The renewed hold's new expiry, or null when the hold is gone (or not this process's). */
export type RenewResult = number | null;

/** A hold reserved by a request alive in this process. */
export interface LiveHold {
  accountId: string;
  /** Its expiry as this process last committed it. */
  expiresMs: number;
}

type ResultOf<O extends Op> = O extends ReserveOp ? ReserveResult
  : O extends CreditOp ? CreditResult
  : O extends SettleOp ? SettleResult
  : O extends RenewOp ? RenewResult
  : void;

interface Pending {
  op: Op;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

interface Mailbox {
  queue: Pending[];
}

/** One account's batch in a committing atomic. */
interface Part {
  accountId: string;
  box: Mailbox;
  batch: Pending[];
}

export interface ActorOptions {
  /** `queue`: the committing atomic enqueues one message naming its events. */
  delivery: "queue" | "drainer";
  /**
   * Called after a commit with the outbox ids it wrote and the entries as committed (with their
   * versionstamp), so that recording them needs no read.
   */
  onCommitted?: (eventIds: string[], events: Deno.KvEntry<UsageEvent>[]) => void;
  now?: () => number;
}

// Deno KV's limits per atomic: checks, mutations, total key bytes, total bytes. Each part's
// footprint is an upper bound (fitBatch), so the limits can be used to the full.
const MAX_CHECKS = 100;
const MAX_MUTATIONS = 1000;
const MAX_KEY_BYTES = 81_920;
const MAX_BYTES = 800 * 1024;
const MAX_OPS = 256;
const MAX_ATTEMPTS = 200;
// Atomics committing at once (of different accounts): the next one is decided and serialized
// while the previous one is written.
const MAX_IN_FLIGHT = 2;
const CACHE_IDLE_MS = 30_000;
const CACHE_SWEEP_MS = 5_000;

interface AccountCache {
  entries: Map<string, Deno.KvEntryMaybe<unknown>>;
  used: number;
}

/**
 * One actor per account in this process: a serial mailbox that folds every operation waiting for
 * it into one check-and-set atomic (group commit). Across processes, the versionstamp checks on the
 * balance, key, key-spend and hold entries make a conflicting commit fail; the batch is then
 * recomputed from fresh reads, so outcomes are always decided on the committed state.
 */
export class AccountActors {
  #kv: Deno.Kv;
  #opts: ActorOptions;
  #boxes = new Map<string, Mailbox>();
  /** Accounts with operations waiting and no batch in the committing atomic, in arrival order. */
  #ready = new Set<string>();
  /** Accounts with a batch in a committing atomic: their next batch waits for it. */
  #busy = new Set<string>();
  #pumps = 0;
  #idle: (() => void)[] = [];
  /**
   * Holds reserved by requests alive in this process: the sweeper leaves them alone, and
   * `renewLive` keeps them from expiring for the other processes' sweeps.
   */
  readonly liveHolds = new Map<string, LiveHold>();
  /**
   * Each account's entries as this process last committed or read them, with their versionstamps:
   * the next batch is decided on them without a read. The atomic still checks every one, so a
   * write by another process fails the commit, which drops the account's cache and reads afresh.
   */
  #cache = new Map<string, AccountCache>();
  #lastEviction = 0;
  /** Per account, Σ amounts of the reserves submitted and not yet decided. */
  #deciding = new Map<string, bigint>();

  constructor(kv: Deno.Kv, opts: ActorOptions) {
    this.#kv = kv;
    this.#opts = opts;
  }

  #now(): number {
    return this.#opts.now?.() ?? Date.now();
  }

  /** Queues an operation on the account's mailbox; resolves once its atomic has committed. */
  submit<O extends Op>(accountId: string, op: O): Promise<ResultOf<O>> {
    return new Promise((resolve, reject) => {
      let box = this.#boxes.get(accountId);
      if (!box) {
        box = { queue: [] };
        this.#boxes.set(accountId, box);
      }
      let pending: Pending = { op, resolve: resolve as (v: unknown) => void, reject };
      if (op.kind === "reserve") pending = this.#whileDeciding(accountId, op.amount, pending);
      box.queue.push(pending);
      this.#evictIdle();
      this.#ready.add(accountId);
      if (this.#pumps < MAX_IN_FLIGHT) {
        this.#pumps++;
        // Let operations submitted in the same tick join the first atomic.
        queueMicrotask(() => this.#pump());
      }
    });
  }

  /** Counts a reserve's amount as deciding on its account until it is resolved or rejected. */
  #whileDeciding(accountId: string, amount: bigint, p: Pending): Pending {
    const add = (d: bigint) => {
      const n = (this.#deciding.get(accountId) ?? 0n) + d;
      if (n === 0n) this.#deciding.delete(accountId);
      else this.#deciding.set(accountId, n);
    };
    add(amount);
    return {
      op: p.op,
      resolve: (v) => {
        add(-amount);
        p.resolve(v);
      },
      reject: (e) => {
        add(-amount);
        p.reject(e);
      },
    };
  }

  /**
   * Whether a reserve of `amount` on this key will almost surely be granted: judged on the
   * account's entries as this process last committed or read them, less every reserve still
   * deciding, and only for a live key without a rate limit. A forecast, never a decision: the
   * reserve's atomic decides, on checked entries. False whenever the state is not cached.
   */
  forecast(accountId: string, keyId: string, amount: bigint): boolean {
    const cache = this.#cache.get(accountId);
    if (!cache) return false;
    const bal = cache.entries.get(keyString(balanceKey(accountId)))?.value as
      | BalanceState
      | null
      | undefined;
    const key = cache.entries.get(keyString(apiKeyKey(keyId)))?.value as ApiKey | null | undefined;
    const spend = cache.entries.get(keyString(keySpendKey(accountId, keyId)));
    if (!bal || !key || !spend || key.rate_limit_rpm !== null) return false;
    const now = this.#now();
    if (!checkKey(key, now).ok) return false;
    const deciding = this.#deciding.get(accountId) ?? 0n;
    const s = currentSpend(
      (spend.value as KeySpend | null) ?? EMPTY_KEY_SPEND,
      key.limit_reset,
      now,
    );
    // Every deciding reserve of the account is counted against the key too: more than its own.
    const ahead = { ...bal, reserved: bal.reserved + deciding };
    return moneyRefusal(key, { ...s, reserved: s.reserved + deciding }, ahead, amount) === null;
  }

  /**
   * Forgets the cached entry of a key changed in this process (limits, disabling, revocation): the
   * next forecast on it is false and the next reserve reads it afresh, so a change made here never
   * has a request sent ahead on the key as it was.
   */
  forgetKey(accountId: string, keyId: string) {
    this.#cache.get(accountId)?.entries.delete(keyString(apiKeyKey(keyId)));
  }

  /**
   * Renews every live hold with less than half of `ttlMs` left, to `ttlMs` from now, each in its
   * account's next batch; resolves with how many were renewed. Run every quarter TTL or so (by
   * `Background`): a request that lives long keeps its hold, one that ends sooner costs nothing,
   * and a process that dies stops renewing, so its holds expire.
   */
  async renewLive(ttlMs: number): Promise<number> {
    const due = this.#now() + ttlMs / 2;
    const renewing: Promise<RenewResult>[] = [];
    for (const [holdId, h] of this.liveHolds) {
      if (h.expiresMs > due) continue;
      renewing.push(this.submit(h.accountId, { kind: "renew", holdId, ttlMs }));
    }
    const renewed = await Promise.all(renewing);
    return renewed.filter((r) => r !== null).length;
  }

  /** The entries at `keys`, from the account's cache where present, else read (and cached). */
  async #read(accountId: string, keys: Deno.KvKey[]): Promise<Deno.KvEntryMaybe<unknown>[]> {
    const now = Date.now();
    let cache = this.#cache.get(accountId);
    if (!cache) {
      cache = { entries: new Map(), used: now };
      this.#cache.set(accountId, cache);
    }
    cache.used = now;
    const out: (Deno.KvEntryMaybe<unknown> | undefined)[] = keys.map((k) =>
      cache!.entries.get(keyString(k))
    );
    const missing: number[] = [];
    out.forEach((e, i) => e === undefined && missing.push(i));
    if (missing.length) {
      const read = await getAll<unknown>(this.#kv, missing.map((i) => keys[i]));
      missing.forEach((idx, j) => {
        out[idx] = read[j];
        cache!.entries.set(keyString(keys[idx]), read[j]);
      });
    }
    return out as Deno.KvEntryMaybe<unknown>[];
  }

  /** Drops the caches of accounts idle for a while: memory stays bounded, stale state re-read. */
  #evictIdle() {
    const now = Date.now();
    if (now - this.#lastEviction < CACHE_SWEEP_MS) return;
    this.#lastEviction = now;
    for (const [id, c] of this.#cache) {
      if (now - c.used > CACHE_IDLE_MS && !this.#boxes.has(id)) this.#cache.delete(id);
    }
  }

  /** Resolves when every mailbox is empty. */
  idle(): Promise<void> {
    if (this.#boxes.size === 0 && this.#pumps === 0) return Promise.resolve();
    return new Promise((r) => this.#idle.push(r));
  }

  /**
   * The committer: while operations wait, folds the next batch of as many accounts as fit into one
   * atomic and commits it. An account joins an atomic with one batch at most, and its next batch
   * waits for that commit, so each account's operations apply in order.
   */
  async #pump() {
    for (;;) {
      const parts = this.#takeParts();
      // Nothing to take, or only accounts the other committer holds: it takes them next.
      if (parts.length === 0) break;
      for (const p of parts) this.#busy.add(p.accountId);
      await this.#commitParts(parts);
      for (const { accountId, box } of parts) {
        this.#busy.delete(accountId);
        if (box.queue.length === 0) this.#boxes.delete(accountId);
      }
    }
    this.#pumps--;
    if (this.#boxes.size === 0 && this.#pumps === 0) {
      for (const r of this.#idle.splice(0)) r();
    }
  }

  /** Takes the next batch of each ready account, in turn, while the atomic's limits allow. */
  #takeParts(): Part[] {
    const room: Room = {
      checks: MAX_CHECKS,
      mutations: MAX_MUTATIONS - 1, // the queue message, if any
      keyBytes: MAX_KEY_BYTES,
      bytes: MAX_BYTES - 64 * 1024, // the queue message's ids
    };
    const parts: Part[] = [];
    for (const accountId of this.#ready) {
      if (this.#busy.has(accountId)) continue;
      const box = this.#boxes.get(accountId)!;
      const n = fitBatch(accountId, box.queue, room, parts.length === 0);
      if (n === 0) break;
      this.#ready.delete(accountId);
      parts.push({ accountId, box, batch: box.queue.splice(0, n) });
    }
    return parts;
  }

  /** Commits the parts; never throws: every operation is resolved or rejected. */
  async #commitParts(parts: Part[]): Promise<void> {
    try {
      // Many accounts' atomic fails when any of them was written elsewhere: after a few tries,
      // each account alone, so one contended account does not hold back the others.
      if (await this.#commitWithRetry(parts, parts.length > 1 ? 3 : MAX_ATTEMPTS)) return;
      if (parts.length > 1) {
        for (const p of parts) await this.#commitParts([p]);
        return;
      }
      throw new Error("balance contention did not resolve");
    } catch (err) {
      if (parts.length > 1) {
        // One account's bad operation must not fail the other accounts: each alone.
        for (const p of parts) await this.#commitParts([p]);
      } else if (parts[0].batch.length > 1) {
        // Nor its neighbours in the account's batch: one by one.
        for (const op of parts[0].batch) await this.#commitParts([{ ...parts[0], batch: [op] }]);
      } else parts[0].batch[0].reject(err);
    } finally {
      for (const { accountId, box } of parts) if (box.queue.length) this.#ready.add(accountId);
    }
  }

  /** Commits the parts, deciding again after each conflict; false when `attempts` all conflicted. */
  async #commitWithRetry(parts: Part[], attempts: number): Promise<boolean> {
    for (let attempt = 0; attempt < attempts; attempt++) {
      let done = false;
      try {
        done = await this.#attempt(parts);
      } catch (e) {
        // Another process holding the local KV file's write lock is contention too: retry.
        if (!isLocked(e)) throw e;
      }
      if (done) return true;
      // Another process committed first: back off briefly, then decide again on fresh state.
      await sleep(Math.random() * Math.min(50, 1 + attempt * 2));
    }
    return false;
  }

  /** Decides every part on its (cached or read) entries and commits them as one atomic. */
  async #attempt(parts: Part[]): Promise<boolean> {
    const now = this.#now();
    const atomic = this.#kv.atomic();
    const entries = await Promise.all(
      parts.map((p) => this.#read(p.accountId, readsOf(p.accountId, p.batch).keys)),
    );
    const decided = parts.map((p, i) =>
      this.#decide(p.accountId, p.batch, entries[i], atomic, now)
    );
    const eventIds = decided.flatMap((d) => d.eventIds);
    if (eventIds.length && this.#opts.delivery === "queue") atomic.enqueue({ outbox: eventIds });
    let res: Deno.KvCommitResult | Deno.KvCommitError;
    try {
      res = await atomic.commit();
    } catch (e) {
      for (const p of parts) this.#cache.delete(p.accountId);
      throw e;
    }
    if (!res.ok) {
      // Another process (or a key change) wrote first: the accounts are decided again on fresh
      // reads. Which check failed is not reported, so every account of the atomic is re-read.
      for (const p of parts) this.#cache.delete(p.accountId);
      return false;
    }
    for (const d of decided) d.remember(res.versionstamp);
    parts.forEach((p, i) => p.batch.forEach((q, j) => q.resolve(decided[i].results[j])));
    if (eventIds.length && this.#opts.onCommitted) {
      const stamp = res.versionstamp;
      const events = decided.flatMap((d) =>
        d.events.map((value) => ({ key: outboxKey(value.id), value, versionstamp: stamp }))
      );
      this.#opts.onCommitted(eventIds, events);
    }
    return true;
  }

  /**
   * Decides one account's batch on its entries: adds its checks and writes to `atomic`, and returns
   * the results with what to remember once the atomic has committed.
   */
  #decide(
    accountId: string,
    batch: Pending[],
    entries: Deno.KvEntryMaybe<unknown>[],
    atomic: Deno.AtomicOperation,
    now: number,
  ) {
    const { keyList, holdList, onceList } = readsOf(accountId, batch);
    for (const e of entries) atomic.check(e);

    const balEntry = entries[0] as Deno.KvEntryMaybe<BalanceState>;
    let bal: BalanceState = { ...(balEntry.value ?? EMPTY_BALANCE) };
    const keys = new Map<string, ApiKey | null>();
    const spends = new Map<string, KeySpend>();
    keyList.forEach((id, i) => {
      const key = entries[1 + i].value as ApiKey | null;
      keys.set(id, key);
      const s = (entries[1 + keyList.length + i].value as KeySpend | null) ?? EMPTY_KEY_SPEND;
      spends.set(id, currentSpend(s, key?.limit_reset ?? null, now));
    });
    const holds = new Map<string, Hold | null>();
    holdList.forEach((id, i) => {
      holds.set(id, entries[1 + 2 * keyList.length + i].value as Hold | null);
    });
    const onceStored = new Map<string, unknown>();
    onceList.forEach((k, i) => {
      const v = entries[1 + 2 * keyList.length + holdList.length + i].value;
      if (v !== null) onceStored.set(keyString(k), v);
    });

    const touchedSpends = new Set<string>();
    const newHolds: Hold[] = [];
    const renewed = new Set<string>();
    const results: unknown[] = [];
    const eventIds: string[] = [];
    const events: UsageEvent[] = [];
    const nowIso = new Date(now).toISOString();
    const unhold = (holdId: string) => {
      // Gone already (expired by a sweep): no longer this process's to protect or renew either.
      this.liveHolds.delete(holdId);
      const h = holds.get(holdId);
      if (!h) return;
      holds.set(holdId, null);
      bal.reserved -= h.amount;
      const s = spends.get(h.key_id);
      if (s) {
        spends.set(h.key_id, { ...s, reserved: s.reserved - h.amount });
        touchedSpends.add(h.key_id);
      }
      atomic.delete(holdKey(accountId, holdId));
    };
    const record = (event: UsageEvent) => {
      atomic.set(outboxKey(event.id), event);
      eventIds.push(event.id);
      events.push(event);
    };

    for (const { op } of batch) {
      switch (op.kind) {
        case "reserve": {
          const check = checkKey(keys.get(op.keyId) ?? null, now);
          if (!check.ok) {
            results.push({ ok: false, code: check.code });
            break;
          }
          const key = check.key;
          // The rate window lives in the key's spend record, checked and written in this atomic,
          // so `rate_limit_rpm` holds across processes.
          const window = key.rate_limit_rpm === null
            ? null
            : rateWindow(spends.get(op.keyId)!.rate, now);
          if (window && key.rate_limit_rpm !== null) {
            const wait = rateLimitWait(window, key.rate_limit_rpm, now);
            if (wait > 0) {
              results.push({
                ok: false,
                code: "rate_limited",
                rpm: key.rate_limit_rpm,
                retryAfterSec: wait,
              });
              break;
            }
          }
          const s = spends.get(op.keyId)!;
          const short = moneyRefusal(key, s, bal, op.amount);
          if (short) {
            results.push(short);
            break;
          }
          bal.reserved += op.amount;
          spends.set(op.keyId, {
            ...s,
            reserved: s.reserved + op.amount,
            ...(window ? { rate: countRequest(window, now) } : {}),
          });
          touchedSpends.add(op.keyId);
          const hold: Hold = {
            id: op.holdId,
            key_id: op.keyId,
            amount: op.amount,
            created_ms: now,
            expires_ms: now + op.ttlMs,
          };
          atomic.set(holdKey(accountId, op.holdId), hold);
          newHolds.push(hold);
          results.push({ ok: true });
          break;
        }
        case "settle": {
          unhold(op.holdId);
          // A balance never goes below zero, nor eats into other requests' holds: a cost beyond
          // that (an upstream reporting more usage than the worst case held) is not charged.
          const left = bal.balance - bal.reserved;
          const cost = op.cost <= left ? op.cost : left > 0n ? left : 0n;
          bal = { ...bal, balance: bal.balance - cost, total_used: bal.total_used + cost };
          const s = spends.get(op.keyId)!;
          spends.set(op.keyId, {
            ...s,
            spend: s.spend + cost,
            period_spend: s.period_spend + cost,
            usage_today: s.usage_today + cost,
            usage_month: s.usage_month + cost,
            last_used_at: nowIso,
          });
          touchedSpends.add(op.keyId);
          record({ ...op.event, cost, balance_after: bal.balance });
          results.push({ balanceAfter: bal.balance, charged: cost });
          break;
        }
        case "release":
          unhold(op.holdId);
          if (op.event) record(op.event);
          results.push(undefined);
          break;
        case "expire": {
          const h = holds.get(op.holdId);
          if (h && h.expires_ms <= now) unhold(op.holdId);
          results.push(undefined);
          break;
        }
        case "renew": {
          const h = holds.get(op.holdId);
          if (!h || !this.liveHolds.has(op.holdId)) {
            // Its request settled, or a sweep released it meanwhile: nothing left to keep.
            this.liveHolds.delete(op.holdId);
            results.push(null);
            break;
          }
          const expires = now + op.ttlMs;
          if (expires > h.expires_ms) {
            const hold = { ...h, expires_ms: expires };
            holds.set(op.holdId, hold);
            atomic.set(holdKey(accountId, op.holdId), hold);
            renewed.add(op.holdId);
          }
          results.push(holds.get(op.holdId)!.expires_ms);
          break;
        }
        case "record":
          record(op.event);
          results.push(undefined);
          break;
        case "credit": {
          const ks = op.once ? keyString(op.once.key) : null;
          if (ks !== null && onceStored.has(ks)) {
            results.push({ replayed: true, stored: onceStored.get(ks) });
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
            ...(op.receipt_url ? { receipt_url: op.receipt_url } : {}),
          };
          atomic.set(ledgerKey(accountId, now, entry.id), entry);
          countLedger(atomic, accountId, op.amount);
          if (op.event) emitEvent(atomic, op.event(entry), this.#opts.delivery);
          if (op.once && ks !== null) {
            const stored = op.once.value(entry);
            atomic.set(op.once.key, stored, { expireIn: op.once.expireIn });
            onceStored.set(ks, stored);
          }
          results.push({ replayed: false, entry });
          break;
        }
      }
    }

    atomic.set(balanceKey(accountId), bal);
    for (const id of touchedSpends) atomic.set(keySpendKey(accountId, id), spends.get(id)!);
    const remember = (stamp: string) => {
      const cache = this.#cache.get(accountId);
      if (!cache) return;
      const keep = (key: Deno.KvKey, value: unknown) =>
        cache.entries.set(keyString(key), { key, value, versionstamp: stamp });
      keep(balanceKey(accountId), bal);
      for (const id of touchedSpends) keep(keySpendKey(accountId, id), spends.get(id)!);
      for (const [id, h] of holds) {
        if (h === null) cache.entries.delete(keyString(holdKey(accountId, id)));
        else if (renewed.has(id)) {
          keep(holdKey(accountId, id), h);
          const live = this.liveHolds.get(id);
          if (live) live.expiresMs = h.expires_ms;
        }
      }
      // Once-keys are read afresh each time: credits are rare.
      for (const k of onceList) cache.entries.delete(keyString(k));
      // This process's holds are usually settled here too: keep them, still checked on settle.
      for (const h of newHolds) {
        keep(holdKey(accountId, h.id), h);
        this.liveHolds.set(h.id, { accountId, expiresMs: h.expires_ms });
      }
    };
    return { results, eventIds, events, remember };
  }
}

/** Why `amount` cannot be held: the account's available balance, then the key's credit limit. */
function moneyRefusal(
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

/** The keys a batch reads and checks: balance, its keys and their spend, its holds, once-keys. */
function readsOf(accountId: string, batch: Pending[]) {
  const keyIds = new Set<string>();
  const holdIds = new Set<string>();
  const onceKeys = new Map<string, Deno.KvKey>();
  for (const { op } of batch) {
    if (op.kind === "reserve" || op.kind === "settle") keyIds.add(op.keyId);
    if (
      op.kind === "settle" || op.kind === "release" || op.kind === "expire" || op.kind === "renew"
    ) {
      holdIds.add(op.holdId);
    }
    if (op.kind === "credit" && op.once) onceKeys.set(keyString(op.once.key), op.once.key);
  }
  const keyList = [...keyIds];
  const holdList = [...holdIds];
  const onceList = [...onceKeys.values()];
  const keys: Deno.KvKey[] = [
    balanceKey(accountId),
    ...keyList.map((id) => apiKeyKey(id)),
    ...keyList.map((id) => keySpendKey(accountId, id)),
    ...holdList.map((id) => holdKey(accountId, id)),
    ...onceList,
  ];
  return { keys, keyList, holdList, onceList };
}

/** What is left of one atomic's limits. */
interface Room {
  checks: number;
  mutations: number;
  keyBytes: number;
  bytes: number;
}

// Upper bounds of stored sizes, beyond their keys: a balance, a key's spend with its rate window,
// a hold, a ledger entry without its description, a once-value.
const BALANCE_BYTES = 256;
const SPEND_BYTES = 2048;
const HOLD_BYTES = 256;
const LEDGER_BYTES = 512;
const ONCE_BYTES = 4096;

/**
 * How many operations at the head of an account's queue fit in the room left (and takes it): the
 * longest prefix, at most MAX_OPS. The first part of an atomic takes at least one operation.
 */
function fitBatch(accountId: string, queue: Pending[], room: Room, first: boolean): number {
  const accountBytes = accountId.length * 3;
  // The balance: checked and set.
  let checks = 1, mutations = 1;
  let kbytes = 2 * (12 + accountBytes), bytes = BALANCE_BYTES;
  const keys = new Set<string>();
  let n = 0;
  for (; n < queue.length && n < MAX_OPS; n++) {
    const op = queue[n].op;
    let c = 0, m = 0, kb = 0, b = 0;
    if ((op.kind === "reserve" || op.kind === "settle") && !keys.has(op.keyId)) {
      // The key is checked; its spend checked and set.
      const k = 3 * (16 + op.keyId.length * 3 + accountBytes);
      c += 2;
      m += 1;
      kb += k;
      b += SPEND_BYTES;
    }
    const holdKeyBytes = "holdId" in op ? 12 + accountBytes + op.holdId.length * 3 : 0;
    switch (op.kind) {
      case "reserve":
        m += 1;
        kb += holdKeyBytes;
        b += HOLD_BYTES;
        break;
      case "settle":
      case "release":
      case "expire":
        c += 1;
        m += 1;
        kb += 2 * holdKeyBytes;
        break;
      case "renew":
        c += 1;
        m += 1;
        kb += 2 * holdKeyBytes;
        b += HOLD_BYTES;
        break;
      case "credit":
        // The ledger row and its account's total.
        m += 2;
        kb += 2 * (64 + accountBytes);
        b += LEDGER_BYTES + op.description.length * 3 + (op.reference?.length ?? 0) * 3 +
          (op.receipt_url?.length ?? 0) * 3;
        if (op.event) {
          // Its outbox entry and its queue message.
          m += 2;
          kb += 96;
          b += 2 * MAX_EVENT_BYTES;
        }
        if (op.once) {
          c += 1;
          m += 1;
          kb += 2 * keyBytes(op.once.key);
          b += ONCE_BYTES;
        }
        break;
    }
    const event = op.kind === "settle" || op.kind === "record"
      ? op.event
      : op.kind === "release"
      ? op.event
      : null;
    if (event) {
      m += 1;
      kb += 16 + event.id.length * 3;
      b += approxBytes(event);
    }
    b += kb;
    const over = checks + c > room.checks || mutations + m > room.mutations ||
      kbytes + kb > room.keyBytes || bytes + b > room.bytes;
    if (over && !(first && n === 0)) break;
    if (op.kind === "reserve" || op.kind === "settle") keys.add(op.keyId);
    checks += c;
    mutations += m;
    kbytes += kb;
    bytes += b;
  }
  if (n === 0) return 0;
  room.checks -= checks;
  room.mutations -= mutations;
  room.keyBytes -= kbytes;
  room.bytes -= bytes;
  return n;
}

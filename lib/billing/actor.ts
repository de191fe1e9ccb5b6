import { apiKeyKey, balanceKey, keySpendKey, outboxKey } from "../kv/schema.ts";
import { getAll, isLocked, keyString, sleep } from "../kv/util.ts";
import { AtomicRoom } from "../kv/limits.ts";
import { checkKey } from "../auth/keys.ts";
import { currentSpend } from "./periods.ts";
import {
  type ApiKey,
  type BalanceState,
  EMPTY_KEY_SPEND,
  type KeySpend,
  type UsageEvent,
} from "./types.ts";
import type { Op, RenewResult, ResultOf } from "./ops.ts";
import { decide, type Decision, moneyRefusal, readKeys, stateOf } from "./decide.ts";
import { fitBatch } from "./footprint.ts";

/** A hold reserved by a request alive in this process. */
export interface LiveHold {
  accountId: string;
  /** Its expiry as this process last committed it. */
  expiresMs: number;
}

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

/** What the actors counted since start (see `AccountActors.stats`). */
export interface ActorStats {
  /** Atomics committed. */
  commits: number;
  /** Atomics that failed a check (another process wrote first) or met the KV file's lock. */
  conflicts: number;
  /** Committed atomics that wrote an account's shared balance record. */
  balance_commits: number;
}

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
  /** Plain counters since start, for `GET /v1/admin/stats` and the benchmarks. */
  readonly stats: ActorStats = { commits: 0, conflicts: 0, balance_commits: 0 };
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

  /** The account's cache, with every entry at `keys` in it (read where missing). */
  async #read(accountId: string, keys: Deno.KvKey[]): Promise<AccountCache> {
    const now = Date.now();
    let cache = this.#cache.get(accountId);
    if (!cache) {
      cache = { entries: new Map(), used: now };
      this.#cache.set(accountId, cache);
    }
    cache.used = now;
    const missing = keys.filter((k) => !cache.entries.has(keyString(k)));
    if (missing.length) {
      const read = await getAll<unknown>(this.#kv, missing);
      missing.forEach((k, i) => cache.entries.set(keyString(k), read[i]));
    }
    return cache;
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
    // Room for the queue message and its ids, if any.
    const room = new AtomicRoom({ mutations: 1, bytes: 64 * 1024 });
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
        this.stats.conflicts++;
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
    const decided = await Promise.all(parts.map(async (p) => {
      const ops = p.batch.map((q) => q.op);
      const cache = await this.#read(p.accountId, readKeys(p.accountId, ops));
      const state = stateOf(p.accountId, ops, (k) => cache.entries.get(keyString(k))!);
      const d = decide(state, ops, { now, isLive: (id) => this.liveHolds.has(id) });
      // Decided no longer served: even if the commit fails, this process stops renewing them and
      // its sweeper may release them once expired.
      for (const id of d.unserved) this.liveHolds.delete(id);
      return d;
    }));
    for (const d of decided) {
      for (const e of d.checks) atomic.check(e);
      for (const w of d.sets) atomic.set(w.key, w.value, { expireIn: w.expireIn });
      for (const k of d.deletes) atomic.delete(k);
      for (const e of d.events) atomic.set(outboxKey(e.id), e);
    }
    const eventIds = decided.flatMap((d) => d.events.map((e) => e.id));
    if (eventIds.length && this.#opts.delivery === "queue") atomic.enqueue({ outbox: eventIds });
    let res: Deno.KvCommitResult | Deno.KvCommitError;
    try {
      res = await atomic.commit();
    } catch (e) {
      for (const p of parts) this.#cache.delete(p.accountId);
      throw e;
    }
    if (!res.ok) {
      this.stats.conflicts++;
      // Another process (or a key change) wrote first: the accounts are decided again on fresh
      // reads. Which check failed is not reported, so every account of the atomic is re-read.
      for (const p of parts) this.#cache.delete(p.accountId);
      return false;
    }
    this.stats.commits++;
    if (decided.some((d) => d.sets.some((w) => w.key[0] === "balance"))) {
      this.stats.balance_commits++;
    }
    parts.forEach((p, i) => this.#remember(p.accountId, decided[i], res.versionstamp));
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

  /** Keeps what a committed decision wrote as the account's cached state; tracks live holds. */
  #remember(accountId: string, d: Decision, stamp: string) {
    for (const h of d.reserved) this.liveHolds.set(h.id, { accountId, expiresMs: h.expires_ms });
    for (const h of d.renewed) {
      const live = this.liveHolds.get(h.id);
      if (live) live.expiresMs = h.expires_ms;
    }
    const cache = this.#cache.get(accountId);
    if (!cache) return;
    for (const w of d.sets) {
      const ks = keyString(w.key);
      // Not state (ledger rows, once-keys): once-keys are read afresh each time, credits are rare.
      if (w.state) cache.entries.set(ks, { key: w.key, value: w.value, versionstamp: stamp });
      else cache.entries.delete(ks);
    }
    for (const k of d.deletes) cache.entries.delete(keyString(k));
  }
}

import { outboxKey } from "../kv/schema.ts";
import { getAll, isLocked, keyString, sleep } from "../kv/util.ts";
import { AtomicRoom } from "../kv/limits.ts";
import { apiKeyKey } from "../kv/schema.ts";
import { newId } from "../ids.ts";
import type { ApiKey, BalanceState, UsageEvent } from "./types.ts";
import type { Op, RenewResult, ReserveResult, ResultOf } from "./ops.ts";
import {
  decide,
  type Decision,
  type LeaseCounts,
  type LocalKeys,
  readKeys,
  stateOf,
} from "./decide.ts";
import { fitBatch } from "./footprint.ts";
import { LocalLeases } from "./local_lease.ts";

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
  /** Balance leases (see lib/billing/leasing.ts); absent: every reserve is a shared hold. */
  leases?: LeaseOptions;
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

// A lease's holds are written to it (what customers see as reserved) this long after they were
// granted, if no commit of the lease has written them by then: a short request writes nothing.
const SHOW_HELD_MS = 100;

/** What the actors counted since start (see `AccountActors.stats`). */
export interface ActorStats extends LeaseCounts {
  /** Atomics committed. */
  commits: number;
  /** Atomics that failed a check (another process wrote first) or met the KV file's lock. */
  conflicts: number;
  /** Committed atomics that wrote an account's shared balance record. */
  balance_commits: number;
  /** Reserves granted from this process's lease with no KV round trip. */
  lease_reserves: number;
  /** Reserves decided by a commit (a lease taken or topped up, or a shared hold). */
  committed_reserves: number;
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
  readonly stats: ActorStats = {
    commits: 0,
    conflicts: 0,
    balance_commits: 0,
    lease_reserves: 0,
    committed_reserves: 0,
    takes: 0,
    topups: 0,
    shrinks: 0,
    returns: 0,
    reclaims: 0,
    recalls: 0,
    shared_reserves: 0,
  };
  /** This process's id: the owner of its leases. */
  readonly owner = newId("proc");
  /** This process's leases, and the holds granted from them. */
  readonly leases = new LocalLeases();
  /** No new lease is taken once closing (the process shuts down and returns them). */
  closing = false;
  #showHeld = new Map<string, ReturnType<typeof setTimeout>>();

  constructor(kv: Deno.Kv, opts: ActorOptions) {
    this.#kv = kv;
    this.#opts = opts;
  }

  get leaseOptions(): LeaseOptions | undefined {
    return this.#opts.leases;
  }

  now(): number {
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
      box.queue.push({ op, resolve: resolve as (v: unknown) => void, reject });
      this.#evictIdle();
      this.#ready.add(accountId);
      if (this.#pumps < MAX_IN_FLIGHT) {
        this.#pumps++;
        // Let operations submitted in the same tick join the first atomic.
        queueMicrotask(() => this.#pump());
      }
    });
  }

  /**
   * Holds `amount` for a request of `key` until it is settled or released: from this process's
   * lease on the account when it covers it (no KV round trip: the provider may be called at
   * once), else by a commit (a lease taken or topped up, or a shared hold when the account is
   * near exhaustion). A refusal while other processes' leases hold credit waits for them to give
   * it back (`recallWaitMs`) and is tried again before it is final.
   */
  async reserve(
    accountId: string,
    key: ApiKey,
    holdId: string,
    amount: bigint,
    ttlMs: number,
  ): Promise<ReserveResult> {
    const opts = this.#opts.leases;
    const now = this.now();
    if (opts) {
      this.leases.note(accountId, amount, now);
      if (
        !this.closing && this.leases.tryReserve(accountId, key, holdId, amount, now, opts.ttlMs / 2)
      ) {
        this.stats.lease_reserves++;
        this.#showHeldLater(accountId, now);
        return { ok: true };
      }
    }
    this.stats.committed_reserves++;
    // Real time, not the injected clock: this is a wait.
    const deadline = Date.now() + (opts?.recallWaitMs ?? 0);
    for (;;) {
      const r = await this.submit(accountId, {
        kind: "reserve",
        keyId: key.id,
        holdId,
        amount,
        ttlMs,
      });
      if (!r.recall || Date.now() >= deadline) {
        const { recall: _, ...result } = r;
        return result as ReserveResult;
      }
      await sleep(opts!.tickMs);
    }
  }

  /** Writes the lease's holds soon unless a commit of the lease writes them first. */
  #showHeldLater(accountId: string, since: number) {
    if (this.#showHeld.has(accountId)) return;
    this.#showHeld.set(
      accountId,
      setTimeout(() => {
        this.#showHeld.delete(accountId);
        const st = this.leases.status(accountId);
        if (!st || st.holds === 0 || st.writtenMs >= since) return;
        this.submit(accountId, { kind: "lease", action: "sync" }).catch(() => {});
      }, SHOW_HELD_MS),
    );
  }

  /**
   * A hold whose request ended without settling or releasing it: a lease's hold is dropped at
   * once (nothing charged), a shared one is no longer renewed, so the sweeper releases it.
   * False when the hold was not this process's to serve any more.
   */
  abandon(accountId: string, holdId: string): boolean {
    return this.leases.abandon(accountId, holdId) || this.liveHolds.delete(holdId);
  }

  /** Returns every lease of this process (shutdown); no new one is taken afterwards. */
  async returnLeases(): Promise<void> {
    this.closing = true;
    for (const t of this.#showHeld.values()) clearTimeout(t);
    this.#showHeld.clear();
    await Promise.all(
      [...this.leases.accounts()].map((a) => this.submit(a, { kind: "lease", action: "return" })),
    );
  }

  /**
   * Forgets the cached entry of a key changed in this process (limits, disabling, revocation): the
   * next reserve that commits reads it afresh.
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
    const due = this.now() + ttlMs / 2;
    const renewing: Promise<RenewResult>[] = [];
    for (const [holdId, h] of this.liveHolds) {
      if (h.expiresMs > due) continue;
      renewing.push(this.submit(h.accountId, { kind: "renew", holdId, ttlMs }));
    }
    const renewed = await Promise.all(renewing);
    return renewed.filter((r) => r !== null).length;
  }

  /** Keeps `e` in the account's cache if it is newer than the entry cached (a poll's read). */
  refresh(accountId: string, e: Deno.KvEntryMaybe<unknown>) {
    const cache = this.#cache.get(accountId);
    if (!cache || e.versionstamp === null) return;
    const ks = keyString(e.key);
    const had = cache.entries.get(ks);
    if (had && had.versionstamp !== null && had.versionstamp >= e.versionstamp) return;
    cache.entries.set(ks, e);
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
      const n = fitBatch(
        accountId,
        box.queue,
        room,
        parts.length === 0,
        this.leases.view(accountId)?.keys.keys() ?? null,
      );
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
      } else {
        const { op } = parts[0].batch[0];
        // A settle or release that cannot commit ends its hold here, as a shared hold's ends
        // (not renewed, released by the sweeper): a lease's hold is dropped, nothing charged.
        if (op.kind === "settle" || op.kind === "release") {
          this.leases.abandon(parts[0].accountId, op.holdId);
        }
        parts[0].batch[0].reject(err);
      }
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

  /** What this process's lease on the account means for its reads. */
  #localKeys(accountId: string): LocalKeys {
    const lease = this.leases.view(accountId);
    return {
      leaseId: lease?.id ?? null,
      leaseKeyIds: lease ? [...lease.keys.keys()] : [],
      isLocalHold: (id) => !!lease?.holds.has(id) || this.leases.orphans.has(id),
    };
  }

  /** Decides one account's batch on its (cached or read) entries and this process's lease. */
  #decide(p: Part, cache: AccountCache, now: number): Decision {
    const ops = p.batch.map((q) => q.op);
    const local = this.#localKeys(p.accountId);
    const state = stateOf(p.accountId, ops, local, (k) => cache.entries.get(keyString(k))!);
    const opts = this.#opts.leases;
    const leases = (state.balance.value as BalanceState | null)?.leases ?? 0;
    const lease = this.leases.view(p.accountId);
    const d = decide(state, ops, { lease, orphans: this.leases.orphans }, {
      now,
      isLive: (id) => this.liveHolds.has(id),
      owner: this.owner,
      policy: opts && !this.closing ? this.leases.policy(p.accountId, leases, now) : null,
      newLeaseId: newId("lease", now),
      leaseTtlMs: opts?.ttlMs ?? 0,
      recallMs: opts?.recallMs ?? 0,
    });
    // Decided no longer served: even if the commit fails, this process stops renewing them and
    // its sweeper may release them once expired.
    for (const id of d.unserved) this.liveHolds.delete(id);
    // Before the commit, in the same step as the decision: no local reserve meanwhile is granted
    // on credit the decision gives away, and the holds it granted are counted.
    if (d.lease) this.leases.before(p.accountId, d.lease, now);
    return d;
  }

  /** Decides every part and commits them as one atomic (none when nothing is to be written). */
  async #attempt(parts: Part[]): Promise<boolean> {
    const decided: Decision[] = [];
    const settle = (ok: boolean) =>
      decided.forEach((d, i) =>
        d.lease && this.leases.after(parts[i].accountId, d.lease, ok, this.now())
      );
    let res: Deno.KvCommitResult | Deno.KvCommitError;
    try {
      const caches = await Promise.all(
        parts.map((p) =>
          this.#read(
            p.accountId,
            readKeys(p.accountId, p.batch.map((q) => q.op), this.#localKeys(p.accountId)),
          )
        ),
      );
      // Decided together, with no await between: the local lease state each one saw still holds.
      parts.forEach((p, i) => decided.push(this.#decide(p, caches[i], this.now())));
      const atomic = this.#kv.atomic();
      let empty = true;
      for (const d of decided) {
        for (const e of d.checks) atomic.check(e);
        for (const w of d.sets) atomic.set(w.key, w.value, { expireIn: w.expireIn });
        for (const k of d.deletes) atomic.delete(k);
        for (const e of d.events) atomic.set(outboxKey(e.id), e);
        empty &&= !d.checks.length && !d.sets.length && !d.deletes.length && !d.events.length;
      }
      const eventIds = decided.flatMap((d) => d.events.map((e) => e.id));
      if (eventIds.length && this.#opts.delivery === "queue") atomic.enqueue({ outbox: eventIds });
      res = empty ? { ok: true, versionstamp: "" } : await atomic.commit();
    } catch (e) {
      settle(false);
      for (const p of parts) this.#cache.delete(p.accountId);
      throw e;
    }
    if (!res.ok) {
      settle(false);
      this.stats.conflicts++;
      // Another process (or a key change) wrote first: the accounts are decided again on fresh
      // reads. Which check failed is not reported, so every account of the atomic is re-read.
      for (const p of parts) this.#cache.delete(p.accountId);
      return false;
    }
    settle(true);
    if (res.versionstamp) {
      this.stats.commits++;
      if (decided.some((d) => d.sets.some((w) => w.key.length === 2 && w.key[0] === "balance"))) {
        this.stats.balance_commits++;
      }
    }
    for (const d of decided) {
      for (const [k, n] of Object.entries(d.counts)) this.stats[k as keyof LeaseCounts] += n;
    }
    parts.forEach((p, i) => this.#remember(p.accountId, decided[i], res.versionstamp));
    parts.forEach((p, i) => p.batch.forEach((q, j) => q.resolve(decided[i].results[j])));
    const events = decided.flatMap((d) =>
      d.events.map((value) => ({ key: outboxKey(value.id), value, versionstamp: res.versionstamp }))
    );
    if (events.length && this.#opts.onCommitted) {
      this.#opts.onCommitted(events.map((e) => e.value.id), events);
    }
    return true;
  }

  /** Keeps what a committed decision wrote as the account's cached state; tracks live holds. */
  #remember(accountId: string, d: Decision, stamp: string) {
    for (const id of d.orphansDone) this.leases.orphans.delete(id);
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

/**
 * The account actors: one per account in this process, a serial mailbox whose waiting operations
 * are decided together (decide.ts) and committed in one check-and-set atomic (mailbox.ts), on the
 * account's entries as last committed or read (account_cache.ts). Across processes, the checks
 * make a conflicting commit fail; the batch is then decided again on fresh reads. Reserves are
 * granted from this process's balance lease when it covers them (local_lease.ts), with no commit.
 */
import { apiKeyKey, outboxKey } from "../kv/schema.ts";
import { keyString, sleep } from "../kv/util.ts";
import { newId } from "../ids.ts";
import { emitEvent } from "../webhooks/events.ts";
import type { ApiKey, BalanceState, UsageEvent } from "./types.ts";
import type { Op, RenewResult, ReserveResult, ResultOf } from "./ops.ts";
import {
  type BalanceMove,
  decide,
  type Decision,
  type LocalKeys,
  readKeys,
  stateOf,
} from "./decide.ts";
import { emptyLeaseCounts, type LeaseCounts } from "./batch.ts";
import { fitBatch } from "./footprint.ts";
import { type LeaseOptions, LocalLeases } from "./local_lease.ts";
import { Mailboxes, type Part } from "./mailbox.ts";
import { type AccountCache, AccountCaches } from "./account_cache.ts";

/** A hold reserved by a request alive in this process. */
export interface LiveHold {
  accountId: string;
  /** Its expiry as this process last committed it. */
  expiresMs: number;
}

export interface ActorOptions {
  /** `queue`: the committing atomic enqueues one message naming its events. */
  delivery: "queue" | "drainer";
  /**
   * Called after a commit with the outbox ids it wrote and the entries as committed (with their
   * versionstamp), so that recording them needs no read.
   */
  onCommitted?: (eventIds: string[], events: Deno.KvEntry<UsageEvent>[]) => void;
  /**
   * Called after a commit with what it tells of one account's balance and keys' spends as this
   * process knows them (`BalanceMove`: after each settlement, and after a write of the balance
   * record), in order; spend alerts and auto top-up watch them (lib/billing/spend_watch.ts). Must
   * not throw or block.
   */
  onMoved?: (accountId: string, moves: BalanceMove[]) => void;
  now?: () => number;
  /** Balance leases (see local_lease.ts, lease_ops.ts); absent: every reserve is a shared hold. */
  leases?: LeaseOptions;
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

export class AccountActors {
  #kv: Deno.Kv;
  #opts: ActorOptions;
  #boxes: Mailboxes;
  #cache: AccountCaches;
  /**
   * Holds reserved by requests alive in this process: the sweeper leaves them alone, and
   * `renewLive` keeps them from expiring for the other processes' sweeps.
   */
  readonly liveHolds = new Map<string, LiveHold>();
  /** Plain counters since start, for `GET /v1/admin/stats` and the benchmarks. */
  readonly stats: ActorStats = {
    commits: 0,
    conflicts: 0,
    balance_commits: 0,
    lease_reserves: 0,
    committed_reserves: 0,
    ...emptyLeaseCounts(),
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
    this.#cache = new AccountCaches(kv);
    this.#boxes = new Mailboxes({
      fit: (accountId, queue, room, first) =>
        fitBatch(accountId, queue, room, first, this.leases.view(accountId)?.keys.keys() ?? null),
      attempt: (parts) => this.#attempt(parts),
      failed: (accountId, op) => {
        // A settle or release that cannot commit ends its hold here, as a shared hold's ends
        // (not renewed, released by the sweeper): a lease's hold is dropped, nothing charged.
        if (op.kind === "settle" || op.kind === "release") {
          this.leases.abandon(accountId, op.holdId);
        }
      },
      conflicted: () => this.stats.conflicts++,
    });
  }

  get leaseOptions(): LeaseOptions | undefined {
    return this.#opts.leases;
  }

  now(): number {
    return this.#opts.now?.() ?? Date.now();
  }

  /** Queues an operation on the account's mailbox; resolves once its atomic has committed. */
  submit<O extends Op>(accountId: string, op: O): Promise<ResultOf<O>> {
    this.#cache.evictIdle((id) => this.#boxes.has(id));
    return this.#boxes.submit(accountId, op);
  }

  /** Resolves when every mailbox is empty. */
  idle(): Promise<void> {
    return this.#boxes.idle();
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
        this.#showHeldLater(accountId);
        return { ok: true };
      }
    }
    this.stats.committed_reserves++;
    // The monotonic clock, not the injected one: this is a wait.
    const deadline = performance.now() + (opts?.recallWaitMs ?? 0);
    for (;;) {
      const r = await this.submit(accountId, {
        kind: "reserve",
        keyId: key.id,
        holdId,
        amount,
        ttlMs,
      });
      if (!r.recall || performance.now() >= deadline) {
        const { recall: _, ...result } = r;
        return result as ReserveResult;
      }
      await sleep(opts!.tickMs);
    }
  }

  /**
   * Writes the lease's holds once the newest is SHOW_HELD_MS old, unless a commit of the lease has
   * written them by then.
   */
  #showHeldLater(accountId: string, delay = SHOW_HELD_MS) {
    if (this.#showHeld.has(accountId)) return;
    this.#showHeld.set(
      accountId,
      setTimeout(() => {
        this.#showHeld.delete(accountId);
        const st = this.leases.status(accountId);
        if (!st || st.holds === 0 || st.writtenMs >= st.lastUse) return;
        const age = this.now() - st.lastUse;
        if (age < SHOW_HELD_MS) this.#showHeldLater(accountId, SHOW_HELD_MS - age);
        else this.submit(accountId, { kind: "lease", action: "sync" }).catch(() => {});
      }, delay),
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
    this.#cache.forget(accountId, apiKeyKey(keyId));
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
    this.#cache.refresh(accountId, e);
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
          this.#cache.read(
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
        for (const t of d.sums) atomic.sum(t.key, t.value);
        for (const e of d.accountEvents) emitEvent(atomic, e, this.#opts.delivery);
        empty &&= !d.checks.length && !d.sets.length && !d.deletes.length && !d.events.length &&
          !d.sums.length && !d.accountEvents.length;
      }
      const eventIds = decided.flatMap((d) => d.events.map((e) => e.id));
      if (eventIds.length && this.#opts.delivery === "queue") atomic.enqueue({ outbox: eventIds });
      res = empty ? { ok: true, versionstamp: "" } : await atomic.commit();
    } catch (e) {
      settle(false);
      for (const p of parts) this.#cache.forget(p.accountId);
      throw e;
    }
    if (!res.ok) {
      settle(false);
      // Another process (or a key change) wrote first: the accounts are decided again on fresh
      // reads. Which check failed is not reported, so every account of the atomic is re-read.
      for (const p of parts) this.#cache.forget(p.accountId);
      return false;
    }
    settle(true);
    if (res.versionstamp) {
      this.stats.commits++;
      if (decided.some((d) => d.sets.some((w) => w.key[0] === "balance"))) {
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
    if (this.#opts.onMoved) {
      parts.forEach((p, i) =>
        decided[i].moves.length && this.#opts.onMoved!(p.accountId, decided[i].moves)
      );
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
    this.#cache.remember(accountId, d.sets, d.deletes, stamp);
  }
}

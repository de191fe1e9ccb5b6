import { accountIdOfKey, HOLD_PREFIX, LEASE_PREFIX } from "../kv/schema.ts";
import { listStaleOutbox, RecordError, recordEvents } from "../audit/recorder.ts";
import { compactPending } from "../usage/compact.ts";

// How often pending rollup entries of the accounts recorded here are folded into the counters: a
// fold adds an account's counters once however many entries it merges, so rarer folds cost less
// (bench/README.md, "Measurements behind constants"); usage queries fold first, so see every event.
const COMPACT_EVERY_MS = 3000;
import type { AccountActors } from "./actor.ts";
import type { Hold, Lease, UsageEvent } from "./types.ts";
import { tickLeases } from "./leasing.ts";
import { pause, sleep } from "../kv/util.ts";

// Under load the drainer gathers events before a pass, in steps of COALESCE_STEP_MS, until it
// has COALESCE_EVENTS, or COALESCE_PER_ACCOUNT per account among them, or COALESCE_MAX_MS passed,
// or a step brought no new event (the load stopped: the ledger catches up at once).
// Each account's rows sit together in the KV file, so a pass writing several rows per account
// dirties a page per account, not per row (bench/README.md, "Measurements behind constants").
const COALESCE_STEP_MS = 25;
const COALESCE_MAX_MS = 250;
const COALESCE_EVENTS = 4000;
const COALESCE_PER_ACCOUNT = 4;
// How long the queue listener leaves another process's events to that process's drainer.
const OTHERS_FIRST_MS = 1000;
// Ids handed to the drainer that the queue listener remembers, per generation.
const HANDED_KEPT = 50_000;

/** More background work beside the usage outbox (customer webhooks), on the same queue and timer. */
export interface BackgroundTask {
  /** Handles a queue message that is the task's; false for any other. */
  onMessage(msg: unknown): Promise<boolean>;
  /** Runs whatever is due; called every `sweepEveryMs`, never twice at once. */
  sweep(): Promise<void>;
}

export interface BackgroundOptions {
  delivery: "queue" | "drainer";
  tasks?: BackgroundTask[];
  /** How often the sweeper looks for stale outbox entries and expired holds. */
  sweepEveryMs?: number;
  /** An outbox entry older than this is recorded by the sweeper (its delivery was lost). */
  staleAfterMs?: number;
  /**
   * How long a hold lives unrenewed (HOLD_TTL_MS). Every quarter of it, the holds of requests this
   * process still serves are renewed (`AccountActors.renewLive`). Without it, none are.
   */
  holdTtlMs?: number;
  now?: () => number;
  onError?: (err: unknown) => void;
}

/**
 * Drives the recording of usage events and the expiry of holds. An in-process drainer records
 * each commit's events right after it, many accounts' events per atomic. With KV queues, a
 * listener also receives the message each commit enqueued: the at-least-once backstop, which
 * usually finds its events recorded already (one message per commit, delivered one by one, could
 * not keep up with a load spread over many accounts). In both modes a sweeper records entries
 * whose delivery was lost and releases holds whose request died with its process; `Deno.cron`
 * runs the same sweep where the process may sleep.
 */
export class Background {
  #kv: Deno.Kv;
  #actors: AccountActors;
  #opts:
    & Required<Omit<BackgroundOptions, "onError" | "holdTtlMs" | "tasks">>
    & Pick<BackgroundOptions, "onError" | "holdTtlMs">;
  #tasks: BackgroundTask[];
  #taskTimers: ReturnType<typeof setInterval>[] = [];
  /** Outbox ids to record, with their entries as committed when this process committed them. */
  #pending = new Map<string, Deno.KvEntry<UsageEvent> | undefined>();
  #draining: Promise<void> | null = null;
  /** Outbox ids handed to the drainer (two generations, bounded): the queue listener skips them. */
  #handed = new Set<string>();
  #handedBefore = new Set<string>();
  #timer: ReturnType<typeof setInterval> | undefined;
  #compactTimer: ReturnType<typeof setInterval> | undefined;
  #renewTimer: ReturnType<typeof setInterval> | undefined;
  #leaseTimer: ReturnType<typeof setInterval> | undefined;
  #listener: Promise<void> | null = null;
  #inFlight = new Set<Promise<unknown>>();
  #closed = false;
  /** Aborted by `close`: waits in progress end. */
  #closing = new AbortController();

  constructor(kv: Deno.Kv, actors: AccountActors, opts: BackgroundOptions) {
    this.#kv = kv;
    this.#actors = actors;
    // Defaults apply to options left undefined too: spreading `{sweepEveryMs: undefined}` over
    // them made setInterval sweep back to back, hundreds of times a second.
    this.#opts = {
      ...opts,
      sweepEveryMs: opts.sweepEveryMs ?? 5000,
      staleAfterMs: opts.staleAfterMs ?? 10_000,
      now: opts.now ?? Date.now,
    };
    this.#tasks = opts.tasks ?? [];
  }

  start(): this {
    if (this.#opts.delivery === "queue") {
      this.#listener = this.#kv.listenQueue(async (msg: unknown) => {
        // After close the KV is going away: the entries stay in the outbox for the next sweep.
        if (this.#closed) return;
        for (const task of this.#tasks) if (await this.#track(task.onMessage(msg))) return;
        const ids = (msg as { outbox?: unknown })?.outbox;
        if (!Array.isArray(ids)) return;
        // Events this process's drainer was handed need no second read here: if it fails, they
        // stay in the outbox for the sweeper, like those of a process that died.
        const rest = ids.filter((x) =>
          typeof x === "string" && !this.#handed.has(x) && !this.#handedBefore.has(x)
        );
        if (!rest.length) return;
        // Another process's events (the queue delivers to any listener of the KV): its drainer
        // records them within moments; recording them here at once would race it, conflict and
        // retry. This is the backstop for a process that died first.
        if (!await pause(OTHERS_FIRST_MS, this.#closing.signal)) return;
        await this.#track(recordEvents(this.#kv, rest));
      });
    }
    this.#timer = setInterval(() => {
      this.#track(this.sweep()).catch((e) => this.#opts.onError?.(e));
    }, this.#opts.sweepEveryMs);
    const ttl = this.#opts.holdTtlMs;
    if (ttl !== undefined) {
      this.#renewTimer = this.#every(
        Math.max(1, Math.floor(ttl / 4)),
        () => this.#actors.renewLive(ttl),
      );
    }
    this.#compactTimer = this.#every(COMPACT_EVERY_MS, () => compactPending(this.#kv));
    for (const task of this.#tasks) {
      this.#taskTimers.push(this.#every(this.#opts.sweepEveryMs, () => task.sweep()));
    }
    const leases = this.#actors.leaseOptions;
    if (leases) {
      this.#leaseTimer = this.#every(leases.tickMs, () => tickLeases(this.#kv, this.#actors));
    }
    return this;
  }

  /** Runs `work` every `ms`, skipping a tick while its previous run is still going. */
  #every(ms: number, work: () => Promise<unknown>): ReturnType<typeof setInterval> {
    let running = false;
    return setInterval(() => {
      if (running) return;
      running = true;
      this.#track(work()).catch((e) => this.#opts.onError?.(e)).finally(() => running = false);
    }, ms);
  }

  /** Called by the actors after each commit with the outbox ids it wrote. */
  notify = (ids: string[], events: Deno.KvEntry<UsageEvent>[] = []) => {
    if (this.#closed) return;
    for (const id of ids) {
      if (!this.#pending.has(id)) this.#pending.set(id, undefined);
      this.#handed.add(id);
    }
    if (this.#handed.size > HANDED_KEPT) {
      this.#handedBefore = this.#handed;
      this.#handed = new Set();
    }
    for (const e of events) this.#pending.set(e.value.id, e);
    this.#draining ??= this.#track(this.#drain());
  };

  async #drain() {
    // Yield once so commits landing in the same tick are drained together.
    await sleep(0);
    for (let pass = 0; this.#pending.size > 0; pass++) {
      // Under load (events arrived while the last pass recorded), wait a little for more: events
      // of one account then share their rollup sums and pages, and the atomics are fewer and fuller.
      if (pass > 0) {
        for (let waited = 0; waited < COALESCE_MAX_MS && !this.#enough();) {
          const before = this.#pending.size;
          await sleep(COALESCE_STEP_MS);
          waited += COALESCE_STEP_MS;
          if (this.#pending.size === before) break;
        }
      }
      const known = new Map<string, Deno.KvEntry<UsageEvent>>();
      const ids: string[] = [];
      for (const [id, entry] of this.#pending) {
        if (ids.length === 2000) break;
        ids.push(id);
        if (entry) known.set(id, entry);
      }
      for (const id of ids) this.#pending.delete(id);
      try {
        await recordEvents(this.#kv, ids, known);
      } catch (e) {
        // The entries stay in the outbox; the sweeper records them later.
        this.#opts.onError?.(e);
      }
    }
    this.#draining = null;
  }

  /** Whether the events waiting make a full pass (see COALESCE_PER_ACCOUNT). */
  #enough(): boolean {
    const n = this.#pending.size;
    if (n >= COALESCE_EVENTS || this.#closed) return true;
    const accounts = new Set<string>();
    for (const e of this.#pending.values()) accounts.add(e?.value.account_id ?? "");
    return n >= COALESCE_PER_ACCOUNT * accounts.size;
  }

  #track<T>(p: Promise<T>): Promise<T> {
    this.#inFlight.add(p);
    p.finally(() => this.#inFlight.delete(p)).catch(() => {});
    return p;
  }

  /**
   * Records stale outbox entries, releases expired holds not owned by this process, reclaims
   * other processes' expired leases (their debits folded in, the rest returned) and folds every
   * account's pending rollup entries (those of other processes too).
   */
  async sweep(
    opts: { staleAfterMs?: number } = {},
  ): Promise<{ recorded: number; expired: number; reclaimed: number }> {
    const now = this.#opts.now();
    let recorded = 0;
    for (;;) {
      const ids = await listStaleOutbox(
        this.#kv,
        now - (opts.staleAfterMs ?? this.#opts.staleAfterMs),
      );
      if (ids.length === 0) break;
      let n: number;
      try {
        n = await recordEvents(this.#kv, ids);
      } catch (e) {
        // Entries no atomic can record stay in the outbox, reported; they hold back neither the
        // other entries nor the holds below.
        if (!(e instanceof RecordError)) throw e;
        this.#opts.onError?.(e);
        n = e.recorded;
      }
      recorded += n;
      // A full page recorded nothing: what is left are such entries.
      if (ids.length < 1000 || n === 0) break;
    }
    let expired = 0;
    const expiring: Promise<unknown>[] = [];
    for await (const e of this.#kv.list<Hold>({ prefix: HOLD_PREFIX })) {
      const hold = e.value;
      if (hold.expires_ms > now || this.#actors.liveHolds.has(hold.id)) continue;
      expired++;
      expiring.push(
        this.#actors.submit(accountIdOfKey(e.key), {
          kind: "expire",
          keyId: hold.key_id,
          holdId: hold.id,
        }),
      );
    }
    let reclaimed = 0;
    for await (const e of this.#kv.list<Lease>({ prefix: LEASE_PREFIX })) {
      const lease = e.value;
      if (lease.expires_ms > now || lease.owner === this.#actors.owner) continue;
      expiring.push(
        this.#actors.submit(accountIdOfKey(e.key), {
          kind: "reclaim",
          leaseId: lease.id,
          keyIds: Object.keys(lease.keys),
        }).then((done) => done && reclaimed++),
      );
    }
    await Promise.all(expiring);
    await compactPending(this.#kv, { scan: true });
    return { recorded, expired, reclaimed };
  }

  /** Records everything in the outbox now (tests and shutdown). */
  async flush(): Promise<void> {
    await this.#actors.idle();
    while (this.#inFlight.size) await Promise.allSettled([...this.#inFlight]);
    await this.sweep({ staleAfterMs: -1 });
    // The other outboxes too (customer webhook events), whether or not their queue message came.
    for (const task of this.#tasks) await task.sweep();
  }

  /** Returns this process's leases, then stops: call it once no request is in flight. */
  async close(): Promise<void> {
    this.#closing.abort();
    clearInterval(this.#leaseTimer);
    await this.#actors.returnLeases();
    this.#closed = true;
    clearInterval(this.#timer);
    clearInterval(this.#compactTimer);
    clearInterval(this.#renewTimer);
    for (const t of this.#taskTimers) clearInterval(t);
    await this.#actors.idle();
    while (this.#inFlight.size) await Promise.allSettled([...this.#inFlight]);
  }

  /** The queue listener's promise: it settles once the KV is closed. */
  get listener(): Promise<void> | null {
    return this.#listener;
  }
}

/**
 * Watches what this process's commits move (the actor's `onMoved`) for threshold crossings, and
 * asks the gate of each crossing (auto top-up, `balance.low`, `key.limit_threshold`) to decide.
 *
 * The crossing rule: with balance leases each process knows the balance its own way (the balance
 * record as it last read it, less its own lease debits: a settlement's `balance_after`), so a
 * crossing is defined on what this process knows. The balance crosses a threshold when what this
 * process knows of it goes from at or above the threshold to below: at one of its settlements
 * (the balance known before it being the highest known since its previous settlement, so a drop
 * learned in between counts), or when it writes the balance record and so learns of other
 * processes' folded debits. Every lease is folded in the end (topped up, returned when idle,
 * reclaimed), so the last process to fold sees the true balance: a crossing is never missed,
 * only seen later by a process whose view lacked the others' debits. A key crosses a fraction of
 * its limit when the spend this process knows (its spend record plus its own lease delta) goes
 * from below to at or past it. A crossing only asks: each gate decides on KV afresh, in one
 * check-and-set, so processes that see the same crossing (or a stale one) act once.
 */
import type { SpendDeps } from "./spend_deps.ts";
import type { BackgroundTask } from "./background.ts";
import type { BalanceMove } from "./decide.ts";
import { alertsKey, autoTopupKey } from "../kv/schema.ts";
import type { AutoTopup } from "./topup/records.ts";
import { resumeStale, startTopUp } from "./topup/charge.ts";
import { alertBp, type AlertSettings, fireKeyAlert, fireLowBalance } from "./alerts.ts";

/** How long an account's thresholds are trusted before they are read again (a change elsewhere). */
export const SETTINGS_TTL_MS = 2000;
/** Accounts and keys remembered, each: past this the oldest are forgotten. */
const MAX_TRACKED = 50_000;
/** Moves kept for an account while its thresholds are read (one short read). */
const MAX_WAITING = 10_000;

/** An account's thresholds as this process last read them. */
interface Thresholds {
  /** Auto top-up's, when it is on. */
  topup: bigint | null;
  low: bigint | null;
  at: number;
}

/**
 * The thresholds among `thresholds` that `moves` crossed downward, given `peak`, the highest
 * balance known since the previous move (null: none known); returns them with the new peak. Pure.
 *
 * @example
 * ```ts
 * const moves = [{ kind: "settle", key: null, charged: 2n, balance_after: 4n, key_spend: null }];
 * balanceCrossings(null, moves, [5n]); // { peak: 4n, crossed: [5n] }
 * ```
 */
export function balanceCrossings(
  peak: bigint | null,
  moves: readonly BalanceMove[],
  thresholds: readonly bigint[],
): { peak: bigint | null; crossed: bigint[] } {
  const crossed = new Set<bigint>();
  for (const m of moves) {
    const justBefore = m.balance_after + (m.kind === "settle" ? m.charged : 0n);
    const before = peak !== null && peak > justBefore ? peak : justBefore;
    for (const t of thresholds) if (before >= t && m.balance_after < t) crossed.add(t);
    peak = m.balance_after;
  }
  return { peak, crossed: [...crossed] };
}

/**
 * The thresholds (basis points of `limit`) a key's spend crossed upward, from `last` (what this
 * process last knew of it, in `period`) to `spend` after a settlement of `charged`. Pure.
 *
 * @example
 * ```ts
 * keyCrossings(undefined, "all", 850n, 100n, 1000n, [8000, 10000]); // [8000]
 * ```
 */
export function keyCrossings(
  last: { period: string; spend: bigint } | undefined,
  period: string,
  spend: bigint,
  charged: bigint,
  limit: bigint,
  bps: readonly number[],
): number[] {
  const justBefore = spend - charged;
  const before = last && last.period === period && last.spend < justBefore
    ? last.spend
    : justBefore;
  return bps.filter((bp) =>
    before * 10_000n < limit * BigInt(bp) && spend * 10_000n >= limit * BigInt(bp)
  );
}

/** Deletes the oldest entries of a map past `max` (insertion order). */
function bound<K, V>(m: Map<K, V>, max: number) {
  if (m.size <= max) return;
  for (const k of m.keys()) {
    m.delete(k);
    if (m.size <= max) break;
  }
}

/**
 * The watcher of one process: thresholds cached per account, the balance peak per account and
 * the spend per key as last known, and the gates it runs (each at most once at a time, run again
 * when a crossing came meanwhile). Also a background task: its sweep waits for the gates running
 * and resumes top-ups left in flight.
 */
export class SpendWatch implements BackgroundTask {
  #svc: SpendDeps;
  #thresholds = new Map<string, Thresholds>();
  #reading = new Map<string, BalanceMove[]>();
  #peak = new Map<string, bigint | null>();
  #keySpend = new Map<string, { period: string; spend: bigint }>();
  /** Gates running by id, and whether a crossing asked again meanwhile. */
  #running = new Map<string, { again: boolean; done: Promise<void> }>();
  #resumed = new Map<string, number>();
  #closed = false;

  constructor(svc: SpendDeps) {
    this.#svc = svc;
  }

  /** The actor's hook: what one commit moved on the account. Never throws. */
  moved(accountId: string, moves: BalanceMove[]) {
    if (this.#closed) return;
    try {
      for (const m of moves) if (m.kind === "settle" && m.key_spend) this.#keyMove(m);
      const waiting = this.#reading.get(accountId);
      if (waiting) {
        if (waiting.length < MAX_WAITING) waiting.push(...moves);
        return;
      }
      const t = this.#thresholds.get(accountId);
      if (!t || this.#svc.now() - t.at > SETTINGS_TTL_MS) this.#read(accountId, !t);
      if (t) this.#balanceMoves(accountId, t, moves);
      else this.#reading.get(accountId)!.push(...moves);
    } catch (e) {
      this.#svc.log("error", "spend watch failed", { error: String(e) });
    }
  }

  /** Forgets the account's thresholds (changed in this process): the next move reads them. */
  forget(accountId: string) {
    this.#thresholds.delete(accountId);
  }

  #keyMove(m: Extract<BalanceMove, { kind: "settle" }>) {
    const key = m.key!;
    const ks = m.key_spend!;
    const last = this.#keySpend.get(key.id);
    this.#keySpend.delete(key.id);
    this.#keySpend.set(key.id, ks);
    bound(this.#keySpend, MAX_TRACKED);
    const bps = keyCrossings(last, ks.period, ks.spend, m.charged, key.credit_limit!, alertBp(key));
    for (const bp of bps) {
      this.#gate(
        `key:${key.id}:${ks.period}:${bp}`,
        () => fireKeyAlert(this.#svc, key, ks.period, bp, ks.spend),
      );
    }
  }

  #balanceMoves(accountId: string, t: Thresholds, moves: readonly BalanceMove[]) {
    const list = [t.topup, t.low].filter((x): x is bigint => x !== null);
    const { peak, crossed } = balanceCrossings(this.#peak.get(accountId) ?? null, moves, list);
    this.#peak.delete(accountId);
    this.#peak.set(accountId, peak);
    bound(this.#peak, MAX_TRACKED);
    if (t.topup !== null && crossed.includes(t.topup)) {
      this.#gate(`topup:${accountId}`, () => startTopUp(this.#svc, accountId));
    }
    if (t.low !== null && crossed.includes(t.low)) {
      this.#gate(`low:${accountId}`, () => fireLowBalance(this.#svc, accountId));
    }
  }

  /**
   * Reads the account's thresholds. `first`: moves wait for them (they are evaluated once read);
   * otherwise the cached ones serve meanwhile.
   */
  #read(accountId: string, first: boolean) {
    if (first) this.#reading.set(accountId, []);
    else if (this.#running.has(`read:${accountId}`)) return;
    this.#gate(`read:${accountId}`, async () => {
      try {
        const [topup, alerts] = await this.#svc.kv.getMany<[AutoTopup, AlertSettings]>([
          autoTopupKey(accountId),
          alertsKey(accountId),
        ]);
        const t: Thresholds = {
          topup: topup.value?.enabled ? topup.value.threshold : null,
          low: alerts.value?.low_balance_threshold ?? null,
          at: this.#svc.now(),
        };
        this.#thresholds.delete(accountId);
        this.#thresholds.set(accountId, t);
        bound(this.#thresholds, MAX_TRACKED);
        const waiting = this.#reading.get(accountId);
        this.#reading.delete(accountId);
        if (waiting?.length) this.#balanceMoves(accountId, t, waiting);
      } finally {
        this.#reading.delete(accountId);
      }
    });
  }

  /** Runs `f` under `id`: once at a time, once more if asked again while it ran. */
  #gate(id: string, f: () => Promise<unknown>) {
    const running = this.#running.get(id);
    if (running) {
      running.again = true;
      return;
    }
    const entry = { again: false, done: Promise.resolve() };
    entry.done = (async () => {
      do {
        entry.again = false;
        try {
          await f();
        } catch (e) {
          this.#svc.log("error", "spend watch gate failed", { gate: id, error: String(e) });
        }
      } while (entry.again && !this.#closed);
      this.#running.delete(id);
    })();
    this.#running.set(id, entry);
  }

  /** Resolves once no gate is running. */
  async idle(): Promise<void> {
    while (this.#running.size) await Promise.all([...this.#running.values()].map((r) => r.done));
  }

  onMessage(): Promise<boolean> {
    return Promise.resolve(false);
  }

  /** Waits for the gates running, then resumes top-ups left in flight. */
  async sweep(): Promise<void> {
    await this.idle();
    await resumeStale(this.#svc, this.#resumed);
  }

  /** Stops watching and waits for the gates running (shutdown). */
  async close(): Promise<void> {
    this.#closed = true;
    await this.idle();
  }
}

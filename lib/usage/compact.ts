/**
 * Deferred rollups. Adding every counter of an event in the atomic that records it costs up to 96
 * KV writes per event when traffic is spread over accounts (counters merge only within an
 * account). Instead the recorder writes one pending entry per account and atomic: the merged
 * totals of that account's billed events per hour, key, provider and model (`PendingRollups`).
 * The compactor later folds an account's pending entries into the counters: one atomic checks and
 * deletes the entries and adds their merged sums, so each entry is counted exactly once.
 */
import {
  accountIdOfKey,
  ROLLUP_PENDING_PREFIX,
  rollupPendingAfter,
  rollupPendingKey,
  rollupPendingPrefix,
} from "../kv/schema.ts";
import { getAll, isLocked, keyBytes, sleep } from "../kv/util.ts";
import { AtomicRoom } from "../kv/limits.ts";
import { newId } from "../ids.ts";
import { addRollupTotals, eventTotals, ROLLUP_FIELDS, type Totals } from "./rollups.ts";
import type { UsageEvent } from "../billing/types.ts";

/** The totals of one hour (its first ms), key, provider and model, in ROLLUP_FIELDS order. */
export type PendingRow = [hourMs: number, keyId: string, provider: string, model: string, bigint[]];

const HOUR_MS = 3_600_000;
// A KV value is at most 64 KiB: a pending entry holds rows of at most this estimated size.
const MAX_ENTRY_BYTES = 48_000;
// Deno KV's limits per atomic, with margin; counters are 8-byte values, so the 800 KiB total is
// bounded by the key bytes.
const MARGIN = { checks: 10, mutations: 100, keyBytes: 17_920 };

/** A generous estimate of a row's serialized size (3 UTF-8 bytes per UTF-16 unit). */
const rowBytes = (keyId: string, provider: string, model: string) =>
  64 + 3 * (keyId.length + provider.length + model.length) + 10 * ROLLUP_FIELDS.length;

/** At most what a billed event adds to the value of its pending entry. */
export const pendingRowBytes = (e: UsageEvent) => rowBytes(e.key_id, e.provider, e.model);

/** The key bytes a pending entry of an account adds to an atomic (its id is 28 characters). */
export const pendingKeyBytes = (accountId: string) =>
  keyBytes(rollupPendingKey(accountId, "rpd_" + "0".repeat(24)));

interface Building {
  rows: Map<string, PendingRow>;
  bytes: number;
}

/**
 * The pending entries of one recorder atomic: billed events merged per account, hour, key,
 * provider and model. `add` says whether the event opened a new entry (one more mutation).
 */
export class PendingRollups {
  #byAccount = new Map<string, Building[]>();

  /** Whether adding `e` would open a new entry (a new account, or its last entry is full). */
  opensEntry(e: UsageEvent): boolean {
    const last = this.#byAccount.get(e.account_id)?.at(-1);
    if (!last) return true;
    return !last.rows.has(rowId(e)) &&
      last.bytes + rowBytes(e.key_id, e.provider, e.model) > MAX_ENTRY_BYTES;
  }

  /** Adds a billed event's totals. */
  add(e: UsageEvent): void {
    let entries = this.#byAccount.get(e.account_id);
    if (!entries) this.#byAccount.set(e.account_id, entries = []);
    const id = rowId(e);
    const t = eventTotals(e);
    const row = entries.at(-1)?.rows.get(id);
    if (row) {
      ROLLUP_FIELDS.forEach((f, j) => row[4][j] += t[f]);
      return;
    }
    const bytes = rowBytes(e.key_id, e.provider, e.model);
    let last = entries.at(-1);
    if (!last || last.bytes + bytes > MAX_ENTRY_BYTES) {
      entries.push(last = { rows: new Map(), bytes: 0 });
    }
    last.bytes += bytes;
    last.rows.set(id, [
      e.ts - e.ts % HOUR_MS,
      e.key_id,
      e.provider,
      e.model,
      ROLLUP_FIELDS.map((f) => t[f]),
    ]);
  }

  /** Sets every pending entry in `atomic`; returns the accounts that got one. */
  write(atomic: Deno.AtomicOperation): string[] {
    for (const [accountId, entries] of this.#byAccount) {
      for (const b of entries) {
        atomic.set(rollupPendingKey(accountId, newId("rpd")), [...b.rows.values()]);
      }
    }
    return [...this.#byAccount.keys()];
  }
}

const rowKey = (hourMs: number, keyId: string, provider: string, model: string) =>
  `${hourMs}\u0000${keyId}\u0000${provider}\u0000${model}`;
const rowId = (e: UsageEvent) => rowKey(e.ts - e.ts % HOUR_MS, e.key_id, e.provider, e.model);
const ONES = Object.fromEntries(ROLLUP_FIELDS.map((f) => [f, 1n])) as Totals;

/** The rollup counters of pending rows, merged into `sums` (key string → [key, amount]). */
export function addPendingSums(
  sums: Map<string, [Deno.KvKey, bigint]>,
  accountId: string,
  rows: readonly PendingRow[],
): void {
  for (const [hourMs, keyId, provider, model, c] of rows) {
    const totals = {} as Totals;
    ROLLUP_FIELDS.forEach((f, j) => totals[f] = c[j]);
    addRollupTotals(sums, accountId, hourMs, keyId, provider, model, totals);
  }
}

// Accounts this process wrote pending entries for, per KV: compacted without scanning for them.
const noted = new WeakMap<Deno.Kv, Set<string>>();

/** Remembers accounts that have pending entries (the recorder calls it after each commit). */
export function notePending(kv: Deno.Kv, accountIds: Iterable<string>): void {
  let set = noted.get(kv);
  if (!set) noted.set(kv, set = new Set());
  for (const a of accountIds) set.add(a);
}

/**
 * Folds an account's pending entries (those present when it starts) into its rollup counters and
 * returns how many it folded. Each atomic checks the entries it folds, deletes them and adds
 * their merged sums, within Deno KV's limits; an entry too large for one atomic is first split in
 * two. A failed commit (another compactor folded some of them) re-reads its entries and retries,
 * so concurrent compactors never count an entry twice.
 */
export async function compactAccount(kv: Deno.Kv, accountId: string): Promise<number> {
  let folded = 0;
  let entries = await Array.fromAsync(
    kv.list<PendingRow[]>({ prefix: rollupPendingPrefix(accountId) }),
  );
  for (let attempt = 0; entries.length > 0; attempt++) {
    const retry: Deno.KvKey[] = [];
    let i = 0;
    while (i < entries.length) {
      const atomic = kv.atomic();
      // The group's rows merged by hour, key, provider and model (`rowKey`), and the counter keys
      // they add: each distinct row is expanded once, not once per entry.
      const rows = new Map<string, PendingRow>();
      const counterKeys = new Set<string>();
      const group: Deno.KvEntry<PendingRow[]>[] = [];
      const room = new AtomicRoom(MARGIN);
      let split: Deno.KvEntry<PendingRow[]> | null = null;
      for (; i < entries.length; i++) {
        // Counter keys of rows new to the group, as if every field were non-zero (an upper
        // bound: a field zero in one entry may not be in the next of the same row).
        const own = new Map<string, [Deno.KvKey, bigint]>();
        for (const [hourMs, keyId, provider, model] of entries[i].value) {
          if (rows.has(rowKey(hourMs, keyId, provider, model))) continue;
          addRollupTotals(own, accountId, hourMs, keyId, provider, model, ONES);
        }
        // The entry's key is both checked and deleted.
        let added = 1;
        let b = 2 * keyBytes(entries[i].key);
        for (const [s, [key]] of own) {
          if (counterKeys.has(s)) continue;
          added++;
          b += keyBytes(key);
        }
        const f = { checks: 1, mutations: added, keyBytes: b, bytes: b };
        if (!room.fits(f)) {
          if (group.length > 0) break;
          if (entries[i].value.length > 1) {
            split = entries[i++];
            break;
          }
          // One row is at most 96 counters: over the limits only with absurdly long names, and
          // then the commit below fails loudly rather than counting part of it.
        }
        room.take(f);
        for (const s of own.keys()) counterKeys.add(s);
        for (const [hourMs, keyId, provider, model, c] of entries[i].value) {
          const id = rowKey(hourMs, keyId, provider, model);
          const row = rows.get(id);
          if (row) c.forEach((x, j) => row[4][j] += x);
          else rows.set(id, [hourMs, keyId, provider, model, [...c]]);
        }
        group.push(entries[i]);
      }
      if (split) {
        // Moves the rows into two smaller entries, folded on the next round.
        const rows = split.value;
        const half = Math.ceil(rows.length / 2);
        const a = rollupPendingKey(accountId, newId("rpd")),
          z = rollupPendingKey(accountId, newId("rpd"));
        atomic.check(split).delete(split.key).set(a, rows.slice(0, half)).set(z, rows.slice(half));
        if ((await commit(atomic)).ok) retry.push(a, z);
        else retry.push(split.key);
        continue;
      }
      for (const entry of group) atomic.check(entry).delete(entry.key);
      const sums = new Map<string, [Deno.KvKey, bigint]>();
      addPendingSums(sums, accountId, [...rows.values()]);
      for (const [key, amount] of sums.values()) atomic.sum(key, amount);
      if ((await commit(atomic)).ok) folded += group.length;
      else retry.push(...group.map((g) => g.key));
    }
    entries = (await getAll<PendingRow[]>(kv, retry))
      .filter((e): e is Deno.KvEntry<PendingRow[]> => e.value !== null);
    if (entries.length) await sleep(Math.min(100, 2 ** attempt));
  }
  return folded;
}

async function commit(
  atomic: Deno.AtomicOperation,
): Promise<Deno.KvCommitResult | Deno.KvCommitError> {
  try {
    return await atomic.commit();
  } catch (e) {
    // Another process holds the KV file's write lock: like a conflict, try again.
    if (!isLocked(e)) throw e;
    return { ok: false };
  }
}

/** The accounts that have pending entries: one short listing per account (a skip scan). */
export async function pendingAccounts(kv: Deno.Kv, limit = 10_000): Promise<string[]> {
  const out: string[] = [];
  let start: Deno.KvKey | null = null;
  while (out.length < limit) {
    const selector = start
      ? { prefix: ROLLUP_PENDING_PREFIX, start }
      : { prefix: ROLLUP_PENDING_PREFIX };
    const [e] = await Array.fromAsync(kv.list(selector, { limit: 1 }));
    if (!e) break;
    const accountId = accountIdOfKey(e.key);
    out.push(accountId);
    start = rollupPendingAfter(accountId);
  }
  return out;
}

/**
 * Compacts accounts a few at a time: those this process noted (the default) or, with
 * `scan`, every account that has pending entries (entries of other processes, or of a crash).
 * Returns how many entries it folded.
 */
export async function compactPending(kv: Deno.Kv, opts: { scan?: boolean } = {}): Promise<number> {
  const set = noted.get(kv);
  const accounts = new Set(set);
  set?.clear();
  if (opts.scan) { for (const a of await pendingAccounts(kv)) accounts.add(a); }
  const queue = [...accounts];
  let folded = 0;
  const worker = async () => {
    for (let a = queue.pop(); a !== undefined; a = queue.pop()) {
      try {
        // Not `folded += await …`: that reads `folded` before the other workers add to it.
        const n = await compactAccount(kv, a);
        folded += n;
      } catch (e) {
        // Left pending: noted again so the next round retries it.
        notePending(kv, [a]);
        throw e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(4, queue.length) }, worker));
  return folded;
}

/**
 * Each account's entries as this process last committed or read them, with their versionstamps:
 * the next batch is decided on them without a read. The atomic still checks every entry a decision
 * rests on, so a write by another process fails the commit, which drops the account's cache and
 * reads afresh.
 */
import { getAll, keyString } from "../kv/util.ts";
import type { Write } from "./decide.ts";

const CACHE_IDLE_MS = 30_000;
const CACHE_SWEEP_MS = 5_000;

export interface AccountCache {
  entries: Map<string, Deno.KvEntryMaybe<unknown>>;
  used: number;
}

export class AccountCaches {
  #kv: Deno.Kv;
  #caches = new Map<string, AccountCache>();
  #lastEviction = 0;

  constructor(kv: Deno.Kv) {
    this.#kv = kv;
  }

  /** The account's cache, with every entry at `keys` in it (read where missing). */
  async read(accountId: string, keys: readonly Deno.KvKey[]): Promise<AccountCache> {
    const now = performance.now();
    let cache = this.#caches.get(accountId);
    if (!cache) this.#caches.set(accountId, cache = { entries: new Map(), used: now });
    cache.used = now;
    const missing = keys.filter((k) => !cache.entries.has(keyString(k)));
    if (missing.length) {
      const read = await getAll<unknown>(this.#kv, missing);
      missing.forEach((k, i) => cache.entries.set(keyString(k), read[i]));
    }
    return cache;
  }

  /** Keeps what a commit wrote (at `stamp`): state entries as written, anything else re-read. */
  remember(
    accountId: string,
    sets: readonly Write[],
    deletes: readonly Deno.KvKey[],
    stamp: string,
  ) {
    const cache = this.#caches.get(accountId);
    if (!cache) return;
    for (const w of sets) {
      const ks = keyString(w.key);
      // Not state (ledger rows, once-keys): once-keys are read afresh each time, credits are rare.
      if (w.state) cache.entries.set(ks, { key: w.key, value: w.value, versionstamp: stamp });
      else cache.entries.delete(ks);
    }
    for (const k of deletes) cache.entries.delete(keyString(k));
  }

  /** Keeps `e` if it is newer than the entry cached (a read made elsewhere, e.g. a poll). */
  refresh(accountId: string, e: Deno.KvEntryMaybe<unknown>) {
    const cache = this.#caches.get(accountId);
    if (!cache || e.versionstamp === null) return;
    const ks = keyString(e.key);
    const had = cache.entries.get(ks);
    if (had && had.versionstamp !== null && had.versionstamp >= e.versionstamp) return;
    cache.entries.set(ks, e);
  }

  /** Forgets one entry (changed in this process outside the actor), or the whole account's. */
  forget(accountId: string, key?: Deno.KvKey) {
    if (key) this.#caches.get(accountId)?.entries.delete(keyString(key));
    else this.#caches.delete(accountId);
  }

  /** Drops the caches of accounts idle for a while (unless `busy`): memory stays bounded. */
  evictIdle(busy: (accountId: string) => boolean) {
    const now = performance.now();
    if (now - this.#lastEviction < CACHE_SWEEP_MS) return;
    this.#lastEviction = now;
    for (const [id, c] of this.#caches) {
      if (now - c.used > CACHE_IDLE_MS && !busy(id)) this.#caches.delete(id);
    }
  }
}

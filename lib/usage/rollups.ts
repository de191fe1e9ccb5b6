import { rollupKey } from "../kv/schema.ts";
import type { UsageEvent } from "../billing/types.ts";
import { dayOf } from "../billing/periods.ts";

/** The counters kept per rollup bucket, each a `Deno.KvU64` added to with `sum`. */
export const ROLLUP_FIELDS = [
  "requests",
  "prompt_tokens",
  "completion_tokens",
  "cached_tokens",
  "cache_write_tokens",
  "reasoning_tokens",
  "cost",
  "market_cost",
] as const;
export type RollupField = typeof ROLLUP_FIELDS[number];
export type Totals = Record<RollupField, bigint>;

/**
 * Totals of nothing: every counter zero.
 *
 * @example
 * ```ts
 * const sum = emptyTotals(); for (const t of rows) addTotals(sum, t);
 * ```
 */
export const emptyTotals = (): Totals => ({
  requests: 0n,
  prompt_tokens: 0n,
  completion_tokens: 0n,
  cached_tokens: 0n,
  cache_write_tokens: 0n,
  reasoning_tokens: 0n,
  cost: 0n,
  market_cost: 0n,
});

export function addTotals(into: Totals, t: Totals): Totals {
  for (const f of ROLLUP_FIELDS) into[f] += t[f];
  return into;
}

/** UTC day bucket "2026-11-26" and hour bucket "2026-11-26T13" of an epoch-ms time. */
export const dayBucket = dayOf;
export const hourBucket = (ms: number) => new Date(ms).toISOString().slice(0, 13);

/** A rollup grain: UTC day or UTC hour. */
export type Grain = "d" | "h";

/**
 * The [scope, dimension, value] a billed event is counted under, at both grains: the account
 * ("" scope) in total, per key, provider and model, and per provider and model within its key.
 * 6 dimensions × 2 grains × 8 fields: at most 96 counters per event, merged within a batch.
 */
function dimensions(keyId: string, provider: string, model: string) {
  return [
    ["", "all", ""],
    ["", "key", keyId],
    ["", "provider", provider],
    ["", "model", model],
    [keyId, "provider", provider],
    [keyId, "model", model],
  ] as const;
}

/** The counters one billed event adds. */
export function eventTotals(e: UsageEvent): Totals {
  return {
    requests: 1n,
    prompt_tokens: BigInt(e.prompt_tokens),
    completion_tokens: BigInt(e.completion_tokens),
    cached_tokens: BigInt(e.cached_tokens),
    cache_write_tokens: BigInt(e.cache_write_tokens),
    reasoning_tokens: BigInt(e.reasoning_tokens),
    cost: e.cost,
    market_cost: e.market_cost,
  };
}

/**
 * Adds a billed event's counters to `sums` (key string → [key, amount]), merging with what other
 * events of the same batch already put there, so a batch writes each counter once.
 */
export function addRollupSums(sums: Map<string, [Deno.KvKey, bigint]>, e: UsageEvent): void {
  addRollupTotals(sums, e.account_id, e.ts, e.key_id, e.provider, e.model, eventTotals(e));
}

/**
 * Adds `totals` of requests made at `ms` with one key, provider and model to `sums`, under every
 * dimension of the given grains (`addRollupSums` for one event; bulk loaders for many at once).
 */
export function addRollupTotals(
  sums: Map<string, [Deno.KvKey, bigint]>,
  accountId: string,
  ms: number,
  keyId: string,
  provider: string,
  model: string,
  totals: Totals,
  grains: readonly Grain[] = ["d", "h"],
): void {
  for (const grain of grains) {
    const bucket = grain === "d" ? dayBucket(ms) : hourBucket(ms);
    for (const [scope, dim, value] of dimensions(keyId, provider, model)) {
      for (const f of ROLLUP_FIELDS) {
        const amount = totals[f];
        if (amount === 0n) continue;
        const key = rollupKey(accountId, grain, scope, dim, bucket, value, f);
        const s = key.join("\u0000");
        const prev = sums.get(s);
        if (prev) prev[1] += amount;
        else sums.set(s, [key, amount]);
      }
    }
  }
}

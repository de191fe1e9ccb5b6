import { rollupKey } from "../kv/schema.ts";
import type { UsageEvent } from "../billing/types.ts";

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
export const dayBucket = (ms: number) => new Date(ms).toISOString().slice(0, 10);
export const hourBucket = (ms: number) => new Date(ms).toISOString().slice(0, 13);

/** A rollup grain: UTC day or UTC hour. */
export type Grain = "d" | "h";

/**
 * The [scope, dimension, value] a billed event is counted under, at both grains: the account
 * ("" scope) in total, per key, provider and model, and per provider and model within its key.
 * 6 dimensions × 2 grains × 8 fields: at most 96 counters per event, merged within a batch.
 */
function dimensions(e: UsageEvent): [scope: string, dim: string, value: string][] {
  return [
    ["", "all", ""],
    ["", "key", e.key_id],
    ["", "provider", e.provider],
    ["", "model", e.model],
    [e.key_id, "provider", e.provider],
    [e.key_id, "model", e.model],
  ];
}

function eventTotals(e: UsageEvent): Totals {
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
  const totals = eventTotals(e);
  const buckets: [Grain, string][] = [["d", dayBucket(e.ts)], ["h", hourBucket(e.ts)]];
  for (const [grain, bucket] of buckets) {
    for (const [scope, dim, value] of dimensions(e)) {
      for (const f of ROLLUP_FIELDS) {
        const amount = totals[f];
        if (amount === 0n) continue;
        const key = rollupKey(e.account_id, grain, scope, dim, bucket, value, f);
        const s = key.join("\u0000");
        const prev = sums.get(s);
        if (prev) prev[1] += amount;
        else sums.set(s, [key, amount]);
      }
    }
  }
}

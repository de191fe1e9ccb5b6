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

/** The dimensions a billed event is counted under: [grain, dimension, value]. */
function dimensions(e: UsageEvent): [grain: "d" | "h", dim: string, value: string][] {
  return [
    ["d", "all", ""],
    ["d", "key", e.key_id],
    ["d", "provider", e.provider],
    ["d", "model", e.model],
    ["d", "key_provider", `${e.key_id}|${e.provider}`],
    ["d", "key_model", `${e.key_id}|${e.model}`],
    ["h", "all", ""],
    ["h", "key", e.key_id],
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
  const day = dayBucket(e.ts);
  const hour = hourBucket(e.ts);
  for (const [grain, dim, value] of dimensions(e)) {
    const bucket = grain === "d" ? day : hour;
    for (const f of ROLLUP_FIELDS) {
      const amount = totals[f];
      if (amount === 0n) continue;
      const key = rollupKey(e.account_id, grain, dim, value, bucket, f);
      const s = `${e.account_id}\u0000${grain}\u0000${dim}\u0000${value}\u0000${bucket}\u0000${f}`;
      const prev = sums.get(s);
      if (prev) prev[1] += amount;
      else sums.set(s, [key, amount]);
    }
  }
}

import { formatUsd, savingsPercent } from "../money.ts";
import { addTotals, emptyTotals, type RollupField, type Totals } from "./rollups.ts";

export type GroupBy = "date" | "key" | "provider" | "model";

export interface UsageQuery {
  accountId: string;
  /** First and last UTC day included, "YYYY-MM-DD". */
  fromDay: string;
  toDay: string;
  groupBy?: GroupBy;
  /** Restrict to one key. */
  keyId?: string;
}

/**
 * Sums rollup counters of one dimension over a day range, per dimension value (or per day when
 * `byDay`). Reads only rollups, never the audit trail.
 */
async function sumRollups(
  kv: Deno.Kv,
  accountId: string,
  dim: string,
  valuePrefix: string | null,
  fromDay: string,
  toDay: string,
  byDay: boolean,
): Promise<Map<string, Totals>> {
  const base = ["rollup", accountId, "d", dim];
  // One value ("all", or one key): a range of its days. A "keyId|" prefix: that key's values.
  const exact = dim === "all"
    ? ""
    : valuePrefix !== null && !valuePrefix.endsWith("|")
    ? valuePrefix
    : null;
  const selector: Deno.KvListSelector = exact !== null
    ? { start: [...base, exact, fromDay], end: [...base, exact, toDay + "~"] }
    : valuePrefix !== null
    ? { start: [...base, valuePrefix], end: [...base, valuePrefix + "\uffff"] }
    : { prefix: base };
  const out = new Map<string, Totals>();
  for await (const e of kv.list<Deno.KvU64>(selector, { batchSize: 1000 })) {
    const [, , , , value, bucket, field] = e.key as [
      string,
      string,
      string,
      string,
      string,
      string,
      RollupField,
    ];
    if (bucket < fromDay || bucket > toDay) continue;
    const group = byDay ? bucket : exact ?? (valuePrefix ? value.slice(valuePrefix.length) : value);
    let t = out.get(group);
    if (!t) out.set(group, t = emptyTotals());
    t[field] += e.value.value;
  }
  return out;
}

/** Usage totals for a period and, with `groupBy`, the breakdown rows sorted by group. */
export async function queryUsage(kv: Deno.Kv, q: UsageQuery) {
  const key = q.keyId;
  let dim: string, prefix: string | null = null, byDay = false;
  switch (q.groupBy ?? "date") {
    case "date":
      [dim, prefix, byDay] = key ? ["key", key, true] : ["all", "", true];
      break;
    case "key":
      [dim, prefix] = ["key", key ?? null];
      break;
    case "provider":
      [dim, prefix] = key ? ["key_provider", key + "|"] : ["provider", null];
      break;
    case "model":
      [dim, prefix] = key ? ["key_model", key + "|"] : ["model", null];
      break;
  }
  const groups = await sumRollups(kv, q.accountId, dim!, prefix, q.fromDay, q.toDay, byDay);
  const summary = [...groups.values()].reduce((a, t) => addTotals(a, t), emptyTotals());
  const breakdown = [...groups.entries()].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
    .map(([group, t]) => ({ group, ...totalsJson(t) }));
  return { summary: totalsJson(summary), breakdown };
}

/** Totals as the API shows them: counts as numbers, money as decimal strings. */
export function totalsJson(t: Totals) {
  return {
    requests: Number(t.requests),
    prompt_tokens: Number(t.prompt_tokens),
    completion_tokens: Number(t.completion_tokens),
    cached_tokens: Number(t.cached_tokens),
    cache_write_tokens: Number(t.cache_write_tokens),
    reasoning_tokens: Number(t.reasoning_tokens),
    cost: formatUsd(t.cost),
    market_cost: formatUsd(t.market_cost),
    savings: formatUsd(t.market_cost - t.cost),
    savings_percent: savingsPercent(t.cost, t.market_cost),
  };
}

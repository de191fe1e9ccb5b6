/** Reading rollup counters: one dimension over a run of buckets in one range scan, and versions. */
import { rollupKey, rollupKeyParts, rollupRange } from "../kv/schema.ts";
import { getAll } from "../kv/util.ts";
import { emptyTotals, type Grain, type RollupField, type Totals } from "./rollups.ts";
import type { Bucket } from "./period.ts";

/**
 * Reads the counters of one dimension over a run of buckets in one range scan:
 * bucket → value → totals.
 */
export async function scanRun(
  kv: Deno.Kv,
  accountId: string,
  grain: Grain,
  scope: string,
  dim: string,
  first: string,
  last: string,
): Promise<Map<string, Map<string, Totals>>> {
  const out = new Map<string, Map<string, Totals>>();
  const iter = kv.list<Deno.KvU64>(
    rollupRange(accountId, grain, scope, dim, first, last),
    { batchSize: 1000 },
  );
  for await (const e of iter) {
    const { bucket, value } = rollupKeyParts(e.key);
    const field = rollupKeyParts(e.key).field as RollupField;
    let byValue = out.get(bucket);
    if (!byValue) out.set(bucket, byValue = new Map());
    let t = byValue.get(value);
    if (!t) byValue.set(value, t = emptyTotals());
    t[field] += e.value.value;
  }
  return out;
}

/** Each bucket's account-wide request count: the version every rollup write of it raises. */
export async function requestCounts(kv: Deno.Kv, accountId: string, buckets: Bucket[]) {
  const counts = await getAll<Deno.KvU64>(
    kv,
    buckets.map((b) => rollupKey(accountId, b.grain, "", "all", b.name, "", "requests")),
  );
  return counts.map((e) => e.value?.value ?? 0n);
}

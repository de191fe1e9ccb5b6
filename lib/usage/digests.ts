/**
 * Digests: every value's counters of one closed bucket (or month) of one dimension in one record,
 * valid while the bucket's request count is unchanged, so a query of closed buckets reads one
 * record per bucket instead of every counter (a cache, never the source of truth).
 */
import { bucketOfDigest, rollupDigestKey, rollupDigestRange } from "../kv/schema.ts";
import { monthOf } from "../billing/periods.ts";
import { addTotals, emptyTotals, type Grain, ROLLUP_FIELDS, type Totals } from "./rollups.ts";
import { type Bucket, bucketEnd, DAY_MS } from "./period.ts";
import { requestCounts, scanRun } from "./scan.ts";

/** A digest: every value's counters of one bucket of one dimension, and the version it saw. */
interface RollupDigest {
  /** The bucket's account-wide request count when the digest was built. */
  v: bigint;
  values: string[];
  /** ROLLUP_FIELDS counters of each value in turn, as u64s in one buffer (cheap to read). */
  counters: Uint8Array;
}

/** Digests hold at most this many values (a KV value is at most 64 KiB); larger ones are scanned. */
const DIGEST_MAX_VALUES = 500;
/** A bucket gets a digest once it ended this long ago (late events are rare after that). */
const DIGEST_AFTER_MS = 5 * 60_000;

/**
 * Per bucket, the totals of every value of a dimension. Closed buckets come from digests when the
 * digest's version (the bucket's account-wide request count, which every rollup write raises)
 * still matches; others are scanned, and closed ones then digested for the next query. With
 * `months`, whole closed months come from month digests (version: the sum of their days' counts,
 * unchanged only if no day changed), keyed "m:<month>": for callers that only add buckets up.
 */
export async function dimensionGroups(
  kv: Deno.Kv,
  accountId: string,
  scope: string,
  dim: string,
  runs: Bucket[][],
  versions: Map<string, bigint>,
  now: number,
  months: boolean,
): Promise<Map<string, Map<string, Totals>>> {
  const out = new Map<string, Map<string, Totals>>();
  const bucketsOf = async (buckets: Bucket[]) => {
    const r = await bucketGroups(kv, accountId, scope, dim, buckets, versions, now);
    for (const [b, m] of r.groups) out.set(b, m);
    return r;
  };
  await Promise.all(runs.map(async (run) => {
    if (!months || run[0].grain !== "d") return void await bucketsOf(run);
    const byMonth = new Map<string, Bucket[]>();
    for (const b of run) {
      const m = monthOf(b.startMs);
      byMonth.get(m)?.push(b) ?? byMonth.set(m, [b]);
    }
    const whole = [...byMonth].filter(([m, days]) => {
      const start = Date.parse(m + "-01T00:00:00Z");
      const end = new Date(start);
      end.setUTCMonth(end.getUTCMonth() + 1);
      return days.length === (end.getTime() - start) / DAY_MS &&
        end.getTime() + DIGEST_AFTER_MS <= now;
    });
    const monthVersion = (days: Bucket[]) =>
      days.reduce((a, d) => a + (versions.get(d.name) ?? 0n), 0n);
    const digests = new Map<string, RollupDigest>();
    if (whole.length) {
      const range = rollupDigestRange(accountId, "m", scope, dim, whole[0][0], whole.at(-1)![0]);
      for await (const e of kv.list<RollupDigest>(range)) {
        digests.set(bucketOfDigest(e.key), e.value);
      }
    }
    const wholeNames = new Set(whole.map(([m]) => m));
    const rest: Bucket[] = run.filter((b) => !wholeNames.has(monthOf(b.startMs)));
    const rebuild: [string, Bucket[], bigint][] = [];
    for (const [m, days] of whole) {
      const v = monthVersion(days);
      if (v === 0n) continue;
      const d = digests.get(m);
      if (d && d.v === v) out.set("m:" + m, fromDigest(d));
      else {
        rebuild.push([m, days, v]);
        rest.push(...days);
      }
    }
    rest.sort((a, b) => a.startMs - b.startMs);
    const { verified } = await bucketsOf(rest);
    let atomic = kv.atomic(), n = 0;
    for (const [m, days, v] of rebuild) {
      if (!days.every((d) => verified.has(d.name) || !versions.get(d.name))) continue;
      const sum = new Map<string, Totals>();
      for (const d of days) {
        for (const [value, t] of out.get(d.name) ?? []) {
          const into = sum.get(value);
          if (into) addTotals(into, t);
          else sum.set(value, addTotals(emptyTotals(), t));
        }
      }
      const digest = toDigest(v, sum);
      if (!digest) continue;
      atomic.set(rollupDigestKey(accountId, "m", scope, dim, m), digest);
      if (++n % 5 === 0) {
        await atomic.commit().catch(() => {});
        atomic = kv.atomic();
      }
    }
    if (n % 5) await atomic.commit().catch(() => {});
  }));
  return out;
}

/**
 * The groups of some buckets of one grain, from digests or scans (see `dimensionGroups`), and
 * which of them are known to match their version (a current digest, or a scan the version did
 * not move during).
 */
async function bucketGroups(
  kv: Deno.Kv,
  accountId: string,
  scope: string,
  dim: string,
  buckets: Bucket[],
  versions: Map<string, bigint>,
  now: number,
): Promise<{ groups: Map<string, Map<string, Totals>>; verified: Set<string> }> {
  const groups = new Map<string, Map<string, Totals>>();
  const verified = new Set<string>();
  const needed = buckets.filter((b) => (versions.get(b.name) ?? 0n) > 0n);
  if (needed.length === 0) return { groups, verified };
  const grain = needed[0].grain;
  const digests = new Map<string, RollupDigest>();
  const range = rollupDigestRange(
    accountId,
    grain,
    scope,
    dim,
    needed[0].name,
    needed.at(-1)!.name,
  );
  for await (const e of kv.list<RollupDigest>(range)) digests.set(bucketOfDigest(e.key), e.value);
  const stale: Bucket[] = [];
  for (const b of needed) {
    const d = digests.get(b.name);
    if (d && d.v === versions.get(b.name)) {
      groups.set(b.name, fromDigest(d));
      verified.add(b.name);
    } else stale.push(b);
  }
  // Scan each stretch of consecutive stale buckets as one range.
  const stretches: Bucket[][] = [];
  for (const b of stale) {
    const last = stretches.at(-1)?.at(-1);
    if (last && bucketEnd(last) === b.startMs) stretches.at(-1)!.push(b);
    else stretches.push([b]);
  }
  await Promise.all(stretches.map(async (st) => {
    const scanned = await scanRun(kv, accountId, grain, scope, dim, st[0].name, st.at(-1)!.name);
    for (const b of st) groups.set(b.name, scanned.get(b.name) ?? new Map());
  }));
  const closed = stale.filter((b) => bucketEnd(b) + DIGEST_AFTER_MS <= now);
  if (closed.length) {
    const ok = await storeDigests(kv, accountId, grain, scope, dim, closed, versions, groups)
      .catch(() => [] as string[]);
    for (const name of ok) verified.add(name);
  }
  return { groups, verified };
}

/** A digest record of one bucket's groups, or null when it has too many values for one record. */
function toDigest(v: bigint, byValue: Map<string, Totals>): RollupDigest | null {
  if (byValue.size > DIGEST_MAX_VALUES) return null;
  const values = [...byValue.keys()];
  const n = ROLLUP_FIELDS.length;
  const c = new BigUint64Array(values.length * n);
  values.forEach((value, i) => {
    const t = byValue.get(value)!;
    ROLLUP_FIELDS.forEach((f, j) => c[i * n + j] = t[f]);
  });
  return { v, values, counters: new Uint8Array(c.buffer) };
}

function fromDigest(d: RollupDigest): Map<string, Totals> {
  const m = new Map<string, Totals>();
  const c = new BigUint64Array(d.counters.buffer, d.counters.byteOffset, d.counters.length / 8);
  const n = ROLLUP_FIELDS.length;
  d.values.forEach((value, i) => {
    const t = emptyTotals();
    for (let j = 0; j < n; j++) t[ROLLUP_FIELDS[j]] = c[i * n + j];
    m.set(value, t);
  });
  return m;
}

/**
 * Stores digests of scanned buckets whose version did not move while they were scanned; returns
 * the names of those buckets.
 */
async function storeDigests(
  kv: Deno.Kv,
  accountId: string,
  grain: Grain,
  scope: string,
  dim: string,
  buckets: Bucket[],
  versions: Map<string, bigint>,
  groups: Map<string, Map<string, Totals>>,
): Promise<string[]> {
  const after = await requestCounts(kv, accountId, buckets);
  const unchanged: string[] = [];
  let atomic = kv.atomic(), n = 0;
  for (let i = 0; i < buckets.length; i++) {
    const b = buckets[i];
    const v = versions.get(b.name)!;
    if (after[i] !== v) continue;
    unchanged.push(b.name);
    const digest = toDigest(v, groups.get(b.name)!);
    if (!digest) continue;
    atomic.set(rollupDigestKey(accountId, grain, scope, dim, b.name), digest);
    if (++n % 10 === 0) {
      await atomic.commit();
      atomic = kv.atomic();
    }
  }
  if (n % 10) await atomic.commit();
  return unchanged;
}

import {
  bucketOfDigest,
  rollupDigestKey,
  rollupDigestRange,
  rollupKey,
  rollupKeyParts,
  rollupRange,
} from "../kv/schema.ts";
import { compactAccount } from "./compact.ts";
import { getAll } from "../kv/util.ts";
import { monthOf, weekOf } from "../billing/periods.ts";
import {
  addTotals,
  dayBucket,
  emptyTotals,
  type Grain,
  hourBucket,
  ROLLUP_FIELDS,
  type RollupField,
  type Totals,
} from "./rollups.ts";

export type GroupBy = "date" | "key" | "provider" | "model";
export type Interval = "hour" | "day" | "week" | "month";

export const HOUR_MS = 3_600_000;
export const DAY_MS = 86_400_000;

export interface UsageQuery {
  accountId: string;
  /** Start (inclusive) and end (exclusive) of the period: epoch ms on whole UTC hours. */
  fromMs: number;
  toMs: number;
  groupBy?: GroupBy;
  /** Rows of `group_by=date`; default hours for periods of two days or less, else days. */
  interval?: Interval;
  /** Restrict to one key. */
  keyId?: string;
  /** The clock: decides which buckets are closed and may be digested. */
  now?: number;
}

/** A usage query's answer: the period's totals and the grouping's rows (group, totals), sorted. */
export interface UsageResult {
  fromMs: number;
  toMs: number;
  groupBy: GroupBy;
  /** The date rows' interval; null for other groupings. */
  interval: Interval | null;
  summary: Totals;
  breakdown: [group: string, totals: Totals][];
}

/** One rollup bucket of the period. */
interface Bucket {
  grain: Grain;
  name: string;
  startMs: number;
}

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
 * Splits [from, to) into whole UTC days where it can and hours at the ragged ends (hours only
 * when `hoursOnly`), so a period like 10:00–14:00 is exact at hour resolution.
 */
export function periodBuckets(fromMs: number, toMs: number, hoursOnly: boolean): Bucket[] {
  const out: Bucket[] = [];
  let t = fromMs;
  while (t < toMs) {
    if (!hoursOnly && t % DAY_MS === 0 && t + DAY_MS <= toMs) {
      out.push({ grain: "d", name: dayBucket(t), startMs: t });
      t += DAY_MS;
    } else {
      out.push({ grain: "h", name: hourBucket(t), startMs: t });
      t += HOUR_MS;
    }
  }
  return out;
}

/** Consecutive buckets of one grain: each is one contiguous key range per dimension. */
function runsOf(buckets: Bucket[]): Bucket[][] {
  const runs: Bucket[][] = [];
  for (const b of buckets) {
    const last = runs.at(-1);
    if (last && last[0].grain === b.grain) last.push(b);
    else runs.push([b]);
  }
  return runs;
}

const bucketEnd = (b: Bucket) => b.startMs + (b.grain === "d" ? DAY_MS : HOUR_MS);

/**
 * Reads the counters of one dimension over a run of buckets in one range scan:
 * bucket → value → totals.
 */
async function scanRun(
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

/**
 * Per bucket, the totals of every value of a dimension. Closed buckets come from digests when the
 * digest's version (the bucket's account-wide request count, which every rollup write raises)
 * still matches; others are scanned, and closed ones then digested for the next query. With
 * `months`, whole closed months come from month digests (version: the sum of their days' counts,
 * unchanged only if no day changed), keyed "m:<month>": for callers that only add buckets up.
 */
async function dimensionGroups(
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

/** Each bucket's account-wide request count: the version every rollup write of it raises. */
async function requestCounts(kv: Deno.Kv, accountId: string, buckets: Bucket[]) {
  const counts = await getAll<Deno.KvU64>(
    kv,
    buckets.map((b) => rollupKey(accountId, b.grain, "", "all", b.name, "", "requests")),
  );
  return counts.map((e) => e.value?.value ?? 0n);
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

/** The label of the date row a bucket belongs to. */
function dateLabel(ms: number, interval: Interval): string {
  switch (interval) {
    case "hour":
      return new Date(ms).toISOString().slice(0, 13) + ":00:00Z";
    case "day":
      return dayBucket(ms);
    case "week":
      return weekOf(ms);
    case "month":
      return monthOf(ms);
  }
}

/** The interval `group_by=date` uses when none is asked for. */
export const defaultInterval = (fromMs: number, toMs: number): Interval =>
  toMs - fromMs <= 2 * DAY_MS ? "hour" : "day";

/** How often a query reads its period again when folds keep landing between its reads. */
const READ_ATTEMPTS = 5;

/**
 * One read of a query's per-bucket totals of its scope and per-bucket groups, and the versions
 * (the account's request count per bucket) it read them at.
 */
async function readGroups(
  kv: Deno.Kv,
  q: UsageQuery,
  groupBy: GroupBy,
  runs: Bucket[][],
  now: number,
) {
  // The account's totals per bucket: the summary, and the version of every digest.
  const all = new Map<string, Totals>();
  await Promise.all(runs.map(async (run) => {
    const m = await scanRun(
      kv,
      q.accountId,
      run[0].grain,
      "",
      "all",
      run[0].name,
      run.at(-1)!.name,
    );
    for (const [bucket, byValue] of m) all.set(bucket, byValue.get("") ?? emptyTotals());
  }));
  const versions = new Map([...all].map(([b, t]) => [b, t.requests]));
  // Month digests serve groupings that only add buckets up (not date rows).
  const groups = (scope: string, dim: string, months = groupBy !== "date") =>
    dimensionGroups(kv, q.accountId, scope, dim, runs, versions, now, months);

  // Per bucket, the totals of the scope (account or key), and per bucket the grouped totals.
  let scopeTotals: Map<string, Totals>;
  let perBucket: Map<string, Map<string, Totals>>;
  if (q.keyId === undefined) {
    scopeTotals = all;
    perBucket = groupBy === "date"
      ? new Map([...all].map(([b, t]) => [b, new Map([["", t]])]))
      : await groups("", groupBy);
  } else {
    const keyId = q.keyId;
    const byKey = await groups("", "key");
    scopeTotals = new Map();
    for (const [b, m] of byKey) {
      const t = m.get(keyId);
      if (t) scopeTotals.set(b, t);
    }
    perBucket = groupBy === "date" || groupBy === "key"
      ? new Map([...scopeTotals].map(([b, t]) => [b, new Map([[keyId, t]])]))
      : await groups(keyId, groupBy);
  }
  return { scopeTotals, perBucket, versions };
}

/**
 * Usage totals of a period and the breakdown rows of its grouping, exact, read from rollups only
 * (never the audit trail), after folding in the account's pending ones. The summary comes from
 * the account's (or key's) own totals, the rows from the grouping's dimension: both are written
 * in the same atomics, and read again if a fold landed between their reads, so they agree.
 */
export async function queryUsage(kv: Deno.Kv, q: UsageQuery): Promise<UsageResult> {
  // Every recorded event counts: fold the account's pending rollup entries first.
  await compactAccount(kv, q.accountId);
  const groupBy = q.groupBy ?? "date";
  const interval = q.interval ?? defaultInterval(q.fromMs, q.toMs);
  const now = q.now ?? Date.now();
  const buckets = periodBuckets(q.fromMs, q.toMs, groupBy === "date" && interval === "hour");
  const runs = runsOf(buckets);

  // Per bucket, the totals of the scope (account or key), and per bucket the grouped totals.
  let scopeTotals = new Map<string, Totals>();
  let perBucket = new Map<string, Map<string, Totals>>();
  // The totals and the grouping's rows are separate reads: a compactor committing between them
  // (another process, or another query's fold) would make them disagree. Every fold raises the
  // account-wide request count of each bucket it touches, and counters only grow, so unchanged
  // counts after the reads mean every read saw the same state; otherwise read again.
  // (Date rows, and a key's rows by key, are the scope's totals themselves: one read.)
  const oneRead = groupBy === "date" || (q.keyId !== undefined && groupBy === "key");
  for (let attempt = 1;; attempt++) {
    const read = await readGroups(kv, q, groupBy, runs, now);
    ({ scopeTotals, perBucket } = read);
    if (oneRead || attempt === READ_ATTEMPTS) break;
    const after = await requestCounts(kv, q.accountId, buckets);
    const moved = buckets.some((b, i) => after[i] !== (read.versions.get(b.name) ?? 0n));
    if (!moved) break;
  }

  const summary = emptyTotals();
  for (const t of scopeTotals.values()) addTotals(summary, t);
  const rows = new Map<string, Totals>();
  if (groupBy === "date") {
    // Every interval of the period has a row, zeros included, so charts need no gap filling.
    for (const b of buckets) {
      const label = dateLabel(b.startMs, interval);
      let t = rows.get(label);
      if (!t) rows.set(label, t = emptyTotals());
      for (const bt of perBucket.get(b.name)?.values() ?? []) addTotals(t, bt);
    }
  } else {
    for (const byValue of perBucket.values()) {
      for (const [value, t] of byValue) {
        let r = rows.get(value);
        if (!r) rows.set(value, r = emptyTotals());
        addTotals(r, t);
      }
    }
  }
  const breakdown = [...rows.entries()].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0);
  return {
    fromMs: q.fromMs,
    toMs: q.toMs,
    groupBy,
    interval: groupBy === "date" ? interval : null,
    summary,
    breakdown,
  };
}

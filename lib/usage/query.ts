/**
 * Usage queries: a period's totals and its breakdown by date, key, provider or model, read from
 * rollups (planned by period.ts, scanned by scan.ts, from digests where current: digests.ts).
 */
import { compactAccount } from "./compact.ts";
import { addTotals, emptyTotals, type Totals } from "./rollups.ts";
import {
  type Bucket,
  dateLabel,
  defaultInterval,
  type GroupBy,
  type Interval,
  periodBuckets,
  runsOf,
} from "./period.ts";
import { requestCounts, scanRun } from "./scan.ts";
import { dimensionGroups } from "./digests.ts";

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
  now: number;
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
  const now = q.now;
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

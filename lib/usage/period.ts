/**
 * Planning a usage period: which rollup buckets cover it (whole UTC days where they can, hours at
 * the ragged ends), in runs of one grain, and the date row each bucket belongs to.
 */
import { monthOf, weekOf } from "../billing/periods.ts";
import { dayBucket, type Grain, hourBucket } from "./rollups.ts";

/** What a usage breakdown's rows can be grouped by. */
export const GROUP_BYS = ["date", "key", "provider", "model"] as const;
export type GroupBy = typeof GROUP_BYS[number];
/** The intervals of date rows. */
export const INTERVALS = ["hour", "day", "week", "month"] as const;
export type Interval = typeof INTERVALS[number];

export const HOUR_MS = 3_600_000;
export const DAY_MS = 86_400_000;

/** One rollup bucket of a period. */
export interface Bucket {
  grain: Grain;
  name: string;
  startMs: number;
}

/**
 * Splits [from, to) into whole UTC days where it can and hours at the ragged ends (hours only
 * when `hoursOnly`), so a period like 10:00–14:00 is exact at hour resolution.
 *
 * @example
 * ```ts
 * periodBuckets(Date.parse("2026-11-26T22:00Z"), Date.parse("2026-11-28T01:00Z"), false);
 * // 26T22, 26T23 (hours), 27 (a day), 28T00 (an hour)
 * ```
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
export function runsOf(buckets: Bucket[]): Bucket[][] {
  const runs: Bucket[][] = [];
  for (const b of buckets) {
    const last = runs.at(-1);
    if (last && last[0].grain === b.grain) last.push(b);
    else runs.push([b]);
  }
  return runs;
}

export const bucketEnd = (b: Bucket) => b.startMs + (b.grain === "d" ? DAY_MS : HOUR_MS);

/** The label of the date row a bucket belongs to. */
export function dateLabel(ms: number, interval: Interval): string {
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

import type { KeySpend, LimitReset } from "./types.ts";

const DAY_MS = 86_400_000;
// The last day formatted: every billed request asks for today's day and month, each a
// toISOString otherwise.
let dayStart = 0;
let dayEnd = -1;
let dayString = "";

/** UTC day "2026-11-26" of an epoch-ms time. */
export function dayOf(ms: number): string {
  if (ms >= dayStart && ms < dayEnd) return dayString;
  const iso = new Date(ms).toISOString().slice(0, 10);
  if (!Number.isFinite(ms)) return iso;
  dayStart = Math.floor(ms / DAY_MS) * DAY_MS;
  dayEnd = dayStart + DAY_MS;
  return dayString = iso;
}
/**
 * UTC month "2026-11" of an epoch-ms time.
 *
 * @example
 * ```ts
 * monthOf(Date.parse("2026-11-26T13:00:00Z")); // "2026-11"
 * ```
 */
export const monthOf = (ms: number) => dayOf(ms).slice(0, 7);

/** The Monday (UTC) that starts the week of `ms`, as a day string. */
export function weekOf(ms: number): string {
  const d = new Date(ms);
  const back = (d.getUTCDay() + 6) % 7;
  return dayOf(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() - back));
}

/** The id of the credit-limit period that contains `ms`; "all" when the limit never resets. */
export function limitPeriod(reset: LimitReset | null, ms: number): string {
  switch (reset) {
    case "daily":
      return "d:" + dayOf(ms);
    case "weekly":
      return "w:" + weekOf(ms);
    case "monthly":
      return "m:" + monthOf(ms);
    default:
      return "all";
  }
}

/** The epoch ms at which the period containing `ms` ends, or null for "never". */
export function periodEnd(reset: LimitReset | null, ms: number): number | null {
  const d = new Date(ms);
  const y = d.getUTCFullYear(), m = d.getUTCMonth(), day = d.getUTCDate();
  switch (reset) {
    case "daily":
      return Date.UTC(y, m, day + 1);
    case "weekly":
      return Date.UTC(y, m, day - ((d.getUTCDay() + 6) % 7) + 7);
    case "monthly":
      return Date.UTC(y, m + 1, 1);
    default:
      return null;
  }
}

/** Rolls the spend's period counters forward to the periods containing `ms`. Pure. */
export function currentSpend(s: KeySpend, reset: LimitReset | null, ms: number): KeySpend {
  const period = limitPeriod(reset, ms);
  const day = dayOf(ms);
  const month = monthOf(ms);
  if (s.period === period && s.day === day && s.month === month) return s;
  return {
    ...s,
    period,
    period_spend: s.period === period ? s.period_spend : 0n,
    day,
    usage_today: s.day === day ? s.usage_today : 0n,
    month,
    usage_month: s.month === month ? s.usage_month : 0n,
  };
}

/** The rate window: requests counted while less than 60 s old. */
const RATE_WINDOW_S = 60;

/** The entries of a rate window still inside the 60 s before `ms`. Pure. */
export function rateWindow(
  rate: [number, number][] | undefined,
  ms: number,
): [number, number][] {
  const sec = Math.floor(ms / 1000);
  return (rate ?? []).filter(([s]) => sec - s < RATE_WINDOW_S);
}

/**
 * Seconds until one more request fits `rpm` requests per 60 s, or 0 when it fits now. `window`
 * comes from `rateWindow` (oldest first).
 */
export function rateLimitWait(window: [number, number][], rpm: number, ms: number): number {
  let total = window.reduce((a, [, n]) => a + n, 0);
  if (total < rpm) return 0;
  for (const [s, n] of window) {
    total -= n;
    if (total < rpm) return Math.max(1, Math.ceil(((s + RATE_WINDOW_S) * 1000 - ms) / 1000));
  }
  return RATE_WINDOW_S;
}

/** The window with one more request at `ms`. Pure. */
export function countRequest(window: [number, number][], ms: number): [number, number][] {
  const sec = Math.floor(ms / 1000);
  const last = window.at(-1);
  if (last && last[0] === sec) return [...window.slice(0, -1), [sec, last[1] + 1]];
  return [...window, [sec, 1]];
}

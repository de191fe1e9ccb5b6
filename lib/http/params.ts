/** What a request may name in its path and query, checked before anything reads KV. */
import { parseUsd } from "../money.ts";
import { isId, isRequestId } from "../ids.ts";
import { badRequest } from "../errors.ts";
import {
  DAY_MS,
  GROUP_BYS,
  type GroupBy,
  HOUR_MS,
  type Interval,
  INTERVALS,
} from "../usage/period.ts";
import { z } from "zod";

/**
 * A JSON number's decimal digits: its shortest form, or, for one JS writes with an exponent below 1
 * (0.0000001 is "1e-7"), its 9-decimal form when that is the same number. Larger exponents stay
 * and are refused.
 */
function numberText(v: number): string {
  const text = String(v);
  if (!/e-/i.test(text) || Math.abs(v) >= 1) return text;
  const fixed = v.toFixed(9);
  return Number(fixed) === v ? fixed : text;
}

/** A USD amount as a decimal string ("12.5") or a JSON number, to exact nano-USD. */
export const usdAmount = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const text = typeof v === "number" ? numberText(v) : v;
  const n = /e/i.test(text) ? null : parseUsd(text);
  if (n === null) {
    ctx.addIssue({ code: "custom", message: "must be a USD amount with at most 9 decimals" });
    return z.NEVER;
  }
  return n;
});

/**
 * The date-time string as UTC epoch ms, or NaN: a real calendar day, a time without a zone in UTC.
 *
 * @example
 * ```ts
 * isoTimeMs("2026-11-26T10:00"); // 10:00 UTC
 * isoTimeMs("2026-02-30"); // NaN
 * ```
 */
export function isoTimeMs(v: string): number {
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](.+))?$/.exec(v);
  if (!m) return NaN;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const leap = y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0);
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][mo - 1];
  // Date.parse would take "2026-02-30" for March 2.
  if (days === undefined || d < 1 || d > days) return NaN;
  const date = `${m[1]}-${m[2]}-${m[3]}`;
  if (m[4] === undefined) return Date.parse(date + "T00:00:00Z");
  // Without a zone Date.parse reads the server's local time; the API's periods are UTC.
  const zoned = /(?:[Zz]|[+-]\d{2}:?\d{2})$/.test(m[4]);
  return Date.parse(`${date}T${m[4]}${zoned ? "" : "Z"}`);
}

/**
 * Parses an ISO date ("2026-11-26") or time; throws 400 naming the parameter.
 *
 * @example
 * ```ts
 * parseTime("from", "2026-11-26"); // epoch ms of that UTC midnight
 * ```
 */
export function parseTime(name: string, v: string): number {
  const ms = isoTimeMs(v);
  if (!Number.isFinite(ms)) throw badRequest(`Invalid '${name}': must be an ISO date or time`);
  return ms;
}

/**
 * `limit` (default 100, at most 1000).
 *
 * @example
 * ```ts
 * parseLimit(undefined); // 100
 * parseLimit("0"); // throws 400
 * ```
 */
export function parseLimit(v: string | undefined): number {
  if (v === undefined) return 100;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 1000) {
    throw badRequest("Invalid 'limit': must be a whole number from 1 to 1000");
  }
  return n;
}

/** A query parameter as the document shows it: a string, or absent. */
export const queryParam = (description: string, extra: Record<string, unknown> = {}) =>
  z.string().optional().meta({ description, ...extra });

/** The query of a paged listing (`parseLimit`, `parseCursor`). */
export const PageQuery = z.object({
  limit: queryParam("How many rows: a whole number from 1 to 1000 (default 100)"),
  cursor: queryParam("The `next_cursor` of the page before (opaque)"),
});

/** The period and grouping of a usage query (`usageParams`). */
export const UsageQuery = z.object({
  from: queryParam("Start: an ISO date or time (UTC where it names no zone); default 30 days"),
  to: queryParam("End, exclusive (a date includes its whole day); default the end of today"),
  group_by: queryParam("What each breakdown row is (default date)", { enum: GROUP_BYS }),
  interval: queryParam("Date rows' interval (only with group_by=date)", { enum: INTERVALS }),
});

/** A path's id parameter, as `parseId` checks it. */
export const idParam = (prefix: string) =>
  z.string().meta({ description: `An id of the form ${prefix}_…`, example: `${prefix}_01m9…` });

/**
 * A KV list cursor as given back by `next_cursor`.
 *
 * @example
 * ```ts
 * listLedgerByAccount(kv, accountId, { limit, cursor: parseCursor(q.cursor) });
 * ```
 */
export function parseCursor(v: string | undefined): string | undefined {
  if (v === undefined || v === "") return undefined;
  if (!/^[A-Za-z0-9+/=_-]{1,2000}$/.test(v)) throw badRequest("Invalid 'cursor'");
  return v;
}

/**
 * An id from a path or query (`key_…`, `acct_…`) checked for the shape `newId` gives before it
 * reaches KV: any other text is 400 naming the parameter, a well-formed id of nothing is the
 * caller's 404.
 *
 * @example
 * ```ts
 * parseId("id", "key", c.req.param("id") ?? ""); // 400 unless key_ and 24 base32 characters
 * ```
 */
export function parseId(name: string, prefix: string, v: string): string {
  if (!isId(prefix, v)) {
    throw badRequest(`Invalid '${name}': not an id of the form ${prefix}_…`);
  }
  return v;
}

/**
 * A request id (`req_…`, or `req_….N` for a failed attempt), as `parseId` checks ids.
 *
 * @example
 * ```ts
 * parseRequestId("request_id", "req_01m9….2"); // a failed attempt's id passes
 * ```
 */
export function parseRequestId(name: string, v: string): string {
  if (!isRequestId(v)) throw badRequest(`Invalid '${name}': not a request id of the form req_…`);
  return v;
}

/**
 * Whether every percent-escape in `url` decodes to UTF-8 text. Hono leaves an escape that does not
 * (`%ff`, `%e2%82`) in a parameter as it came, so such a URL is refused before a route reads it.
 */
export function percentDecodes(url: string): boolean {
  if (!url.includes("%")) return true;
  try {
    decodeURIComponent(url);
    return true;
  } catch {
    return false;
  }
}

/** The longest period a usage query covers. */
const MAX_PERIOD_DAYS = 1830;
/** `interval=hour` is offered for periods up to this long. */
const MAX_HOUR_ROWS_DAYS = 31;

const isDate = (v: string) => /^\d{4}-\d{2}-\d{2}$/.test(v);

/**
 * Reads `from`, `to`, `group_by` and `interval` of a usage query; throws a 400 naming the
 * parameter. A date `to` includes that whole day; times are widened to whole UTC hours (`from`
 * down, `to` up). Default: the 30 UTC days ending with today.
 *
 * @example
 * ```ts
 * const { fromMs, toMs, groupBy } = usageParams((n) => c.req.query(n), svc.now());
 * ```
 */
export function usageParams(get: (name: string) => string | undefined, now: number) {
  const from = get("from") || undefined, to = get("to") || undefined;
  let toMs: number;
  if (to === undefined) toMs = Math.floor(now / DAY_MS) * DAY_MS + DAY_MS;
  else {
    toMs = parseTime("to", to);
    if (isDate(to)) toMs += DAY_MS;
    toMs = Math.ceil(toMs / HOUR_MS) * HOUR_MS;
  }
  let fromMs = from === undefined ? toMs - 30 * DAY_MS : parseTime("from", from);
  fromMs = Math.floor(fromMs / HOUR_MS) * HOUR_MS;
  if (fromMs < 0 || toMs > Date.UTC(9999, 0, 1)) {
    throw badRequest("Invalid 'from': the period must lie between 1970 and 9999");
  }
  if (fromMs >= toMs) throw badRequest("Invalid 'from': must be before 'to'");
  if (toMs - fromMs > MAX_PERIOD_DAYS * DAY_MS) {
    throw badRequest(`Invalid 'from': the period may span at most ${MAX_PERIOD_DAYS} days`);
  }

  const g = get("group_by") || undefined;
  if (g !== undefined && !(GROUP_BYS as readonly string[]).includes(g)) {
    throw badRequest("Invalid 'group_by': must be date, key, provider or model");
  }
  const i = get("interval") || undefined;
  if (i !== undefined && !(INTERVALS as readonly string[]).includes(i)) {
    throw badRequest("Invalid 'interval': must be hour, day, week or month");
  }
  if (i !== undefined && g !== undefined && g !== "date") {
    throw badRequest("Invalid 'interval': applies only to group_by=date");
  }
  if (i === "hour" && toMs - fromMs > MAX_HOUR_ROWS_DAYS * DAY_MS) {
    throw badRequest(
      `Invalid 'interval': hour rows are offered for periods up to ${MAX_HOUR_ROWS_DAYS} days`,
    );
  }
  return {
    fromMs,
    toMs,
    groupBy: g as GroupBy | undefined,
    interval: i as Interval | undefined,
  };
}

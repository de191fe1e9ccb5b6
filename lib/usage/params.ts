import { badRequest } from "../http/errors.ts";
import { parseTime } from "../http/params.ts";
import { DAY_MS, type GroupBy, HOUR_MS, type Interval } from "./query.ts";

/** The longest period a usage query covers. */
const MAX_PERIOD_DAYS = 1830;
/** `interval=hour` is offered for periods up to this long. */
const MAX_HOUR_ROWS_DAYS = 31;

const isDate = (v: string) => /^\d{4}-\d{2}-\d{2}$/.test(v);

/**
 * Reads `from`, `to`, `group_by` and `interval` of a usage query; throws a 400 naming the
 * parameter. A date `to` includes that whole day; times are widened to whole UTC hours (`from`
 * down, `to` up). Default: the 30 UTC days ending with today.
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
  if (g !== undefined && g !== "date" && g !== "key" && g !== "provider" && g !== "model") {
    throw badRequest("Invalid 'group_by': must be date, key, provider or model");
  }
  const i = get("interval") || undefined;
  if (i !== undefined && i !== "hour" && i !== "day" && i !== "week" && i !== "month") {
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

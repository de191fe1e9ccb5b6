/** Pieces the Overview and Usage pages share: the period, the breakdown and its table. */
import type { GroupBy } from "../usage/period.ts";
import { queryUsage, type UsageQuery } from "../usage/query.ts";
import { isoTimeMs, usageParams } from "../http/params.ts";
import { type UsageJson, usageJson } from "../http/presenters.ts";
import { ApiError } from "../errors.ts";
import { listKeysByAccount } from "../auth/keys.ts";
import { dayBucket } from "../usage/rollups.ts";
import { Count, Empty, Money, Notice, Percent } from "./layout.tsx";

export type UsageResult = UsageJson;
export type UsageRow = UsageJson["breakdown"][number];

/** A usage query's answer as GET /v1/usage shows it (the same function, the same figures). */
export async function readUsage(kv: Deno.Kv, q: UsageQuery): Promise<UsageJson> {
  return usageJson(await queryUsage(kv, q));
}

const DAY = 86_400_000;
export const PERIODS = { "7d": 7, "30d": 30, "90d": 90 } as const;

export interface Period {
  period: keyof typeof PERIODS | "custom";
  fromDay: string;
  toDay: string;
  error?: string;
}

// A real calendar day, as the API reads it (Date.parse takes "2026-02-30" for March 2).
const isDay = (v: string | null): v is string =>
  !!v && /^\d{4}-\d{2}-\d{2}$/.test(v) && Number.isFinite(isoTimeMs(v));

/** Why GET /v1/usage would refuse these dates (too long a period, before 1970), or null. */
function refusal(from: string, to: string, now: number): string | null {
  try {
    usageParams((n) => n === "from" ? from : n === "to" ? to : undefined, now);
    return null;
  } catch (e) {
    if (e instanceof ApiError) return e.message.replace(/^Invalid '\w+': /, "");
    throw e;
  }
}

/**
 * The period a page shows: the last 7, 30 (default, as GET /v1/usage) or 90 days ending today,
 * or custom dates.
 */
export function readPeriod(q: URLSearchParams, now: number): Period {
  const p = q.get("period") ?? "30d";
  if (p === "custom") {
    const from = q.get("from"), to = q.get("to");
    const d = readPeriod(new URLSearchParams(), now);
    if (isDay(from) && isDay(to) && from <= to) {
      const why = refusal(from, to, now);
      if (why === null) return { period: "custom", fromDay: from, toDay: to };
      return { ...d, error: `These dates cannot be shown: ${why}.` };
    }
    return { ...d, error: "Choose a start and an end date, the start not after the end." };
  }
  const days = PERIODS[p as keyof typeof PERIODS] ?? 30;
  const preset: Period = {
    period: (p in PERIODS ? p : "30d") as Period["period"],
    fromDay: dayBucket(now - (days - 1) * DAY),
    toDay: dayBucket(now),
  };
  // Dates edited in the form while a preset was selected mean those dates. The form also sends
  // the dates it showed (`shown_from`, `shown_to`): dates left as shown mean the chosen preset.
  const from = q.get("from"), to = q.get("to");
  const shown = q.has("shown_from")
    ? { fromDay: q.get("shown_from"), toDay: q.get("shown_to") }
    : preset;
  if (isDay(from) && isDay(to) && (from !== shown.fromDay || to !== shown.toDay)) {
    const custom = new URLSearchParams(q);
    custom.set("period", "custom");
    return readPeriod(custom, now);
  }
  return preset;
}

/**
 * The usage query of a period, read through the same parameter rules as GET /v1/usage
 * (`from`/`to` as dates, the whole of `to` included), so the page and the API agree exactly.
 */
export function usageQueryOf(
  accountId: string,
  period: Period,
  now: number,
  extra: Partial<UsageQuery> = {},
): UsageQuery {
  const p = usageParams(
    (n) => n === "from" ? period.fromDay : n === "to" ? period.toDay : undefined,
    now,
  );
  return { accountId, fromMs: p.fromMs, toMs: p.toMs, now, ...extra };
}

export function readGroupBy(q: URLSearchParams, fallback: GroupBy): GroupBy {
  const g = q.get("group_by");
  return g === "date" || g === "key" || g === "provider" || g === "model" ? g : fallback;
}

/** The most days a period has: GET /v1/usage's longest period (1830 days). */
const MAX_DAYS = 1830;

/** Every day of a period, for charts that must show the quiet days too. */
export function daysOf(fromDay: string, toDay: string): string[] {
  const out: string[] = [];
  for (let t = Date.parse(fromDay); t <= Date.parse(toDay) && out.length < MAX_DAYS; t += DAY) {
    out.push(dayBucket(t));
  }
  return out;
}

/** Key ids to names (revoked keys included: their history stays). */
export async function keyNames(
  kv: Deno.Kv,
  accountId: string,
  now: number,
): Promise<Record<string, string>> {
  const keys = await listKeysByAccount(kv, accountId, now);
  return Object.fromEntries(keys.map(({ key }) => [key.id, key.name]));
}

/** The `key_id` filter of a GET form: all keys, or one of the account's (by name). */
export function KeyFilter(
  { names, selected }: { names: Record<string, string>; selected: string },
) {
  return (
    <label>
      Key
      <select name="key_id">
        <option value="">All keys</option>
        {Object.entries(names).map(([id, name]) => (
          <option key={id} value={id} selected={id === selected}>{name}</option>
        ))}
      </select>
    </label>
  );
}

const GROUP_LABEL: Record<GroupBy, string> = {
  date: "Date",
  key: "Key",
  provider: "Provider",
  model: "Model",
};

/** The period and grouping form (a plain GET form: works without script), and what was wrong with the period. */
export function PeriodForm(
  { period, groupBy, action, keys, keyId }: {
    period: Period;
    groupBy: GroupBy;
    action: string;
    /** With key names: a key filter (the Usage page). */
    keys?: Record<string, string>;
    keyId?: string | null;
  },
) {
  return (
    <>
      <form method="get" action={action} class="filters" aria-label="Period and grouping">
        <label>
          Period
          <select name="period">
            <option value="7d" selected={period.period === "7d"}>Last 7 days</option>
            <option value="30d" selected={period.period === "30d"}>Last 30 days</option>
            <option value="90d" selected={period.period === "90d"}>Last 90 days</option>
            <option value="custom" selected={period.period === "custom"}>Custom dates</option>
          </select>
        </label>
        <label>
          From<input type="date" name="from" value={period.fromDay} />
        </label>
        <label>
          To<input type="date" name="to" value={period.toDay} />
        </label>
        <input type="hidden" name="shown_from" value={period.fromDay} />
        <input type="hidden" name="shown_to" value={period.toDay} />
        {keys ? <KeyFilter names={keys} selected={keyId ?? ""} /> : null}
        <label>
          Break down by
          <select name="group_by">
            {(Object.keys(GROUP_LABEL) as GroupBy[]).map((g) => (
              <option value={g} selected={g === groupBy}>{GROUP_LABEL[g]}</option>
            ))}
          </select>
        </label>
        <button type="submit" class="secondary">Apply</button>
      </form>
      {period.error ? <Notice kind="error">{period.error}</Notice> : null}
    </>
  );
}

/** The Breakdown card: the breakdown rows as a table, newest date first when grouped by date. */
export function Breakdown(
  { rows, groupBy, names }: { rows: UsageRow[]; groupBy: GroupBy; names: Record<string, string> },
) {
  return (
    <section class="card">
      <h2>Breakdown</h2>
      <BreakdownTable rows={rows} groupBy={groupBy} names={names} />
    </section>
  );
}

function BreakdownTable(
  { rows, groupBy, names }: { rows: UsageRow[]; groupBy: GroupBy; names: Record<string, string> },
) {
  // Date rows cover every day of the period; the table lists the days with activity.
  if (groupBy === "date") rows = rows.filter((r) => r.requests > 0 || r.cost !== "0");
  if (rows.length === 0) {
    return <Empty>No usage in this period yet. Requests made with your keys show up here.</Empty>;
  }
  const sorted = groupBy === "date" ? [...rows].reverse() : rows;
  return (
    <div class="table-wrap">
      <table class="data" id="breakdown">
        <caption class="sr-only">Usage by {GROUP_LABEL[groupBy].toLowerCase()}</caption>
        <thead>
          <tr>
            <th scope="col">{GROUP_LABEL[groupBy]}</th>
            <th scope="col" class="r">Requests</th>
            <th scope="col" class="r">Prompt tokens</th>
            <th scope="col" class="r">Completion tokens</th>
            <th scope="col" class="r">Cached tokens</th>
            <th scope="col" class="r">Spend</th>
            <th scope="col" class="r">Market rate</th>
            <th scope="col" class="r">Saved</th>
          </tr>
        </thead>
        <tbody>
          {sorted.map((r) => (
            <tr data-group={r.group}>
              <th scope="row">
                {groupBy === "key" ? (names[r.group] ?? r.group) : r.group}
                {groupBy === "key" ? <span class="sub">{r.group}</span> : null}
              </th>
              <td class="r">
                <Count n={r.requests} />
              </td>
              <td class="r">
                <Count n={r.prompt_tokens} />
              </td>
              <td class="r">
                <Count n={r.completion_tokens} />
              </td>
              <td class="r">
                <Count n={r.cached_tokens} />
              </td>
              <td class="r cost">
                <Money usd={r.cost} />
              </td>
              <td class="r">
                <Money usd={r.market_cost} />
              </td>
              <td class="r">
                <Money usd={r.savings} />{" "}
                <span class="sub">
                  (<Percent p={r.savings_percent} />)
                </span>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

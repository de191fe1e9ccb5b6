import type { PageConfig, PageCtx, PageProps } from "../../lib/render/page.tsx";
import type { UsageQuery } from "../../lib/usage/query.ts";
import { defaultInterval, type GroupBy } from "../../lib/usage/period.ts";
import { Count, Metric, Money, Percent } from "../../lib/render/layout.tsx";
import { Island } from "../../lib/render/island.tsx";
import UsageCharts, { type UsageChartsProps } from "../../islands/UsageCharts.tsx";
import {
  Breakdown,
  daysOf,
  keyNames,
  type Period,
  PeriodForm,
  readGroupBy,
  readPeriod,
  readUsage,
  usageQueryOf,
  type UsageResult,
} from "../../lib/render/usage_view.tsx";

export const config: PageConfig = {
  title: "Usage",
  auth: "user",
  layout: "dashboard",
  nav: "usage",
};

interface Data {
  period: Period;
  groupBy: GroupBy;
  usage: UsageResult;
  names: Record<string, string>;
  keyId: string | null;
  charts: UsageChartsProps;
}

export const handler = {
  async GET(ctx: PageCtx): Promise<{ data: Data }> {
    const accountId = ctx.viewer!.account!.id;
    const q = ctx.url.searchParams;
    const period = readPeriod(q, ctx.svc.now());
    const groupBy = readGroupBy(q, "date");
    const names = await keyNames(ctx.svc.kv, accountId, ctx.svc.now());
    // One key's usage (GET /v1/keys/{id}/usage), when a key of this account is chosen.
    const keyId = names[q.get("key_id") ?? ""] !== undefined ? q.get("key_id")! : undefined;
    const now = ctx.svc.now();
    const kv = ctx.svc.kv;
    const base = usageQueryOf(accountId, period, now, { keyId });
    const query = (extra: Partial<UsageQuery>) => readUsage(kv, { ...base, ...extra });
    // Grouped by date over more than two days, the breakdown already is the daily chart's
    // query: asked once, not twice (each query reads the period's account totals again).
    const daily = groupBy === "date" && defaultInterval(base.fromMs, base.toMs) === "day";
    const [usage, byDay, byModel, byProvider] = await Promise.all([
      query({ groupBy }),
      daily ? null : query({ groupBy: "date", interval: "day" }),
      query({ groupBy: "model" }),
      query({ groupBy: "provider" }),
    ]);
    const byDate = byDay ?? usage;
    const perDay = new Map(byDate.breakdown.map((r) => [r.group, r]));
    const byCost = (a: { cost: string }, b: { cost: string }) => Number(b.cost) - Number(a.cost);
    return {
      data: {
        period,
        groupBy,
        usage,
        names,
        keyId: keyId ?? null,
        charts: {
          days: daysOf(period.fromDay, period.toDay).map((day) => ({
            day,
            cost: perDay.get(day)?.cost ?? "0",
            market_cost: perDay.get(day)?.market_cost ?? "0",
          })),
          models: byModel.breakdown.map((r) => ({ label: r.group, cost: r.cost })).sort(byCost),
          providers: byProvider.breakdown.map((r) => ({ label: r.group, cost: r.cost })).sort(
            byCost,
          ),
        },
      },
    };
  },
};

/** Requests, tokens, cost and savings for a period, with charts and the breakdown. */
export default function Usage({ data }: PageProps<Data>) {
  const s = data.usage.summary;
  return (
    <>
      <PeriodForm
        period={data.period}
        groupBy={data.groupBy}
        action="/dashboard/usage"
        keys={data.names}
        keyId={data.keyId}
      />
      <div class="metrics">
        <Metric label="Requests" id="usage-requests">
          <Count n={s.requests} />
        </Metric>
        <Metric
          label="Tokens"
          id="usage-tokens"
          hint={
            <>
              <Count n={s.prompt_tokens} /> prompt (<Count n={s.cached_tokens} /> cached) ·{" "}
              <Count n={s.completion_tokens} /> completion
            </>
          }
        >
          <Count n={s.prompt_tokens + s.completion_tokens} />
        </Metric>
        <Metric
          label="Cost"
          id="usage-cost"
          hint={
            <>
              Market rate <Money usd={s.market_cost} />
            </>
          }
        >
          <Money usd={s.cost} />
        </Metric>
        <Metric
          label="Savings"
          id="usage-savings"
          hint={
            <>
              <Percent p={s.savings_percent} /> below market
            </>
          }
        >
          <Money usd={s.savings} />
        </Metric>
      </div>
      <Island component={UsageCharts} props={data.charts} />
      <Breakdown rows={data.usage.breakdown} groupBy={data.groupBy} names={data.names} />
    </>
  );
}

import type { PageConfig, PageCtx, PageProps } from "../../lib/render/page.tsx";
import type { GroupBy } from "../../lib/usage/period.ts";
import { getBalance } from "../../lib/billing/accounts.ts";
import { formatUsd } from "../../lib/money.ts";
import { Count, Metric, Money, Percent } from "../../lib/render/layout.tsx";
import {
  Breakdown,
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
  title: "Overview",
  auth: "user",
  layout: "dashboard",
  nav: "overview",
};

interface Data {
  period: Period;
  groupBy: GroupBy;
  usage: UsageResult;
  names: Record<string, string>;
  available: string;
  baseUrl: string;
}

export const handler = {
  async GET(ctx: PageCtx): Promise<{ data: Data }> {
    const accountId = ctx.viewer!.account!.id;
    const q = ctx.url.searchParams;
    const period = readPeriod(q, ctx.svc.now());
    const groupBy = readGroupBy(q, "key");
    const [usage, names, balance] = await Promise.all([
      readUsage(ctx.svc.kv, usageQueryOf(accountId, period, ctx.svc.now(), { groupBy })),
      keyNames(ctx.svc.kv, accountId, ctx.svc.now()),
      getBalance(ctx.svc.kv, accountId),
    ]);
    return {
      data: {
        period,
        groupBy,
        usage,
        names,
        available: formatUsd(balance.balance - balance.reserved),
        baseUrl: `${ctx.svc.config.publicUrl ?? ctx.url.origin}/v1`,
      },
    };
  },
};

/** Total Spend, Market Rate and You Saved for a period, and where the money went. */
export default function Overview({ data }: PageProps<Data>) {
  const s = data.usage.summary;
  return (
    <>
      <PeriodForm period={data.period} groupBy={data.groupBy} action="/dashboard" />
      <p class="muted period-label">
        {data.period.fromDay} to {data.period.toDay} (UTC)
      </p>
      {s.requests === 0 ? <GettingStarted baseUrl={data.baseUrl} /> : null}
      <div class="metrics">
        <Metric label="Total Spend" id="total-spend" hint="What you actually paid">
          <Money usd={s.cost} />
        </Metric>
        <Metric label="Market Rate" id="market-rate" hint="At the providers' list prices">
          <Money usd={s.market_cost} />
        </Metric>
        <Metric
          label="You Saved"
          id="you-saved"
          hint={
            <>
              <Percent p={s.savings_percent} /> below market rate
            </>
          }
        >
          <Money usd={s.savings} />
        </Metric>
        <Metric
          label="Requests"
          id="requests"
          hint={
            <>
              Available credit <Money usd={data.available} />
            </>
          }
        >
          <Count n={s.requests} />
        </Metric>
      </div>
      <Breakdown rows={data.usage.breakdown} groupBy={data.groupBy} names={data.names} />
    </>
  );
}

/** The three steps from a new account to the first request. */
function GettingStarted({ baseUrl }: { baseUrl: string }) {
  return (
    <section class="card getting-started" aria-labelledby="start-title">
      <h2 id="start-title">Get started</h2>
      <ol>
        <li>
          <a href="/dashboard/settings/billing">Buy credit</a> in Settings › Billing.
        </li>
        <li>
          <a href="/dashboard/keys">Create an inference key</a> and copy it.
        </li>
        <li>
          Point your OpenAI SDK at the router:
          <pre><code>{`const client = new OpenAI({ apiKey: "er-…", baseURL: "${baseUrl}" });`}</code></pre>
        </li>
      </ol>
      <p class="muted">Your spend, market rate and savings show here after the first request.</p>
    </section>
  );
}

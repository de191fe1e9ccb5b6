import {
  errorPage,
  type PageConfig,
  type PageCtx,
  type PageProps,
} from "../../../../../lib/render/page.tsx";
import { monthRange, monthStatement } from "../../../../../lib/billing/statements.ts";
import { statementJson } from "../../../../../lib/http/presenters.ts";
import { Island } from "../../../../../lib/render/island.tsx";
import { Money } from "../../../../../lib/render/layout.tsx";
import { formatCount, formatMonth, formatTime } from "../../../../../lib/render/format.ts";
import PrintButton from "../../../../../islands/PrintButton.tsx";

export const config: PageConfig = {
  title: "Statement",
  auth: "user",
  layout: "dashboard",
  nav: "billing",
};

interface Data {
  account: string;
  statement: ReturnType<typeof statementJson>;
  generatedAt: string;
  /** Whether the month is still running: the statement is the month so far. */
  current: boolean;
}

export const handler = {
  async GET(ctx: PageCtx): Promise<Response | { data: Data }> {
    const month = ctx.c.req.param("month") ?? "";
    const range = monthRange(month);
    const now = ctx.svc.now();
    if (!range || range[0] > now) {
      return errorPage(config, ctx.viewer, 404, "There is no statement for that month.");
    }
    const account = ctx.viewer!.account!;
    // The same statement as GET /v1/statements/{month}.
    const s = await monthStatement(ctx.svc.kv, account.id, month, now);
    return {
      data: {
        account: account.name,
        statement: statementJson(s),
        generatedAt: new Date(now).toISOString(),
        current: range[1] > now,
      },
    };
  },
};

/** One line of the statement's summary. */
function Line({ label, usd, id }: { label: string; usd: string; id: string }) {
  return (
    <tr id={id}>
      <th scope="row">{label}</th>
      <td class="r" data-usd={usd}>
        <Money usd={usd} />
      </td>
    </tr>
  );
}

/** A printable monthly statement, with its CSV. */
export default function Statement({ data }: PageProps<Data>) {
  const s = data.statement;
  return (
    <article class="statement card">
      <div class="no-print btns">
        <a class="button secondary" href="/dashboard/settings/billing">Back to billing</a>
        <a
          class="button secondary"
          id="statement-csv"
          href={`/v1/statements/${s.month}?format=csv`}
        >
          Download CSV
        </a>
        <Island component={PrintButton} props={{}} />
      </div>
      <h2>
        {data.account}: statement for {formatMonth(s.month)}
      </h2>
      <p class="muted">
        UTC month {s.month}
        {data.current ? ", so far" : ""}; generated{" "}
        {formatTime(data.generatedAt)}. Amounts in USD, signed as in the ledger.
      </p>
      <table class="data summary">
        <tbody>
          <Line id="opening" label="Opening balance" usd={s.opening_balance} />
          <Line id="purchases" label="Purchases" usd={s.purchases} />
          <Line id="usage-total" label="Usage" usd={s.usage.total} />
          <Line id="adjustments" label="Adjustments" usd={s.adjustments} />
          <Line id="refunds" label="Refunds" usd={s.refunds} />
          <Line id="closing" label="Closing balance" usd={s.closing_balance} />
        </tbody>
      </table>
      <h3>Usage by provider and model</h3>
      {s.usage.by_model.length === 0
        ? <p class="muted">No usage this month.</p>
        : (
          <table class="data" id="statement-usage">
            <thead>
              <tr>
                <th scope="col">Provider</th>
                <th scope="col">Model</th>
                <th scope="col" class="r">Requests</th>
                <th scope="col" class="r">Market rate</th>
                <th scope="col" class="r">Cost</th>
              </tr>
            </thead>
            <tbody>
              {s.usage.by_model.map((l) => (
                <tr data-model={`${l.provider}/${l.model}`}>
                  <td>{l.provider}</td>
                  <td>{l.model}</td>
                  <td class="r">{formatCount(l.requests)}</td>
                  <td class="r">
                    <Money usd={l.market_cost} />
                  </td>
                  <td class="r cost" data-usd={l.cost}>
                    <Money usd={l.cost} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
    </article>
  );
}

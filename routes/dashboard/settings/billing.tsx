import {
  type PageConfig,
  type PageCtx,
  pageOfUrl,
  type PageProps,
} from "../../../lib/render/page.tsx";
import { getBalance } from "../../../lib/billing/accounts.ts";
import { listLedgerByAccount } from "../../../lib/billing/ledger.ts";
import { ledgerJson, packageJson } from "../../../lib/http/presenters.ts";
import type { LedgerType } from "../../../lib/billing/types.ts";
import { formatUsd } from "../../../lib/money.ts";
import { Island } from "../../../lib/render/island.tsx";
import BuyCredits, { type BuyCreditsProps } from "../../../islands/BuyCredits.tsx";
import SpendControls, { type SpendControlsProps } from "../../../islands/SpendControls.tsx";
import {
  autoTopupJson,
  cardJson,
  getAutoTopup,
  getCard,
} from "../../../lib/billing/topup/records.ts";
import { getAlertSettings } from "../../../lib/billing/alerts.ts";
import { Metric, Money, Notice, OlderLink } from "../../../lib/render/layout.tsx";
import { LedgerTable } from "../../../lib/render/ledger.tsx";
import { monthsBetween } from "../../../lib/billing/statements.ts";
import { formatMonth } from "../../../lib/render/format.ts";

export const config: PageConfig = {
  title: "Settings › Billing",
  auth: "user",
  layout: "dashboard",
  nav: "billing",
};

const TYPES: LedgerType[] = ["purchase", "usage_debit", "adjustment", "refund"];
/** The most months listed with statements (older ones stay at GET /v1/statements/{month}). */
const STATEMENT_MONTHS = 24;

interface Data {
  spend: SpendControlsProps;
  credits: Record<"balance" | "reserved" | "available" | "total_purchased" | "total_used", string>;
  buy: BuyCreditsProps;
  tx: ReturnType<typeof ledgerJson>[];
  nextCursor: string | null;
  type: LedgerType | null;
  notice: string | null;
  /** The months with a statement, newest first. */
  months: string[];
}

export const handler = {
  async GET(ctx: PageCtx): Promise<{ data: Data }> {
    const { kv, config: cfg } = ctx.svc;
    const accountId = ctx.viewer!.account!.id;
    const q = ctx.url.searchParams;
    const t = q.get("type");
    const type = TYPES.includes(t as LedgerType) ? t as LedgerType : null;
    const [b, page, card, topup, alerts] = await Promise.all([
      getBalance(kv, accountId),
      pageOfUrl(
        ctx.url,
        (cursor) =>
          listLedgerByAccount(kv, accountId, { type: type ?? undefined, limit: 50, cursor }),
      ),
      getCard(kv, accountId),
      getAutoTopup(kv, accountId),
      getAlertSettings(kv, accountId),
    ]);
    const low = alerts.value?.low_balance_threshold ?? null;
    const purchased = cfg.packages.find((p) => p.id === q.get("purchased"));
    return {
      data: {
        // The same figures as GET /v1/credits.
        credits: {
          balance: formatUsd(b.balance),
          reserved: formatUsd(b.reserved),
          available: formatUsd(b.balance - b.reserved),
          total_purchased: formatUsd(b.total_purchased),
          total_used: formatUsd(b.total_used),
        },
        // The same figures as GET /v1/billing/payment_method, /v1/billing/auto_topup, /v1/alerts.
        spend: {
          mode: cfg.billingMode,
          csrf: ctx.viewer!.session.csrf,
          card: card && cardJson(card),
          topup: autoTopupJson(topup.value, ctx.svc.now()),
          lowBalanceThreshold: low === null ? null : formatUsd(low),
        },
        buy: {
          packages: cfg.packages.map(packageJson),
          mode: cfg.billingMode,
          csrf: ctx.viewer!.session.csrf,
        },
        tx: page.data.map(ledgerJson),
        nextCursor: page.next_cursor,
        type,
        notice: purchased
          ? `${purchased.name} package bought: the credit is in your balance.`
          : q.get("checkout") === "success"
          ? "Payment received: the credit appears as soon as Stripe confirms it."
          : q.get("checkout") === "cancelled"
          ? "Checkout was cancelled: nothing was charged."
          : q.get("card") === "saved"
          ? "Card saved: it appears here as soon as Stripe confirms it."
          : q.get("card") === "cancelled"
          ? "No card was saved."
          : null,
        months: monthsBetween(
          Date.parse(ctx.viewer!.account!.created_at),
          ctx.svc.now(),
          STATEMENT_MONTHS,
        ),
      },
    };
  },
};

/** Balance, credit packages and the transaction history. */
export default function Billing({ data, url }: PageProps<Data>) {
  const c = data.credits;
  return (
    <>
      {data.notice ? <Notice kind="ok">{data.notice}</Notice> : null}
      <div class="metrics">
        <Metric label="Balance" id="balance">
          <Money usd={c.balance} />
        </Metric>
        <Metric
          label="Available"
          id="available"
          hint={
            <>
              Held for requests in flight <Money usd={c.reserved} />
            </>
          }
        >
          <Money usd={c.available} />
        </Metric>
        <Metric label="Total purchased" id="total-purchased">
          <Money usd={c.total_purchased} />
        </Metric>
        <Metric label="Total used" id="total-used">
          <Money usd={c.total_used} />
        </Metric>
      </div>
      <section class="card">
        <h2>Buy credit</h2>
        <Island component={BuyCredits} props={data.buy} />
      </section>
      <Island component={SpendControls} props={data.spend} />
      <section class="card">
        <h2>Statements</h2>
        <p class="muted">
          Each UTC month's opening balance, purchases, usage by provider and model, adjustments,
          refunds and closing balance, adding up to the transaction history.
        </p>
        <ul class="statements" id="statements">
          {data.months.map((m) => (
            <li data-month={m}>
              <a href={`/dashboard/settings/billing/statements/${m}`}>{formatMonth(m)}</a>{" "}
              <a class="muted" href={`/v1/statements/${m}?format=csv`}>CSV</a>
            </li>
          ))}
        </ul>
      </section>
      <section class="card">
        <h2>Transaction history</h2>
        <form method="get" class="filters" aria-label="Filter transactions">
          <label>
            Type
            <select name="type">
              <option value="">All types</option>
              {TYPES.map((t) => <option key={t} value={t} selected={data.type === t}>{t}</option>)}
            </select>
          </label>
          <button type="submit" class="secondary">Filter</button>
        </form>
        <LedgerTable
          id="transactions"
          rows={data.tx}
          empty="No transactions yet: buy a package above to add credit."
        />
        <OlderLink
          url={url}
          cursor={data.nextCursor}
          label="Older transactions"
          drop={["purchased"]}
        />
      </section>
    </>
  );
}

import type { PageConfig, PageCtx, PageProps } from "../../../../lib/render/page.tsx";
import { Csrf, type Viewer } from "../../../../lib/render/page.tsx";
import { getAccount, getBalance } from "../../../../lib/billing/accounts.ts";
import { listLedgerByAccount } from "../../../../lib/billing/ledger.ts";
import { accountJson, ledgerJson } from "../../../../lib/http/presenters.ts";
import { parseUsd } from "../../../../lib/money.ts";
import { newId } from "../../../../lib/ids.ts";
import { parseId } from "../../../../lib/http/params.ts";
import { idemKey } from "../../../../lib/kv/schema.ts";
import { IDEMPOTENCY_TTL_MS } from "../../../../lib/http/idempotency.ts";
import { Empty, Metric, Money, Notice } from "../../../../lib/render/layout.tsx";
import { LedgerTable } from "../../../../lib/render/ledger.tsx";
import { creditEvent } from "../../../../lib/webhooks/events.ts";

export const config: PageConfig = {
  title: "Account",
  auth: "admin",
  layout: "admin",
  nav: "accounts",
};

interface Data {
  account: ReturnType<typeof accountJson> | null;
  tx: ReturnType<typeof ledgerJson>[];
  notice: { kind: "ok" | "error"; text: string } | null;
}

async function load(ctx: PageCtx, notice: Data["notice"] = null, status?: number) {
  const kv = ctx.svc.kv;
  const id = parseId("id", "acct", ctx.c.req.param("id") ?? "");
  const account = await getAccount(kv, id);
  if (!account) return { data: { account: null, tx: [], notice }, status: 404 };
  const [balance, page] = await Promise.all([
    getBalance(kv, id),
    listLedgerByAccount(kv, id, { limit: 50 }),
  ]);
  return {
    data: { account: accountJson(account, balance), tx: page.data.map(ledgerJson), notice },
    status: status ?? 200,
  };
}

export const handler = {
  GET: (ctx: PageCtx) => {
    const done = ctx.url.searchParams.get("done");
    return load(
      ctx,
      done === "adjustment" || done === "refund"
        ? { kind: "ok", text: `The ${done} is recorded.` }
        : null,
    );
  },
  /** An adjustment (either sign) or a refund (positive), with its reason, through the account actor. */
  async POST(ctx: PageCtx) {
    const id = parseId("id", "acct", ctx.c.req.param("id") ?? "");
    if (!await getAccount(ctx.svc.kv, id)) return load(ctx);
    const type = ctx.form.get("type") === "refund" ? "refund" : "adjustment";
    const amount = parseUsd(String(ctx.form.get("amount") ?? ""));
    const reason = String(ctx.form.get("reason") ?? "").trim().slice(0, 500);
    const reference = String(ctx.form.get("reference") ?? "").trim().slice(0, 200) || null;
    if (amount === null || amount === 0n || (type === "refund" && amount < 0n)) {
      return load(ctx, {
        kind: "error",
        text: type === "refund"
          ? "A refund needs a positive USD amount."
          : "An adjustment needs a non-zero USD amount.",
      }, 400);
    }
    if (!reason) return load(ctx, { kind: "error", text: "Give a reason." }, 400);
    // Each rendered form carries a nonce: a double submit records the credit once.
    const nonce = String(ctx.form.get("nonce") ?? "");
    await ctx.svc.actors.submit(id, {
      kind: "credit",
      type,
      amount,
      description: reason,
      reference,
      event: type === "refund" ? creditEvent(id, "credits.refunded", ledgerJson) : undefined,
      once: /^form_\w{10,40}$/.test(nonce)
        ? {
          key: idemKey(`dashboard:admin:${type}:${id}`, nonce),
          value: (entry) => entry.id,
          expireIn: IDEMPOTENCY_TTL_MS,
        }
        : undefined,
    });
    // Post/redirect/get: reloading the page cannot credit twice.
    return ctx.redirect(`/dashboard/admin/accounts/${id}?done=${type}`);
  },
};

/** One account: balance, ledger, and the operator's adjustments and refunds. */
export default function AdminAccount({ data, viewer }: PageProps<Data>) {
  const a = data.account;
  if (!a) {
    return (
      <Empty>
        No such account. <a href="/dashboard/admin">All accounts</a>
      </Empty>
    );
  }
  return (
    <>
      <p>
        <a href="/dashboard/admin">← All accounts</a>
      </p>
      <h2>
        {a.name} <span class="sub">{a.id}</span>
      </h2>
      {data.notice ? <Notice kind={data.notice.kind}>{data.notice.text}</Notice> : null}
      <div class="metrics">
        <Metric label="Balance" id="admin-balance">
          <Money usd={a.balance} />
        </Metric>
        <Metric label="Available">
          <Money usd={a.available} />
        </Metric>
        <Metric label="Purchased">
          <Money usd={a.total_purchased} />
        </Metric>
        <Metric label="Used">
          <Money usd={a.total_used} />
        </Metric>
      </div>
      <div class="grid2">
        <CreditForm type="adjustment" viewer={viewer} />
        <CreditForm type="refund" viewer={viewer} />
      </div>
      <section class="card">
        <h2>Ledger</h2>
        <LedgerTable id="admin-ledger" rows={data.tx} empty="No transactions." />
      </section>
    </>
  );
}

/**
 * The operator's credit form: an adjustment (either sign) or a refund (positive, with an optional
 * reference). Each rendering carries a fresh nonce, so a double submit records the credit once.
 */
function CreditForm({ type, viewer }: { type: "adjustment" | "refund"; viewer: Viewer | null }) {
  const refund = type === "refund";
  return (
    <section class="card">
      <h2>{refund ? "Refund" : "Adjustment"}</h2>
      <form method="post" class="stack">
        <Csrf viewer={viewer} />
        <input type="hidden" name="type" value={type} />
        <input type="hidden" name="nonce" value={newId("form")} />
        <label>
          {refund ? "Amount (USD)" : "Amount (USD, negative to take credit away)"}
          <input
            name="amount"
            required
            inputMode="decimal"
            pattern={refund ? "\\d+(\\.\\d{1,9})?" : "-?\\d+(\\.\\d{1,9})?"}
          />
        </label>
        <label>
          Reason<input name="reason" required maxLength={500} />
        </label>
        {refund
          ? (
            <label>
              Reference (optional)<input name="reference" maxLength={200} />
            </label>
          )
          : null}
        <button type="submit">{refund ? "Record refund" : "Record adjustment"}</button>
      </form>
    </section>
  );
}

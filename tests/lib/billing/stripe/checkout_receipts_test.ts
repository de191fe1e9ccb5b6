import assert from "node:assert/strict";
import { json, startRouter, type TestRouter } from "../../../_helpers.ts";
import { type FakeStripe, startFakeStripe } from "../../../_fakes/stripe.ts";
import { startReceiver } from "../../../_fakes/receiver.ts";
import { checkout, deliverSigned, transactions } from "../../../_stripe.ts";
import { addEndpoint, settled } from "../../../_webhooks.ts";
import { h } from "preact";
import { renderToString } from "preact-render-to-string";
import { LedgerTable } from "../../../../lib/render/ledger.tsx";

const SECRET = "whsec_test_current_0123456789";

async function production(
  fn: (t: TestRouter, stripe: FakeStripe, logs: string[]) => Promise<void>,
) {
  const stripe = startFakeStripe();
  const logs: string[] = [];
  const t = await startRouter({
    env: {
      STRIPE_SECRET_KEY: "sk_test_router",
      STRIPE_WEBHOOK_SECRET: SECRET,
      STRIPE_API_BASE: stripe.url,
      WEBHOOK_ALLOW_PRIVATE_URLS: "true",
    },
    log: (level, msg, fields) => logs.push(JSON.stringify({ level, msg, ...fields })),
  });
  try {
    await fn(t, stripe, logs);
  } finally {
    await t.close();
    await stripe.close();
  }
}

Deno.test("a Checkout purchase keeps its charge's receipt: in the transactions and the credits.purchased event", () =>
  production(async (t, stripe) => {
    const rx = startReceiver();
    try {
      const { mgmt } = await t.account("0");
      const endpoint = await addEndpoint(t, mgmt, rx, ["credits.purchased", "credits.refunded"]);
      const sessionId = await checkout(t, stripe, mgmt, "team");
      const completed = stripe.event("checkout.session.completed", stripe.complete(sessionId));
      await json(await deliverSigned(t, stripe, completed, SECRET), 200);
      const charge = [...stripe.charges.values()][0];
      assert.match(charge.receipt_url as string, /^https:\/\/pay\.stripe\.com\/receipts\//);

      const [purchase] = await transactions(t, mgmt, "purchase");
      assert.equal(
        purchase.receipt_url,
        charge.receipt_url,
      );
      const asked = stripe.requests.filter((r) => r.path.startsWith("/v1/payment_intents/"));
      assert.equal(asked.length, 1);
      assert.deepEqual(asked[0].body.expand, ["latest_charge"]);

      // Delivered again: the credit replays, Stripe is not asked again, no second event.
      await json(await deliverSigned(t, stripe, completed, SECRET), 200);
      assert.equal(
        stripe.requests.filter((r) => r.path.startsWith("/v1/payment_intents/")).length,
        1,
      );

      // A refund takes the credit back and says so.
      const refunded = stripe.event("charge.refunded", stripe.refund(sessionId, 500));
      await json(await deliverSigned(t, stripe, refunded, SECRET), 200);

      await settled(t, mgmt, endpoint, 2);
      const events = rx.received.map((r) => {
        assert.ok(r.verified.ok);
        return r.verified.event;
      });
      assert.deepEqual(events.map((e) => e.type).sort(), ["credits.purchased", "credits.refunded"]);
      const bought = events.find((e) => e.type === "credits.purchased")!;
      assert.equal(bought.data.receipt_url, charge.receipt_url);
      assert.equal(bought.data.amount, "25");
      assert.equal(bought.data.reference, sessionId);
      const back = events.find((e) => e.type === "credits.refunded")!;
      assert.equal(back.data.amount, "-5");
      assert.equal(back.data.type, "adjustment");
      assert.equal(back.data.reference, charge.id);
      await t.assertBooks();
    } finally {
      await rx.close();
    }
  }));

Deno.test("a purchase is credited without its receipt when Stripe does not give it", () =>
  production(async (t, stripe, logs) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "starter");
    const completed = stripe.event("checkout.session.completed", stripe.complete(sessionId));
    stripe.failWith = 500;
    const res = await json(await deliverSigned(t, stripe, completed, SECRET), 200);
    assert.equal(res.result, "credited");
    const [purchase] = await transactions(t, mgmt, "purchase");
    assert.equal(purchase.amount, "10");
    assert.equal("receipt_url" in purchase, false);
    assert.ok(logs.some((l) => l.includes("stripe receipt not available")));
    await t.assertBooks();
  }));

Deno.test("a development grant has no receipt", async () => {
  const t = await startRouter();
  try {
    const { mgmt } = await t.account("0");
    const r = await json(
      await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "starter" }),
      201,
    );
    assert.equal("receipt_url" in r.transaction, false);
    const [purchase] = await transactions(t, mgmt, "purchase");
    assert.equal("receipt_url" in purchase, false);
  } finally {
    await t.close();
  }
});

Deno.test("the transaction list links a purchase to its receipt, and nothing else", () => {
  const row = {
    id: "txn_1",
    type: "purchase" as const,
    amount: "25",
    balance_after: "25",
    created_at: "2026-11-26T10:00:00.000Z",
    description: "Stripe Checkout: Team package",
    reference: "cs_1",
  };
  const receipt = "https://pay.stripe.com/receipts/payment/abc";
  const html = renderToString(
    h(LedgerTable, {
      id: "transactions",
      rows: [{ ...row, receipt_url: receipt }, {
        ...row,
        id: "txn_2",
        type: "adjustment" as const,
      }],
      empty: "none",
    }),
  );
  const links = [...html.matchAll(/<a [^>]*href="([^"]+)"[^>]*>Receipt<\/a>/g)];
  assert.deepEqual(links.map((m) => m[1]), [receipt]);
  assert.match(links[0][0], /rel="noopener noreferrer"/);
});

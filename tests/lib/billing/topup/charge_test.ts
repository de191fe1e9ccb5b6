/**
 * The saved card and auto top-up, through the router's API, with the `stripe` SDK against the
 * loopback Stripe fake (production billing) or development billing's simulation.
 */
import assert from "node:assert/strict";
import { json } from "../../../_helpers.ts";
import { startReceiver } from "../../../_fakes/receiver.ts";
import { deliverSigned, transactions } from "../../../_stripe.ts";
import { addEndpoint, settled } from "../../../_webhooks.ts";
import { startTopUp } from "../../../../lib/billing/topup/charge.ts";
import {
  autoTopup,
  enableTopup,
  intentsCreated,
  saveCard,
  SECRET,
  spend,
  spendRouter,
} from "../../../_spend.ts";

Deno.test("a saved card: a setup Checkout Session saves its brand, last four and expiry; a new one replaces it; DELETE forgets it and turns auto top-up off", () =>
  spendRouter(async (t, stripe) => {
    const { mgmt } = await t.account("5");
    await json(await t.call(mgmt, "GET", "/v1/billing/payment_method"), 404);
    const off = await autoTopup(t, mgmt);
    assert.equal(off.enabled, false, "a new account reads auto top-up off");
    assert.equal(off.failures, 0);
    assert.equal(off.this_month, "0");
    const refused = await json(
      await t.call(mgmt, "PUT", "/v1/billing/auto_topup", { enabled: true }),
      409,
    );
    assert.equal(refused.error.code, "payment_method_required");

    const pm = await saveCard(t, stripe, mgmt);
    const setup = stripe.requests.find((r) => r.path === "/v1/checkout/sessions")!;
    assert.equal(setup.body.mode, "setup");
    assert.ok(setup.headers["idempotency-key"]);
    const card = await json(await t.call(mgmt, "GET", "/v1/billing/payment_method"), 200);
    assert.deepEqual(card, {
      brand: "visa",
      last4: "4242",
      exp_month: 12,
      exp_year: new Date().getUTCFullYear() + 4,
    });
    const customer = stripe.paymentMethods.get(pm)!.customer as string;
    assert.equal(
      (stripe.customers.get(customer)!.invoice_settings as Record<string, string>)
        .default_payment_method,
      pm,
      "the customer's default payment method",
    );

    const on = await enableTopup(t, mgmt, { monthly_cap: "50" });
    assert.deepEqual(
      [on.enabled, on.threshold, on.amount, on.monthly_cap],
      [true, "2", "10", "50"],
    );

    // A second card replaces the first, which is detached.
    const pm2 = await saveCard(t, stripe, mgmt, "declined");
    assert.equal(
      (await json(await t.call(mgmt, "GET", "/v1/billing/payment_method"), 200)).last4,
      "0002",
    );
    assert.equal(stripe.paymentMethods.get(pm)!.customer, null, "the old card detached");

    const gone = await json(await t.call(mgmt, "DELETE", "/v1/billing/payment_method"), 200);
    assert.equal(gone.deleted, true);
    assert.equal(stripe.paymentMethods.get(pm2)!.customer, null);
    await json(await t.call(mgmt, "GET", "/v1/billing/payment_method"), 404);
    assert.equal((await autoTopup(t, mgmt)).enabled, false, "no card, no auto top-up");
    await json(await t.call(mgmt, "DELETE", "/v1/billing/payment_method"), 404);
  }));

Deno.test("a setup session's event delivered again after its card was forgotten, or replaced within the same second, does not bring the detached card back", () =>
  spendRouter(async (t, stripe) => {
    const { mgmt } = await t.account("5");
    // The steps of saveCard, keeping the event to deliver it again (Stripe may, days later).
    const setupEvent = async (card: "visa" | "declined") => {
      const { url } = await json(await t.call(mgmt, "POST", "/v1/billing/payment_method"), 200);
      const session = stripe.completeSetup(/\/(cs_[a-z0-9_]+)$/.exec(url)![1], card);
      return stripe.event("checkout.session.completed", session);
    };
    const first = await setupEvent("visa");
    assert.equal(
      (await json(await deliverSigned(t, stripe, first, SECRET), 200)).result,
      "payment_method_saved",
    );
    await json(await t.call(mgmt, "DELETE", "/v1/billing/payment_method"), 200);
    const again = await json(await deliverSigned(t, stripe, first, SECRET), 200);
    assert.equal(again.result, "ignored");
    await json(await t.call(mgmt, "GET", "/v1/billing/payment_method"), 404);

    // A second card saved within the same second as the first: the first's event again (its
    // card detached when the second replaced it) leaves the second in place.
    const a = await setupEvent("visa");
    const b = await setupEvent("declined");
    await json(await deliverSigned(t, stripe, a, SECRET), 200);
    await json(await deliverSigned(t, stripe, b, SECRET), 200);
    assert.notEqual(
      (await json(await deliverSigned(t, stripe, a, SECRET), 200)).result,
      "payment_method_saved",
    );
    const card = await json(await t.call(mgmt, "GET", "/v1/billing/payment_method"), 200);
    assert.equal(card.last4, "0002", "the card saved last stays");
  }));

Deno.test("a paid top-up whose charge shows an overlong receipt URL is credited without it (it overflowed the ledger row: a 500 at every delivery, the payment never credited)", () =>
  spendRouter(async (t, stripe) => {
    const { id, mgmt } = await t.account("5");
    const pi = {
      id: "pi_test_long_receipt",
      object: "payment_intent",
      amount: 1000,
      amount_received: 1000,
      currency: "usd",
      status: "succeeded",
      metadata: { account_id: id, purpose: "auto_topup", topup_id: "topup_gone" },
      latest_charge: {
        id: "ch_test_long_receipt",
        object: "charge",
        receipt_url: `https://pay.stripe.com/receipts/${"a".repeat(70_000)}`,
      },
    };
    const event = stripe.event("payment_intent.succeeded", pi);
    const r = await json(await deliverSigned(t, stripe, event, SECRET), 200);
    assert.equal(r.result, "topup_credited");
    const [row] = await transactions(t, mgmt, "purchase");
    assert.equal(row.amount, "10");
    assert.equal(row.receipt_url, undefined);
    await t.assertBooks();
  }));

Deno.test("PUT /v1/billing/auto_topup refuses bad amounts, naming the field, and writes nothing", () =>
  spendRouter(async (t, stripe) => {
    const { mgmt } = await t.account("5");
    await saveCard(t, stripe, mgmt);
    for (
      const [body, field] of [
        [{ threshold: "-1" }, "threshold"],
        [{ amount: "0.49" }, "amount"],
        [{ amount: "10.005" }, "amount"],
        [{ amount: "10001" }, "amount"],
        [{ monthly_cap: "0" }, "monthly_cap"],
        [{ enabled: "yes" }, "enabled"],
        [{ colour: "red" }, "body"],
      ] as const
    ) {
      const r = await json(await t.call(mgmt, "PUT", "/v1/billing/auto_topup", body), 400);
      assert.match(r.error.message, new RegExp(field), JSON.stringify(body));
    }
    assert.equal((await autoTopup(t, mgmt)).threshold, "5", "the defaults stand");
  }));

Deno.test("a crossing of the threshold charges the saved card off-session once; payment_intent.succeeded delivered three times credits once", () =>
  spendRouter(async (t, stripe) => {
    const rx = startReceiver();
    try {
      const { mgmt, key } = await t.account("2.3");
      const endpoint = await addEndpoint(t, mgmt, rx, [
        "auto_topup.succeeded",
        "auto_topup.failed",
      ]);
      const pm = await saveCard(t, stripe, mgmt);
      await enableTopup(t, mgmt);
      // 2.3 → 2.2 → 2.1 → 2.0 (at the threshold: no crossing) → 1.9 (crossed).
      await spend(t, key, 3);
      assert.equal(intentsCreated(stripe).length, 0, "at the threshold is not below it");
      await spend(t, key, 1);
      const [create] = intentsCreated(stripe);
      assert.ok(create, "a PaymentIntent was created");
      assert.deepEqual(
        [create.body.amount, create.body.currency, create.body.payment_method, create.body.confirm],
        ["1000", "usd", pm, "true"],
      );
      assert.equal(create.body.off_session, "true");
      assert.match(create.headers["idempotency-key"], /^topup-topup_/);
      const piId = [...stripe.paymentIntents.keys()][0];
      assert.equal(stripe.paymentIntents.get(piId)!.status, "succeeded");

      const after = await autoTopup(t, mgmt);
      assert.deepEqual([after.this_month, after.failures, after.in_flight], ["10", 0, false]);
      assert.equal(after.last.outcome, "succeeded");
      // Spending on below 11.9 crosses nothing: no second top-up.
      await spend(t, key, 3);
      assert.equal(intentsCreated(stripe).length, 1);

      // Stripe's webhook for the same payment, three times: it was credited once already.
      const event = stripe.event("payment_intent.succeeded", stripe.paymentIntent(piId));
      for (let i = 0; i < 3; i++) {
        const r = await json(await deliverSigned(t, stripe, event, SECRET), 200);
        assert.equal(r.result, "topup_already_credited");
      }
      const purchases = await transactions(t, mgmt, "purchase");
      assert.equal(purchases.length, 1);
      assert.deepEqual(
        [purchases[0].amount, purchases[0].reference, purchases[0].description],
        ["10", piId, "Auto top-up"],
      );
      assert.match(purchases[0].receipt_url!, /^https:\/\/pay\.stripe\.com\/receipts\//);
      assert.equal((await autoTopup(t, mgmt)).this_month, "10", "counted once");
      const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
      assert.equal(credits.balance, "11.6");

      // A refund of the top-up's charge takes its credit back, as a purchase's would.
      const charge = stripe.refund(piId, 400);
      const refunded = stripe.event("charge.refunded", charge);
      assert.equal(
        (await json(await deliverSigned(t, stripe, refunded, SECRET), 200)).result,
        "refunded",
      );
      const [takeBack] = await transactions(t, mgmt, "adjustment");
      assert.deepEqual([takeBack.amount, takeBack.reference], ["-4", charge.id]);
      const { active } = await json(await t.call(mgmt, "GET", "/v1/alerts"), 200);
      assert.deepEqual(active.map((a: { type: string; amount: string }) => [a.type, a.amount]), [
        ["credits.refunded", "-4"],
      ]);

      const [d] = await settled(t, mgmt, endpoint, 1);
      assert.equal(d.type, "auto_topup.succeeded");
      assert.equal(rx.received.length, 1);
      assert.ok(rx.received[0].verified.ok);
      if (rx.received[0].verified.ok) {
        assert.deepEqual(rx.received[0].verified.event.data, {
          amount: "10",
          payment_intent: piId,
        });
      }
      await t.assertBooks();
    } finally {
      await rx.close();
    }
  }));

Deno.test("three declines: the balance stays, each fires auto_topup.failed, a decline is retried at the next crossing only, and the third turns auto top-up off", () =>
  spendRouter(async (t, stripe) => {
    const rx = startReceiver();
    try {
      const { id, mgmt, key } = await t.account("2.1");
      const endpoint = await addEndpoint(t, mgmt, rx, ["auto_topup.failed"]);
      await saveCard(t, stripe, mgmt, "declined");
      await enableTopup(t, mgmt);
      const lift = async () => {
        const r = await t.admin("POST", `/v1/admin/accounts/${id}/adjustments`, {
          amount: "0.4",
          reason: "back above the threshold",
        });
        await json(r, 201);
      };
      for (let n = 1; n <= 3; n++) {
        await spend(t, key, 2); // crosses 2 on the way down
        assert.equal(intentsCreated(stripe).length, n, `decline ${n}: one attempt`);
        // Spending on below the threshold retries nothing, nor does a crossing another process
        // reports late (its view of the balance lagging): no credit came since the failure.
        await spend(t, key, 2);
        assert.equal(await startTopUp(t.router.svc, id), null);
        assert.equal(intentsCreated(stripe).length, n, "no retry before the next crossing");
        const s = await autoTopup(t, mgmt);
        assert.equal(s.failures, n);
        assert.equal(s.enabled, n < 3);
        assert.deepEqual([s.last.outcome, s.last.reason], ["failed", "card_declined"]);
        assert.equal(s.this_month, "0");
        assert.equal((await transactions(t, mgmt, "purchase")).length, 0, "nothing credited");
        await lift();
      }
      // Off now: a fourth crossing charges nothing.
      await spend(t, key, 7);
      assert.equal(intentsCreated(stripe).length, 3);
      const rows = await settled(t, mgmt, endpoint, 3);
      assert.equal(rows.length, 3);
      const events = rx.received.map((r) => r.verified.ok ? r.verified.event : null);
      assert.deepEqual(
        events.map((e) => [e?.type, e?.data.reason, e?.data.failures, e?.data.disabled]),
        [
          ["auto_topup.failed", "card_declined", 1, false],
          ["auto_topup.failed", "card_declined", 2, false],
          ["auto_topup.failed", "card_declined", 3, true],
        ],
      );
      for (const e of events) assert.equal(e?.data.amount, "10");
      // Stripe's payment_failed webhook of an attempt already recorded changes nothing.
      const pi = [...stripe.paymentIntents.values()][0];
      const late = stripe.event("payment_intent.payment_failed", structuredClone(pi));
      const r = await json(await deliverSigned(t, stripe, late, SECRET), 200);
      assert.equal(r.result, "topup_already_failed");
      assert.equal((await autoTopup(t, mgmt)).failures, 3);
      await t.assertBooks();
    } finally {
      await rx.close();
    }
  }));

Deno.test("a card needing authentication off-session fails the top-up as requires_action, its PaymentIntent canceled", () =>
  spendRouter(async (t, stripe) => {
    const { mgmt, key } = await t.account("2.05");
    await saveCard(t, stripe, mgmt, "authentication");
    await enableTopup(t, mgmt);
    await spend(t, key, 1);
    const s = await autoTopup(t, mgmt);
    assert.deepEqual([s.failures, s.last.reason, s.enabled], [1, "requires_action", true]);
    const [pi] = [...stripe.paymentIntents.values()];
    assert.equal(pi.status, "canceled");
    const alerts = await json(await t.call(mgmt, "GET", "/v1/alerts"), 200);
    assert.equal(alerts.active[0].type, "auto_topup.failed");
    assert.equal(alerts.active[0].reason, "requires_action");
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.balance, "1.95", "the balance as it was");
    await t.assertBooks();
  }));

Deno.test("development billing: the monthly cap holds when the threshold is crossed again and again (reduced, then skipped)", () =>
  spendRouter(async (t) => {
    const { mgmt, key } = await t.account("2.3");
    const card = await json(await t.call(mgmt, "POST", "/v1/billing/payment_method"), 201);
    assert.deepEqual([card.brand, card.last4], ["visa", "4242"]);
    await enableTopup(t, mgmt, { amount: "2", monthly_cap: "5" });
    // Each crossing tops up: 2, 2, then the 1 left under the cap, then nothing.
    await spend(t, key, 4); // 1.9: +2
    await spend(t, key, 20); // 1.9: +2
    await spend(t, key, 20); // 1.9: +1 (the cap)
    assert.equal((await autoTopup(t, mgmt)).this_month, "5");
    await spend(t, key, 10); // 1.9: skipped
    const s = await autoTopup(t, mgmt);
    assert.deepEqual([s.this_month, s.enabled, s.failures], ["5", true, 0]);
    const topups = (await transactions(t, mgmt, "purchase")).map((p) => p.amount);
    assert.deepEqual(topups, ["1", "2", "2"]);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.balance, "1.9");
    await t.assertBooks();
  }, { dev: true }));

Deno.test("development billing: a declined test card fails as Stripe's would, and enabling below the threshold waits for the next crossing", () =>
  spendRouter(async (t) => {
    const { id, mgmt, key } = await t.account("1");
    await json(
      await t.call(mgmt, "POST", "/v1/billing/payment_method", {
        payment_method: "pm_card_chargeDeclined",
      }),
      201,
    );
    // Already below its threshold: no top-up until the balance has risen and crossed again.
    await enableTopup(t, mgmt);
    await spend(t, key, 2);
    assert.equal((await autoTopup(t, mgmt)).last, null);
    await json(
      await t.admin("POST", `/v1/admin/accounts/${id}/adjustments`, { amount: "1.3", reason: "r" }),
      201,
    );
    await spend(t, key, 2); // 2.1 → 1.9: crossed
    const s = await autoTopup(t, mgmt);
    assert.deepEqual([s.failures, s.last.reason, s.last.outcome], [1, "card_declined", "failed"]);
    await t.assertBooks();
  }, { dev: true }));

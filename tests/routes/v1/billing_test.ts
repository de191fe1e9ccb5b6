import assert from "node:assert/strict";
import { json, startRouter, type TestRouter } from "../../_helpers.ts";
import { type FakeStripe, startFakeStripe } from "../../_fakes/stripe.ts";
import { balance, checkout, deliverSigned, kvStamps, transactions } from "../../_stripe.ts";
import Stripe from "stripe";
import { loadConfig } from "../../../lib/config.ts";
import { stripeOptions } from "../../../lib/billing/stripe/client.ts";

const SECRET = "whsec_test_current_0123456789";
const OLD_SECRET = "whsec_test_previous_0123456789";

/** A router in production billing mode against a fresh fake Stripe. */
async function production(env: Record<string, string> = {}) {
  const stripe = startFakeStripe();
  const t = await startRouter({
    env: {
      STRIPE_SECRET_KEY: "sk_test_router",
      STRIPE_WEBHOOK_SECRET: SECRET,
      STRIPE_API_BASE: stripe.url,
      PUBLIC_URL: "https://router.example",
      ...env,
    },
  });
  return { t, stripe };
}

async function run(fn: (t: TestRouter, stripe: FakeStripe) => Promise<void>, env = {}) {
  const { t, stripe } = await production(env);
  try {
    await fn(t, stripe);
  } finally {
    await t.close();
    await stripe.close();
  }
}

/** A Checkout Session of the package, paid: its completion delivered and answered 200. */
async function paidCheckout(t: TestRouter, stripe: FakeStripe, mgmt: string, packageId: string) {
  const sessionId = await checkout(t, stripe, mgmt, packageId);
  const completed = stripe.event("checkout.session.completed", stripe.complete(sessionId));
  await json(await deliver(t, stripe, completed), 200);
  return sessionId;
}

/** Delivers a signed event to the webhook, without any API key. */
const deliver = (
  t: TestRouter,
  stripe: FakeStripe,
  event: Record<string, unknown>,
  secret = SECRET,
) => deliverSigned(t, stripe, event, secret);

Deno.test("POST /v1/billing/checkout creates a Checkout Session and reuses the account's customer", () =>
  run(async (t, stripe) => {
    const { mgmt, id: accountId } = await t.account("0");
    const first = await checkout(t, stripe, mgmt, "team");
    const second = await checkout(t, stripe, mgmt, "scale");

    const customerPosts = stripe.requests.filter((r) => r.path === "/v1/customers");
    assert.equal(customerPosts.length, 1, "one Stripe customer per account");
    assert.equal((customerPosts[0].body.metadata as Record<string, string>).account_id, accountId);
    const sessionPosts = stripe.requests.filter((r) => r.path === "/v1/checkout/sessions");
    assert.equal(sessionPosts.length, 2);
    const [customerId] = stripe.customers.keys();
    for (const r of sessionPosts) {
      assert.equal(r.headers.authorization, "Bearer sk_test_router");
      assert.ok(r.headers["idempotency-key"], "session creation carries an idempotency key");
      assert.equal(r.body.mode, "payment");
      assert.equal(r.body.customer, customerId);
      assert.equal(r.body.client_reference_id, accountId);
      assert.ok(String(r.body.success_url).startsWith("https://router.example/"));
      assert.ok(String(r.body.cancel_url).startsWith("https://router.example/"));
    }
    assert.notEqual(
      sessionPosts[0].headers["idempotency-key"],
      sessionPosts[1].headers["idempotency-key"],
    );
    assert.deepEqual(sessionPosts[1].body.metadata, { account_id: accountId, package_id: "scale" });
    const item = (sessionPosts[1].body.line_items as Record<string, Record<string, unknown>>[])[0];
    assert.equal(item.quantity, "1");
    assert.equal(item.price_data.currency, "usd");
    assert.equal(item.price_data.unit_amount, "10000", "the package's price in cents");
    assert.equal(stripe.sessions.get(first)!.amount_total, 2500);
    assert.equal(stripe.sessions.get(second)!.amount_total, 10000);

    // Nothing is credited before Stripe says the session is paid.
    assert.equal(await balance(t, mgmt), "0");
    assert.deepEqual(await transactions(t, mgmt), []);

    const missing = await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "nope" });
    assert.equal((await json(missing, 404)).error.code, "not_found");
    assert.equal(stripe.requests.length, 3, "an unknown package never reaches Stripe");
    await t.assertBooks();
  }));

Deno.test("POST /v1/billing/checkout replays a client Idempotency-Key as the same session", () =>
  run(async (t, stripe) => {
    const { mgmt } = await t.account("0");
    const headers = { "idempotency-key": "buy-1" };
    const a = await json(
      await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "team" }, headers),
      200,
    );
    const b = await json(
      await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "team" }, headers),
      200,
    );
    assert.equal(a.url, b.url);
    assert.equal(stripe.sessions.size, 1);
    const other = await t.call(
      mgmt,
      "POST",
      "/v1/billing/checkout",
      { package_id: "scale" },
      headers,
    );
    assert.equal((await json(other, 409)).error.code, "idempotency_conflict");
    await t.assertBooks();
  }));

Deno.test("POST /v1/billing/checkout answers 502 when Stripe fails", () =>
  run(async (t, stripe) => {
    const { mgmt } = await t.account("0");
    stripe.failWith = 400;
    const res = await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "team" });
    assert.equal((await json(res, 502)).error.code, "upstream_error");
    assert.equal(await balance(t, mgmt), "0");
    await t.assertBooks();
  }));

Deno.test("a paid checkout.session.completed delivered three times, two at once, credits once", () =>
  run(async (t, stripe) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "scale");
    const event = stripe.event("checkout.session.completed", stripe.complete(sessionId));
    const [a, b] = await Promise.all([deliver(t, stripe, event), deliver(t, stripe, event)]);
    const c = await deliver(t, stripe, event);
    const results = [await json(a, 200), await json(b, 200), await json(c, 200)]
      .map((r) => r.result).sort();
    assert.deepEqual(results, ["already_credited", "already_credited", "credited"]);
    // The same session's async_payment_succeeded, in any order, grants nothing more.
    const late = stripe.event(
      "checkout.session.async_payment_succeeded",
      structuredClone(event.data as { object: Record<string, unknown> }).object,
    );
    assert.equal((await json(await deliver(t, stripe, late), 200)).result, "already_credited");

    assert.equal(await balance(t, mgmt), "105", "$100 package with $5 bonus");
    const purchases = await transactions(t, mgmt, "purchase");
    assert.equal(purchases.length, 1);
    assert.equal(purchases[0].amount, "105");
    assert.equal(purchases[0].reference, sessionId);
    assert.match(purchases[0].description, /Scale/);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_purchased, "105");
    await t.assertBooks();
  }));

Deno.test("an unpaid session credits nothing until checkout.session.async_payment_succeeded", () =>
  run(async (t, stripe) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "starter");
    const completed = stripe.event(
      "checkout.session.completed",
      stripe.complete(sessionId, { paid: false }),
    );
    assert.equal((await json(await deliver(t, stripe, completed), 200)).result, "awaiting_payment");
    assert.equal(await balance(t, mgmt), "0");
    assert.deepEqual(await transactions(t, mgmt), []);
    await t.assertBooks();

    const failed = stripe.event(
      "checkout.session.async_payment_failed",
      (completed.data as { object: Record<string, unknown> }).object,
    );
    assert.equal((await json(await deliver(t, stripe, failed), 200)).result, "ignored");
    const succeeded = stripe.event(
      "checkout.session.async_payment_succeeded",
      stripe.asyncPaymentSucceeds(sessionId),
    );
    const results = await Promise.all([
      deliver(t, stripe, succeeded),
      deliver(t, stripe, succeeded),
      deliver(t, stripe, succeeded),
    ]).then((rs) => Promise.all(rs.map((r) => json(r, 200))));
    assert.equal(results.filter((r) => r.result === "credited").length, 1);
    // The unpaid completion delivered again later still grants nothing more.
    await json(await deliver(t, stripe, completed), 200);
    assert.equal(await balance(t, mgmt), "10");
    assert.equal((await transactions(t, mgmt, "purchase")).length, 1);
    await t.assertBooks();
  }));

Deno.test("a bad, changed, stale or missing signature is 400 invalid_signature and writes nothing", () =>
  run(async (t, stripe) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "team");
    const event = stripe.event("checkout.session.completed", stripe.complete(sessionId));
    const post = (body: string, header?: string) =>
      fetch(`${t.url}/v1/stripe/webhook`, {
        method: "POST",
        headers: header ? { "stripe-signature": header } : {},
        body,
      });
    const good = await stripe.sign(event, SECRET);
    const i = good.payload.indexOf('"amount_total": 2500') + '"amount_total": '.length;
    const changed = good.payload.slice(0, i) + "9" + good.payload.slice(i + 1);
    assert.equal(changed.length, good.payload.length);
    const wrongSecret = await stripe.sign(event, "whsec_someone_else");
    const stale = await stripe.sign(event, SECRET, {
      timestamp: Math.floor(Date.now() / 1000) - 301,
    });

    const before = await kvStamps(t.kv);
    const cases: [string, string, string | undefined][] = [
      ["wrong secret", wrongSecret.payload, wrongSecret.header],
      ["one changed byte", changed, good.header],
      ["stale timestamp", stale.payload, stale.header],
      ["missing header", good.payload, undefined],
      ["garbage header", good.payload, "t=1,v1=00"],
    ];
    for (const [name, body, header] of cases) {
      const res = await post(body, header);
      const err = await json(res, 400);
      assert.equal(err.error.code, "invalid_signature", name);
    }
    assert.deepEqual(await kvStamps(t.kv), before, "nothing written");
    assert.equal(await balance(t, mgmt), "0");

    // The untouched delivery is accepted: the refusals above were about the signature alone.
    assert.equal((await json(await post(good.payload, good.header), 200)).result, "credited");
    assert.equal(await balance(t, mgmt), "25");
    await t.assertBooks();
  }));

Deno.test("during a secret rotation events signed with either secret are accepted", () =>
  run(async (t, stripe) => {
    const { mgmt } = await t.account("0");
    const a = await checkout(t, stripe, mgmt, "starter");
    const b = await checkout(t, stripe, mgmt, "team");
    const ea = stripe.event("checkout.session.completed", stripe.complete(a));
    const eb = stripe.event("checkout.session.completed", stripe.complete(b));
    assert.equal((await json(await deliver(t, stripe, ea, OLD_SECRET), 200)).result, "credited");
    assert.equal((await json(await deliver(t, stripe, eb, SECRET), 200)).result, "credited");
    const third = await deliver(t, stripe, ea, "whsec_neither_of_them");
    assert.equal((await json(third, 400)).error.code, "invalid_signature");
    assert.equal(await balance(t, mgmt), "35");
    await t.assertBooks();
  }, { STRIPE_WEBHOOK_SECRET: `${SECRET}, ${OLD_SECRET}` }));

Deno.test("charge.refunded takes the refunded share of the credit back once per refund", () =>
  run(async (t, stripe) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "scale");
    const completed = stripe.event("checkout.session.completed", stripe.complete(sessionId));

    // A refund whose purchase is not credited yet is refused so Stripe delivers it again.
    const early = stripe.event("charge.refunded", stripe.refund(sessionId, 4000));
    assert.equal((await json(await deliver(t, stripe, early), 503)).error.code, "retry_later");
    assert.equal(await balance(t, mgmt), "0");

    await json(await deliver(t, stripe, completed), 200);
    assert.equal(await balance(t, mgmt), "105");
    // $40 of $100 refunded: 40 % of the $105 granted.
    const [r1, r2] = await Promise.all([deliver(t, stripe, early), deliver(t, stripe, early)]);
    assert.deepEqual([(await json(r1, 200)).result, (await json(r2, 200)).result].sort(), [
      "already_refunded",
      "refunded",
    ]);
    assert.equal(await balance(t, mgmt), "63");

    // The rest is refunded: the credit goes to zero, and the earlier refund is not applied twice.
    const rest = stripe.event("charge.refunded", stripe.refund(sessionId, 6000));
    assert.equal((await json(await deliver(t, stripe, rest), 200)).result, "refunded");
    assert.equal((await json(await deliver(t, stripe, rest), 200)).result, "already_refunded");
    assert.equal(await balance(t, mgmt), "0");

    const [charge] = stripe.charges.keys();
    const adjustments = await transactions(t, mgmt, "adjustment");
    assert.deepEqual(adjustments.map((e) => [e.amount, e.reference]), [
      ["-63", charge],
      ["-42", charge],
    ]);
    assert.equal((await transactions(t, mgmt, "purchase")).length, 1);
    assert.ok(
      stripe.requests.some((r) => r.path === "/v1/refunds" && r.body.charge === charge),
      "the refunds were read from Stripe",
    );
    await t.assertBooks();
  }));

Deno.test("other Stripe events answer 200 and change nothing", () =>
  run(async (t, stripe) => {
    const { mgmt } = await t.account("0");
    const before = await kvStamps(t.kv);
    for (const type of ["customer.created", "payment_intent.succeeded", "invoice.paid"]) {
      const res = await deliver(t, stripe, stripe.event(type, { id: "obj_1", object: "thing" }));
      assert.equal((await json(res, 200)).result, "ignored");
    }
    // A charge this router never sold (no metadata) is not ours to refund.
    const foreign = stripe.event("charge.refunded", {
      id: "ch_foreign",
      object: "charge",
      amount: 500,
      amount_refunded: 500,
      payment_intent: "pi_foreign",
      metadata: {},
    });
    assert.equal((await json(await deliver(t, stripe, foreign), 200)).result, "ignored");
    assert.deepEqual(await kvStamps(t.kv), before);
    assert.equal(await balance(t, mgmt), "0");
    await t.assertBooks();
  }));

Deno.test("the credit comes from what the router sold, not from the session's metadata", () =>
  run(async (t, stripe) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "starter");
    const session = stripe.complete(sessionId);
    // A session edited on Stripe's side to name a bigger package still grants the $10 sold.
    (session.metadata as Record<string, string>).package_id = "scale";
    const r = await deliver(t, stripe, stripe.event("checkout.session.completed", session));
    assert.equal((await json(r, 200)).result, "credited");
    assert.equal(await balance(t, mgmt), "10");
    // A paid amount that is not the price grants nothing.
    const other = await checkout(t, stripe, mgmt, "team");
    const cheap = { ...stripe.complete(other), amount_total: 100 };
    const r2 = await deliver(t, stripe, stripe.event("checkout.session.completed", cheap));
    assert.equal((await json(r2, 200)).result, "rejected");
    assert.equal(await balance(t, mgmt), "10");
    await t.assertBooks();
  }));

Deno.test("development mode grants the package at once, marked as a development grant", async () => {
  const t = await startRouter();
  try {
    const { mgmt } = await t.account("0");
    const packages = await json(await t.call(mgmt, "GET", "/v1/billing/packages"), 200);
    assert.deepEqual(packages.data.map((p: { id: string }) => p.id), ["starter", "team", "scale"]);
    const res = await json(
      await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "team" }),
      201,
    );
    assert.equal(res.transaction.type, "purchase");
    assert.equal(res.transaction.amount, "25");
    assert.match(res.transaction.description, /Development grant/);
    assert.equal(await balance(t, mgmt), "25");
    const purchases = await transactions(t, mgmt, "purchase");
    assert.deepEqual(purchases.map((e) => e.amount), ["25"]);
    assert.deepEqual(await transactions(t, mgmt, "usage_debit"), []);
    // Without STRIPE_WEBHOOK_SECRET the webhook accepts nothing (Stripe will retry later).
    const hook = await fetch(`${t.url}/v1/stripe/webhook`, { method: "POST", body: "{}" });
    assert.equal((await json(hook, 503)).error.code, "webhook_unconfigured");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("two first checkouts at once share one customer; a customer deleted in Stripe is replaced", () =>
  run(async (t, stripe) => {
    const { mgmt, id: accountId } = await t.account("0");
    await Promise.all([
      checkout(t, stripe, mgmt, "starter"),
      checkout(t, stripe, mgmt, "team"),
    ]);
    assert.equal(stripe.customers.size, 1, "the shared idempotency key made one customer");
    const [first] = stripe.customers.keys();
    // Without PUBLIC_URL, Checkout returns the customer to the origin the request came to.
    const posts = stripe.requests.filter((r) => r.path === "/v1/checkout/sessions");
    assert.ok(String(posts[0].body.success_url).startsWith(`${t.url}/dashboard/settings/billing?`));

    stripe.customers.delete(first);
    await checkout(t, stripe, mgmt, "scale");
    assert.equal(stripe.customers.size, 1);
    const [second] = stripe.customers.keys();
    assert.notEqual(second, first);
    assert.equal(
      (stripe.customers.get(second)!.metadata as Record<string, string>).account_id,
      accountId,
    );
    await checkout(t, stripe, mgmt, "starter");
    const last = stripe.requests.filter((r) => r.path === "/v1/checkout/sessions").at(-1)!;
    assert.equal(last.body.customer, second, "the new customer is stored and reused");
    assert.equal(stripe.customers.size, 1);
    await t.assertBooks();
  }, { PUBLIC_URL: "" }));

Deno.test("partial refunds take back exactly the credit granted, to the nano-dollar", () =>
  run(async (t, stripe) => {
    const { mgmt } = await t.account("0");
    const sessionId = await paidCheckout(t, stripe, mgmt, "odd");
    assert.equal(await balance(t, mgmt), "1");
    for (let i = 0; i < 3; i++) {
      const ev = stripe.event("charge.refunded", stripe.refund(sessionId, 100));
      assert.equal((await json(await deliver(t, stripe, ev), 200)).result, "refunded");
    }
    const taken = (await transactions(t, mgmt, "adjustment")).map((e) => e.amount).reverse();
    assert.deepEqual(taken, ["-0.333333333", "-0.333333333", "-0.333333334"]);
    assert.equal(await balance(t, mgmt), "0");
    await t.assertBooks();
  }, {
    CREDIT_PACKAGES: JSON.stringify([{ id: "odd", name: "Odd", price: "3", credits: "1" }]),
  }));

/** A charge as an older API version's event shows it: with its refunds embedded, as they were. */
function withRefunds(charge: Record<string, unknown>, refunds: Record<string, unknown>[]) {
  const refunded = refunds.reduce((n, r) => n + (r.amount as number), 0);
  return {
    ...charge,
    amount_refunded: refunded,
    refunded: refunded === charge.amount,
    refunds: { object: "list", data: refunds, has_more: false, url: `/v1/charges/x/refunds` },
  };
}

Deno.test("a refund that fails after its take-back gives the credit back once, however delivered", () =>
  run(async (t, stripe) => {
    const { mgmt } = await t.account("0");
    const sessionId = await paidCheckout(t, stripe, mgmt, "scale");
    const refunded = stripe.event("charge.refunded", stripe.refund(sessionId, 4000));
    assert.equal((await json(await deliver(t, stripe, refunded), 200)).result, "refunded");
    assert.equal(await balance(t, mgmt), "63");
    await t.assertBooks();

    const refund = stripe.refunds.at(-1)!;
    // A refund update that is not a failure changes nothing.
    const pending = stripe.event("refund.updated", {
      ...structuredClone(refund),
      status: "pending",
    });
    assert.equal((await json(await deliver(t, stripe, pending), 200)).result, "ignored");

    const failed = stripe.failRefund(refund.id as string);
    const event = stripe.event("charge.refund.updated", failed);
    const [a, b] = await Promise.all([deliver(t, stripe, event), deliver(t, stripe, event)]);
    const c = await deliver(t, stripe, event);
    const results = [await json(a, 200), await json(b, 200), await json(c, 200)]
      .map((r) => r.result).sort();
    assert.deepEqual(results, ["already_reversed", "already_reversed", "refund_reversed"]);
    // The same failure under the other event names Stripe uses changes nothing more.
    for (const type of ["refund.failed", "refund.updated"]) {
      const other = await deliver(t, stripe, stripe.event(type, failed));
      assert.equal((await json(other, 200)).result, "already_reversed", type);
    }
    assert.equal(await balance(t, mgmt), "105");
    await t.assertBooks();

    // The charge's refund delivered again takes nothing: the failed refund counts for nothing.
    assert.equal((await json(await deliver(t, stripe, refunded), 200)).result, "already_refunded");
    assert.equal(await balance(t, mgmt), "105");

    // A later refund of $60 takes 60 % of the credit, as if the failed one had never been.
    const later = stripe.event("charge.refunded", stripe.refund(sessionId, 6000));
    assert.equal((await json(await deliver(t, stripe, later), 200)).result, "refunded");
    assert.equal(await balance(t, mgmt), "42");

    const [charge] = stripe.charges.keys();
    const adjustments = await transactions(t, mgmt, "adjustment");
    assert.deepEqual(adjustments.map((e) => [e.amount, e.reference]), [
      ["-63", charge],
      ["42", refund.id],
      ["-42", charge],
    ]);
    assert.match(adjustments[1].description, new RegExp(`Stripe refund ${refund.id} failed`));
    await t.assertBooks();
  }));

Deno.test("a refund failure seen before its take-back keeps the take-back from ever applying", () =>
  run(async (t, stripe) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "scale");
    const completed = stripe.event("checkout.session.completed", stripe.complete(sessionId));

    // Refund A fails before its purchase is even credited (the router does not know the payment).
    const charge = stripe.refund(sessionId, 4000);
    const staleA = structuredClone(stripe.refunds.at(-1)!);
    const failA = stripe.event("refund.failed", stripe.failRefund(staleA.id as string));
    assert.equal((await json(await deliver(t, stripe, failA), 200)).result, "ignored");
    assert.equal((await json(await deliver(t, stripe, completed), 200)).result, "credited");
    assert.equal(await balance(t, mgmt), "105");

    // Refund B fails after the purchase is credited, before its take-back arrives.
    stripe.refund(sessionId, 3000);
    const staleB = structuredClone(stripe.refunds.at(-1)!);
    const failB = stripe.event("charge.refund.updated", stripe.failRefund(staleB.id as string));
    assert.equal((await json(await deliver(t, stripe, failB), 200)).result, "ignored");
    // A failure of a refund never taken back, delivered again, writes nothing at all.
    const before = await kvStamps(t.kv);
    assert.equal((await json(await deliver(t, stripe, failB), 200)).result, "ignored");
    assert.deepEqual(await kvStamps(t.kv), before);
    assert.equal(await balance(t, mgmt), "105");

    // A take-back that read the failure records just before B's was written sees none for B:
    // B's claimed once-key alone must stop it (A's stands on its failure record alone).
    await t.kv.delete(["stripe_refund_failed", staleB.id as string]);
    // The take-backs arrive late, built before the failures: both refunds still look succeeded.
    const late = stripe.event("charge.refunded", withRefunds(charge, [staleB, staleA]));
    assert.equal((await json(await deliver(t, stripe, late), 200)).result, "already_refunded");
    assert.equal(await balance(t, mgmt), "105");
    assert.deepEqual(await transactions(t, mgmt, "adjustment"), []);
    assert.equal((await json(await deliver(t, stripe, failA), 200)).result, "ignored");
    assert.equal((await json(await deliver(t, stripe, late), 200)).result, "already_refunded");

    // A refund that goes through takes its own share, as if the failed ones had never been.
    const c = stripe.event("charge.refunded", stripe.refund(sessionId, 2000));
    assert.equal((await json(await deliver(t, stripe, c), 200)).result, "refunded");
    assert.equal(await balance(t, mgmt), "84", "20 % of the $105 granted");
    const adjustments = await transactions(t, mgmt, "adjustment");
    assert.deepEqual(adjustments.map((e) => [e.amount, e.reference]), [["-21", charge.id]]);

    // A failure of a refund this router never sold changes nothing either.
    const foreign = stripe.event("refund.failed", {
      id: "re_foreign",
      object: "refund",
      amount: 500,
      charge: "ch_foreign",
      payment_intent: "pi_foreign",
      status: "failed",
    });
    assert.equal((await json(await deliver(t, stripe, foreign), 200)).result, "ignored");
    assert.equal(await balance(t, mgmt), "84");
    assert.equal((await transactions(t, mgmt)).length, 2);
    await t.assertBooks();
  }));

Deno.test("a take-back and its refund's failure delivered at once leave the credit whole", () =>
  run(async (t, stripe) => {
    const { mgmt } = await t.account("0");
    const sessionId = await paidCheckout(t, stripe, mgmt, "scale");
    const outcomes = new Set<string>();
    for (let i = 0; i < 5; i++) {
      const charge = stripe.refund(sessionId, 1000);
      const stale = structuredClone(stripe.refunds.at(-1)!);
      const failed = stripe.event("refund.failed", stripe.failRefund(stale.id as string));
      const taken = stripe.event("charge.refunded", withRefunds(charge, [stale]));
      const [a, b] = await Promise.all([deliver(t, stripe, taken), deliver(t, stripe, failed)]);
      const pair = `${(await json(a, 200)).result} ${(await json(b, 200)).result}`;
      // Either the failure came first and the take-back replays, or the take-back came first and
      // the failure gives it back.
      assert.ok(["already_refunded ignored", "refunded refund_reversed"].includes(pair), pair);
      outcomes.add(pair);
      // Delivered again in either order, neither does anything more.
      assert.equal(
        (await json(await deliver(t, stripe, failed), 200)).result,
        pair.endsWith("ignored") ? "ignored" : "already_reversed",
      );
      assert.equal((await json(await deliver(t, stripe, taken), 200)).result, "already_refunded");
      assert.equal(await balance(t, mgmt), "105");
      await t.assertBooks();
    }
    const sum = (await transactions(t, mgmt, "adjustment"))
      .reduce((n, e) => n + Number(e.amount) * 100, 0);
    assert.equal(sum, 0, `${[...outcomes].join(", ")}: every take-back given back`);
  }));

Deno.test("checkout calls Stripe through the client createApp was given", async () => {
  const stripe = startFakeStripe();
  // The configuration's own client would reach nothing: every call must go through the given one.
  const env = { STRIPE_SECRET_KEY: "sk_test_configured", STRIPE_API_BASE: "http://127.0.0.1:9" };
  const given = new Stripe(
    "sk_test_given",
    stripeOptions(loadConfig({ ...env, STRIPE_API_BASE: stripe.url })),
  );
  const t = await startRouter({ env, stripe: given });
  try {
    const { mgmt } = await t.account("0");
    const res = await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "starter" });
    assert.equal(res.status, 200, await res.clone().text());
    assert.match((await res.json()).url, /^https:\/\//);
    const auth = new Set(stripe.requests.map((r) => r.headers.authorization));
    assert.deepEqual([...auth], ["Bearer sk_test_given"]);
  } finally {
    await t.close();
    await stripe.close();
  }
});

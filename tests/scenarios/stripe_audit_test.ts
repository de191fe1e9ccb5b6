/**
 * An audit of production billing as a Stripe user expects it: Checkout when Stripe is down or
 * slow, secrets kept out of answers and logs, webhooks for accounts or sessions the router does
 * not know, every order of a session's events, two router processes on one store, refunds
 * delivered out of order, disputes and canceled refunds. The books balance after each.
 */
import assert from "node:assert/strict";
import Stripe from "stripe";
import { json, startRouter, type TestRouter } from "../_helpers.ts";
import { type FakeStripe, startFakeStripe } from "../_fakes/stripe.ts";
import { balance, checkout, deliverSigned, kvStamps, transactions } from "../_stripe.ts";
import { serveLoopback } from "../_fakes/serve.ts";
import type { Logger } from "../../lib/log.ts";

const SECRET_KEY = "sk_test_router_secret_do_not_leak_4242";
const WEBHOOK_SECRET = "whsec_test_audit_do_not_leak_0123456789";

type Obj = Record<string, unknown>;

interface Ctx {
  t: TestRouter;
  stripe: FakeStripe;
  logs: string[];
}

/** A router in production billing against a fresh fake Stripe, with its log lines captured. */
async function run(
  fn: (c: Ctx) => Promise<void>,
  opts: { env?: Record<string, string>; kvPath?: string } = {},
) {
  const stripe = startFakeStripe();
  const logs: string[] = [];
  const log: Logger = (level, msg, fields = {}) =>
    logs.push(
      JSON.stringify(
        { level, msg, ...fields },
        (_k, v) => typeof v === "bigint" ? v.toString() : v,
      ),
    );
  const t = await startRouter({
    env: {
      STRIPE_SECRET_KEY: SECRET_KEY,
      STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
      STRIPE_API_BASE: stripe.url,
      PUBLIC_URL: "https://router.example",
      ...opts.env,
    },
    kvPath: opts.kvPath,
    log,
  });
  try {
    await fn({ t, stripe, logs });
  } finally {
    await t.close();
    await stripe.close();
  }
}

const deliver = (t: TestRouter, stripe: FakeStripe, event: Obj, secret = WEBHOOK_SECRET) =>
  deliverSigned(t, stripe, event, secret);

async function result(t: TestRouter, stripe: FakeStripe, event: Obj): Promise<string> {
  return (await json(await deliver(t, stripe, event), 200)).result;
}

/** Σ ledger = balance, checked here too (besides /v1/admin/verify). */
async function assertLedgerSum(t: TestRouter, mgmt: string) {
  const txs = await transactions(t, mgmt);
  const nanos = (s: string) => {
    const neg = s.startsWith("-");
    const [w, f = ""] = s.replace("-", "").split(".");
    const n = BigInt(w) * 1_000_000_000n + BigInt((f + "000000000").slice(0, 9));
    return neg ? -n : n;
  };
  const sum = txs.reduce((n, e) => n + nanos(e.amount), 0n);
  assert.equal(sum, nanos(await balance(t, mgmt)), "Σ ledger = balance");
}

const sessionOf = (event: Obj) => structuredClone((event.data as { object: Obj }).object);

function assertNoSecrets(where: string, text: string) {
  assert.ok(!text.includes(SECRET_KEY), `${where} holds STRIPE_SECRET_KEY`);
  assert.ok(!text.includes(SECRET_KEY.slice(-4) + '"'), `${where} holds the key's last digits`);
  assert.ok(!text.includes(WEBHOOK_SECRET), `${where} holds the webhook secret`);
}

// ---------------------------------------------------------------------------------------------
// Checkout when Stripe is down, failing or slow

Deno.test("checkout while Stripe is unreachable: 502 upstream_error JSON, nothing written", async () => {
  // A port that was just listening and is closed now: connections are refused.
  const gone = serveLoopback(() => new Response());
  const origin = gone.origin;
  await gone.close();
  await run(async ({ t, logs }) => {
    const { mgmt } = await t.account("0");
    const before = await kvStamps(t.kv);
    const res = await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "team" });
    assert.match(res.headers.get("content-type") ?? "", /application\/json/);
    const text = await res.text();
    assert.equal(res.status, 502, text);
    assert.equal(JSON.parse(text).error.code, "upstream_error");
    assertNoSecrets("the error body", text);
    assertNoSecrets("the logs", logs.join("\n"));
    assert.deepEqual(await kvStamps(t.kv), before, "nothing written");
    await t.assertBooks();
  }, { env: { STRIPE_API_BASE: origin } });
});

Deno.test("checkout when Stripe answers 500 or refuses the key: 502, no secret in the answer or logs", () =>
  run(async ({ t, stripe, logs }) => {
    const { mgmt } = await t.account("0");
    const before = await kvStamps(t.kv);
    for (const status of [500, 401, 400]) {
      stripe.failWith = status;
      const res = await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "team" });
      const text = await res.text();
      assert.equal(res.status, 502, `${status}: ${text}`);
      assert.equal(JSON.parse(text).error.code, "upstream_error");
      assertNoSecrets(`the ${status} error body`, text);
    }
    // A 500 is retried (the same idempotency key each time), a 4xx is not.
    const posts = stripe.requests.filter((r) => r.path === "/v1/customers");
    assert.equal(posts.length, 3 + 1 + 1);
    assert.equal(new Set(posts.slice(0, 3).map((r) => r.headers["idempotency-key"])).size, 1);
    assertNoSecrets("the logs", logs.join("\n"));
    assert.deepEqual(await kvStamps(t.kv), before, "nothing written");
    await t.assertBooks();
    // Stripe back: the checkout works.
    stripe.failWith = null;
    await checkout(t, stripe, mgmt, "team");
  }));

Deno.test("checkout while Stripe is too slow: 504 upstream_timeout JSON, nothing written", async () => {
  const open = new Set<Promise<void>>();
  // Answers nothing until the router gives up on the request (or a second passes).
  const slow = serveLoopback((req) => {
    const p = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 1000);
      req.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      });
    });
    open.add(p);
    return p.then(() =>
      Response.json({ error: { type: "api_error", message: "late" } }, {
        status: 500,
      })
    );
  });
  try {
    await run(async ({ t, logs }) => {
      // Stripe's own request timeout (20 s in production), shortened for the test.
      const client = t.router.svc.stripe as unknown as {
        _setApiField(k: string, v: unknown): void;
      };
      client._setApiField("timeout", 150);
      const { mgmt } = await t.account("0");
      const before = await kvStamps(t.kv);
      const res = await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "team" });
      const text = await res.text();
      assert.equal(res.status, 504, text);
      assert.match(res.headers.get("content-type") ?? "", /application\/json/);
      assert.equal(JSON.parse(text).error.code, "upstream_timeout");
      assertNoSecrets("the error body", text);
      assertNoSecrets("the logs", logs.join("\n"));
      assert.deepEqual(await kvStamps(t.kv), before, "nothing written");
      await t.assertBooks();
    }, { env: { STRIPE_API_BASE: slow.origin } });
  } finally {
    await Promise.all(open);
    await slow.close();
  }
});

Deno.test("checkout takes no amount from the client: only the package's price reaches Stripe", () =>
  run(async ({ t, stripe }) => {
    const { mgmt } = await t.account("0");
    const before = await kvStamps(t.kv);
    for (
      const body of [
        { package_id: "starter", amount: "1000" },
        { package_id: "starter", price: "0.01" },
        { package_id: "starter", credits: "1000" },
      ]
    ) {
      const res = await t.call(mgmt, "POST", "/v1/billing/checkout", body);
      assert.equal((await json(res, 400)).error.code, "invalid_request", JSON.stringify(body));
    }
    assert.equal(stripe.requests.length, 0, "nothing reached Stripe");
    assert.deepEqual(await kvStamps(t.kv), before);
    await checkout(t, stripe, mgmt, "starter");
    const post = stripe.requests.find((r) => r.path === "/v1/checkout/sessions")!;
    const item = (post.body.line_items as Record<string, Record<string, unknown>>[])[0];
    assert.equal(item.price_data.unit_amount, "1000");
    assert.equal(post.headers.authorization, `Bearer ${SECRET_KEY}`);
    await t.assertBooks();
  }));

// ---------------------------------------------------------------------------------------------
// Secrets

Deno.test("no secret appears in webhook answers or logs, whatever the failure", () =>
  run(async ({ t, stripe, logs }) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "team");
    const completed = stripe.event("checkout.session.completed", stripe.complete(sessionId));
    const bodies: string[] = [];
    // A wrong secret, then the right one.
    const wrong = await deliver(t, stripe, completed, "whsec_wrong");
    bodies.push(await wrong.text());
    assert.equal(wrong.status, 400);
    assert.equal(await result(t, stripe, completed), "credited");
    // A refund whose refunds must be listed while Stripe fails: 5xx, Stripe retries.
    stripe.failWith = 401;
    const refunded = stripe.event("charge.refunded", stripe.refund(sessionId, 500));
    const failing = await deliver(t, stripe, refunded);
    bodies.push(await failing.text());
    assert.ok(failing.status >= 500, `Stripe retries a failed listing: ${failing.status}`);
    assert.equal(await balance(t, mgmt), "25", "nothing taken back while Stripe fails");
    stripe.failWith = null;
    assert.equal(await result(t, stripe, refunded), "refunded");
    assert.equal(await balance(t, mgmt), "20");
    for (const b of bodies) assertNoSecrets("a webhook answer", b);
    assertNoSecrets("the logs", logs.join("\n"));
    await assertLedgerSum(t, mgmt);
    await t.assertBooks();
  }));

// ---------------------------------------------------------------------------------------------
// Sessions and accounts the router does not know

Deno.test("a paid session for an unknown account is acknowledged, rejected and credits nothing", () =>
  run(async ({ t, stripe, logs }) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "team");
    const session = stripe.complete(sessionId);
    session.metadata = { account_id: "acct_nobody", package_id: "team" };
    session.client_reference_id = "acct_nobody";
    // Also without the router's record of the session (as if created elsewhere).
    await t.kv.delete(["stripe_checkout", sessionId]);
    const before = await kvStamps(t.kv);
    const completed = stripe.event("checkout.session.completed", session);
    assert.equal(await result(t, stripe, completed), "rejected");
    // Only the rejection is recorded (for the payment's refunds), once however often delivered.
    const rejectedKey = ["stripe_rejected", session.payment_intent as string];
    const written = (await kvStamps(t.kv)).filter((k) => !before.includes(k));
    assert.deepEqual(written.map((k) => k.split("@")[0]), [String(rejectedKey)]);
    assert.equal(await result(t, stripe, completed), "rejected");
    assert.deepEqual((await kvStamps(t.kv)).filter((k) => !before.includes(k)), written);
    const rejection = (await t.kv.get<Obj>(rejectedKey)).value!;
    assert.equal(rejection.session_id, sessionId);
    assert.equal(rejection.reason, "unknown account");
    assert.ok(logs.some((l) => l.includes("unknown account")), "the operator is told");
    assert.equal(await balance(t, mgmt), "0");
    await t.assertBooks();
  }));

Deno.test("a refund of a session that was never credited is answered 200 at once, takes nothing", () =>
  run(async ({ t, stripe }) => {
    const { mgmt, id } = await t.account("0");
    await json(
      await t.admin("POST", `/v1/admin/accounts/${id}/adjustments`, {
        amount: "5",
        reason: "goodwill",
      }),
      201,
    );
    // Rejected for an unknown account, its refund delivered (twice) after the rejection.
    const a = await checkout(t, stripe, mgmt, "team");
    const unknown: Obj = {
      ...stripe.complete(a),
      metadata: { account_id: "acct_nobody" },
      client_reference_id: "acct_nobody",
    };
    assert.equal(
      await result(t, stripe, stripe.event("checkout.session.completed", unknown)),
      "rejected",
    );
    const refundA = stripe.event("charge.refunded", stripe.refund(a, 2500));
    assert.equal(await result(t, stripe, refundA), "not_credited");
    assert.equal(await result(t, stripe, refundA), "not_credited");
    // Rejected because the amount paid is not the package's price; the refund arrived first
    // (503, the purchase may yet come), then the rejection, then the refund again.
    const b = await checkout(t, stripe, mgmt, "team");
    const cheap = { ...stripe.complete(b), amount_total: 100 };
    const refundB = stripe.event("charge.refunded", stripe.refund(b, 100));
    const early = await deliver(t, stripe, refundB);
    assert.equal((await json(early, 503)).error.code, "retry_later");
    assert.equal(
      await result(t, stripe, stripe.event("checkout.session.completed", cheap)),
      "rejected",
    );
    assert.equal(await result(t, stripe, refundB), "not_credited");
    // A refund of a purchase neither rejected nor credited yet still waits for it.
    const c = await checkout(t, stripe, mgmt, "starter");
    const completedC = stripe.event("checkout.session.completed", stripe.complete(c));
    const refundC = stripe.event("charge.refunded", stripe.refund(c, 400));
    for (let i = 0; i < 2; i++) {
      assert.equal((await json(await deliver(t, stripe, refundC), 503)).error.code, "retry_later");
    }
    assert.equal(await result(t, stripe, completedC), "credited");
    assert.equal(await result(t, stripe, refundC), "refunded");
    assert.equal(await balance(t, mgmt), "11", "$5 + $10 − $4");
    assert.equal((await transactions(t, mgmt, "adjustment")).length, 2);
    assert.equal((await transactions(t, mgmt, "purchase")).length, 1);
    await assertLedgerSum(t, mgmt);
    await t.assertBooks();
  }));

Deno.test("a paid session the router has no record of credits the package's price only", () =>
  run(async ({ t, stripe }) => {
    const { mgmt, id } = await t.account("0");
    // A session made in Stripe directly (or whose record was lost) naming the account and a package.
    const a = await checkout(t, stripe, mgmt, "starter");
    await t.kv.delete(["stripe_checkout", a]);
    assert.equal(
      await result(t, stripe, stripe.event("checkout.session.completed", stripe.complete(a))),
      "credited",
    );
    assert.equal(await balance(t, mgmt), "10");
    // Metadata naming a bigger package than was paid for grants nothing.
    const b = await checkout(t, stripe, mgmt, "starter");
    await t.kv.delete(["stripe_checkout", b]);
    const cheap = stripe.complete(b);
    cheap.metadata = { account_id: id, package_id: "scale" };
    assert.equal(
      await result(t, stripe, stripe.event("checkout.session.completed", cheap)),
      "rejected",
    );
    // A package that does not exist grants nothing either.
    const c = await checkout(t, stripe, mgmt, "starter");
    await t.kv.delete(["stripe_checkout", c]);
    const unknown = stripe.complete(c);
    unknown.metadata = { account_id: id, package_id: "gold" };
    assert.equal(
      await result(t, stripe, stripe.event("checkout.session.completed", unknown)),
      "rejected",
    );
    // A session with no account at all is some other product's: ignored.
    const d = await checkout(t, stripe, mgmt, "starter");
    const foreign = { ...stripe.complete(d), metadata: {}, client_reference_id: null };
    assert.equal(
      await result(t, stripe, stripe.event("checkout.session.completed", foreign)),
      "ignored",
    );
    assert.equal(await balance(t, mgmt), "10");
    await assertLedgerSum(t, mgmt);
    await t.assertBooks();
  }));

// ---------------------------------------------------------------------------------------------
// Every order of a session's events

function permutations<T>(xs: T[]): T[][] {
  if (xs.length <= 1) return [xs];
  return xs.flatMap((x, i) =>
    permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p])
  );
}

Deno.test("a bank-debit session credits once on async success, in every order of its events", () =>
  run(async ({ t, stripe }) => {
    const { mgmt } = await t.account("0");
    const orders = permutations([
      "completed_unpaid",
      "succeeded",
      "succeeded_again",
      "completed_again",
    ]);
    let expected = 0;
    for (const order of orders) {
      const sessionId = await checkout(t, stripe, mgmt, "starter");
      const unpaid = stripe.event(
        "checkout.session.completed",
        stripe.complete(sessionId, { paid: false }),
      );
      const succeeded = stripe.event(
        "checkout.session.async_payment_succeeded",
        stripe.asyncPaymentSucceeds(sessionId),
      );
      const events: Record<string, Obj> = {
        completed_unpaid: unpaid,
        completed_again: unpaid,
        succeeded,
        succeeded_again: succeeded,
      };
      const results = [];
      for (const name of order) results.push(await result(t, stripe, events[name]));
      expected += 10;
      assert.equal(results.filter((r) => r === "credited").length, 1, order.join(","));
      assert.equal(await balance(t, mgmt), String(expected), order.join(","));
    }
    // A failed async payment never credits, before or after a (mistaken) redelivery of the rest.
    const sessionId = await checkout(t, stripe, mgmt, "starter");
    const unpaid = stripe.event(
      "checkout.session.completed",
      stripe.complete(sessionId, { paid: false }),
    );
    const failed = stripe.event("checkout.session.async_payment_failed", sessionOf(unpaid));
    assert.equal(await result(t, stripe, failed), "ignored");
    assert.equal(await result(t, stripe, unpaid), "awaiting_payment");
    assert.equal(await result(t, stripe, failed), "ignored");
    assert.equal(await balance(t, mgmt), String(expected));
    assert.equal((await transactions(t, mgmt, "purchase")).length, orders.length);
    await assertLedgerSum(t, mgmt);
    await t.assertBooks();
  }));

// ---------------------------------------------------------------------------------------------
// Two router processes on one store (isolates of one Deploy app)

Deno.test("two router processes on one KV: deliveries at once credit and refund once", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/router.kv`;
  try {
    await run(async ({ t: a, stripe }) => {
      const b = await startRouter({
        env: {
          STRIPE_SECRET_KEY: SECRET_KEY,
          STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
          STRIPE_API_BASE: stripe.url,
        },
        kvPath,
      });
      try {
        const { mgmt } = await a.account("0");
        for (let i = 0; i < 5; i++) {
          const sessionId = await checkout(a, stripe, mgmt, "scale");
          const completed = stripe.event("checkout.session.completed", stripe.complete(sessionId));
          const succeeded = stripe.event(
            "checkout.session.async_payment_succeeded",
            sessionOf(completed),
          );
          const rs = await Promise.all([
            deliver(a, stripe, completed),
            deliver(b, stripe, completed),
            deliver(a, stripe, succeeded),
            deliver(b, stripe, succeeded),
          ]).then((xs) => Promise.all(xs.map((r) => json(r, 200))));
          assert.equal(rs.filter((r) => r.result === "credited").length, 1);
          const refunded = stripe.event("charge.refunded", stripe.refund(sessionId, 2000));
          const qs = await Promise.all([deliver(a, stripe, refunded), deliver(b, stripe, refunded)])
            .then((xs) => Promise.all(xs.map((r) => json(r, 200))));
          assert.deepEqual(qs.map((r) => r.result).sort(), ["already_refunded", "refunded"]);
        }
        // 5 × ($105 − 20 % of $105)
        assert.equal(await balance(a, mgmt), "420");
        assert.equal((await transactions(a, mgmt, "purchase")).length, 5);
        assert.equal((await transactions(a, mgmt, "adjustment")).length, 5);
        await b.router.flush();
        await assertLedgerSum(a, mgmt);
        await a.assertBooks();
      } finally {
        await b.close();
      }
    }, { kvPath });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// Refunds: several on one charge, out of order, repeated

Deno.test("several refunds on one charge, their events out of order and repeated, take back each once", () =>
  run(async ({ t, stripe }) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "scale");
    assert.equal(
      await result(
        t,
        stripe,
        stripe.event("checkout.session.completed", stripe.complete(sessionId)),
      ),
      "credited",
    );
    // Three refunds ($10, $25, $15) happen before any of their events arrive.
    const e1 = stripe.event("charge.refunded", stripe.refund(sessionId, 1000));
    const e2 = stripe.event("charge.refunded", stripe.refund(sessionId, 2500));
    const e3 = stripe.event("charge.refunded", stripe.refund(sessionId, 1500));
    // The last event first applies all three; the others, then repeats, find nothing to do.
    assert.equal(await result(t, stripe, e3), "refunded");
    assert.equal(await balance(t, mgmt), "52.5", "$105 − 50 % of it");
    for (const e of [e1, e2, e3, e1]) assert.equal(await result(t, stripe, e), "already_refunded");
    const [charge] = stripe.charges.keys();
    const taken = await transactions(t, mgmt, "adjustment");
    assert.deepEqual(taken.map((e) => [e.amount, e.reference]).reverse(), [
      ["-10.5", charge],
      ["-26.25", charge],
      ["-15.75", charge],
    ]);
    for (const e of taken) assert.match(e.description, /^Stripe refund re_/);
    // The rest refunded: the balance is back to zero, the purchase exactly undone.
    assert.equal(
      await result(t, stripe, stripe.event("charge.refunded", stripe.refund(sessionId, 5000))),
      "refunded",
    );
    assert.equal(await balance(t, mgmt), "0");
    await assertLedgerSum(t, mgmt);
    await t.assertBooks();
  }));

Deno.test("a refund takes back credit already spent: the balance goes below zero, the books balance", () =>
  run(async ({ t, stripe }) => {
    const { mgmt, id } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "starter");
    await result(t, stripe, stripe.event("checkout.session.completed", stripe.complete(sessionId)));
    // $8 of the $10 spent (by an operator adjustment, as usage would).
    await json(
      await t.admin("POST", `/v1/admin/accounts/${id}/adjustments`, {
        amount: "-8",
        reason: "spent",
      }),
      201,
    );
    assert.equal(
      await result(t, stripe, stripe.event("charge.refunded", stripe.refund(sessionId, 1000))),
      "refunded",
    );
    assert.equal(await balance(t, mgmt), "-8");
    await assertLedgerSum(t, mgmt);
    await t.assertBooks();
  }));

// ---------------------------------------------------------------------------------------------
// Disputes and canceled refunds

Deno.test("a dispute opened without funds withdrawn takes nothing; the withdrawal takes back once", () =>
  run(async ({ t, stripe }) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "team");
    await result(t, stripe, stripe.event("checkout.session.completed", stripe.complete(sessionId)));
    // An inquiry, then a dispute opened before its funds move: acknowledged, nothing written.
    const inquiry = stripe.dispute(sessionId, {
      withdrawn: false,
      status: "warning_needs_response",
    });
    const opened = stripe.dispute(sessionId, { withdrawn: false });
    // The purchase's webhook event is fanned out first, so that nothing moves while compared.
    await t.router.flush();
    const before = await kvStamps(t.kv);
    for (const type of ["charge.dispute.created", "charge.dispute.updated"]) {
      for (const d of [inquiry, opened]) {
        assert.equal(await result(t, stripe, stripe.event(type, d)), "ignored", type);
      }
    }
    assert.equal(
      await result(
        t,
        stripe,
        stripe.event("charge.dispute.closed", { ...inquiry, status: "warning_closed" }),
      ),
      "ignored",
    );
    assert.deepEqual(await kvStamps(t.kv), before);
    assert.equal(await balance(t, mgmt), "25");
    // The funds are withdrawn: the disputed share is taken back once, however delivered.
    const withdrawn = stripe.event(
      "charge.dispute.funds_withdrawn",
      stripe.withdrawDispute(opened.id as string),
    );
    const rs = await Promise.all([deliver(t, stripe, withdrawn), deliver(t, stripe, withdrawn)])
      .then((xs) => Promise.all(xs.map((r) => json(r, 200))));
    assert.deepEqual(rs.map((r) => r.result).sort(), ["already_disputed", "disputed"]);
    assert.equal(await result(t, stripe, withdrawn), "already_disputed");
    assert.equal(await balance(t, mgmt), "0");
    // Created delivered late (as first built, no funds moved yet), then the loss: nothing more.
    assert.equal(
      await result(t, stripe, stripe.event("charge.dispute.created", opened)),
      "ignored",
    );
    const lost = stripe.closeDispute(opened.id as string, "lost");
    assert.equal(
      await result(t, stripe, stripe.event("charge.dispute.closed", lost)),
      "already_disputed",
    );
    assert.equal(await balance(t, mgmt), "0");
    const adjustments = await transactions(t, mgmt, "adjustment");
    assert.deepEqual(adjustments.map((e) => [e.amount, e.reference]), [["-25", opened.id]]);
    assert.match(
      adjustments[0].description,
      /^Stripe dispute dp_\S+ \(fraudulent\): Team package$/,
    );
    await assertLedgerSum(t, mgmt);
    await t.assertBooks();
  }));

Deno.test("a dispute won gives back exactly what it took, once, in every order of its events", () =>
  run(async ({ t, stripe }) => {
    const { mgmt } = await t.account("0");
    const orders = permutations(["created", "withdrawn", "reinstated", "closed"]);
    for (const [n, order] of orders.entries()) {
      const sessionId = await checkout(t, stripe, mgmt, "scale");
      await result(
        t,
        stripe,
        stripe.event("checkout.session.completed", stripe.complete(sessionId)),
      );
      // $33.33 of the $100 charge disputed (a card dispute withdraws at once), then won.
      const created = stripe.dispute(sessionId, { amount: 3333 });
      const won = stripe.closeDispute(created.id as string, "won");
      const events: Record<string, Obj> = {
        created: stripe.event("charge.dispute.created", created),
        withdrawn: stripe.event("charge.dispute.funds_withdrawn", created),
        reinstated: stripe.event("charge.dispute.funds_reinstated", won),
        closed: stripe.event("charge.dispute.closed", won),
      };
      for (const name of order) await result(t, stripe, events[name]);
      // Everything again, two at once.
      for (const name of order) {
        await Promise.all([deliver(t, stripe, events[name]), deliver(t, stripe, events[name])])
          .then((xs) => Promise.all(xs.map((r) => json(r, 200))));
      }
      assert.equal(await balance(t, mgmt), String(105 * (n + 1)), order.join(","));
      const rows = (await transactions(t, mgmt, "adjustment"))
        .filter((e) => e.reference === created.id).map((e) => e.amount);
      // Taken and given back, or (the reinstatement, or the closing as won, first) never taken.
      const first = (names: string[]) => Math.min(...names.map((x) => order.indexOf(x)));
      const expected = first(["reinstated", "closed"]) < first(["created", "withdrawn"])
        ? []
        : ["34.9965", "-34.9965"];
      assert.deepEqual(rows, expected, order.join(","));
    }
    await assertLedgerSum(t, mgmt);
    await t.assertBooks();
  }));

Deno.test("refunds and disputes together never take back more than the purchase credited", () =>
  run(async ({ t, stripe }) => {
    const { mgmt } = await t.account("0");
    const buy = async () => {
      const id = await checkout(t, stripe, mgmt, "scale");
      await result(t, stripe, stripe.event("checkout.session.completed", stripe.complete(id)));
      return id;
    };
    // $40 refunded, then the whole $100 disputed: the dispute takes only the unrefunded 60 %.
    const a = await buy();
    assert.equal(
      await result(t, stripe, stripe.event("charge.refunded", stripe.refund(a, 4000))),
      "refunded",
    );
    const da = stripe.dispute(a);
    assert.equal(
      await result(t, stripe, stripe.event("charge.dispute.funds_withdrawn", da)),
      "disputed",
    );
    assert.equal(await balance(t, mgmt), "0");
    // Lost, the refunded $40 is reinstated ("partially won"): the take-back stands as it is.
    const lostA = stripe.closeDispute(da.id as string, "lost", 4000);
    for (const type of ["charge.dispute.funds_reinstated", "charge.dispute.closed"]) {
      assert.equal(await result(t, stripe, stripe.event(type, lostA)), "already_disputed", type);
    }
    assert.equal(await balance(t, mgmt), "0");
    // The same with the refund's event delivered after the dispute's.
    const b = await buy();
    const refundB = stripe.event("charge.refunded", stripe.refund(b, 4000));
    const db = stripe.dispute(b);
    assert.equal(
      await result(t, stripe, stripe.event("charge.dispute.created", db)),
      "disputed",
    );
    assert.equal(await balance(t, mgmt), "42");
    assert.equal(await result(t, stripe, refundB), "refunded");
    assert.equal(await balance(t, mgmt), "0");
    // Won after the refund: the dispute's take-back (only) comes back.
    const c = await buy();
    await result(t, stripe, stripe.event("charge.refunded", stripe.refund(c, 4000)));
    const dc = stripe.dispute(c);
    assert.equal(
      await result(t, stripe, stripe.event("charge.dispute.funds_withdrawn", dc)),
      "disputed",
    );
    const wonC = stripe.closeDispute(dc.id as string, "won");
    assert.equal(
      await result(t, stripe, stripe.event("charge.dispute.funds_reinstated", wonC)),
      "dispute_reinstated",
    );
    assert.equal(await balance(t, mgmt), "63");
    // Fully refunded, then a (mistaken) dispute withdrawal: nothing left to take.
    const d = await buy();
    await result(t, stripe, stripe.event("charge.refunded", stripe.refund(d, 10000)));
    const dd = stripe.dispute(d);
    assert.equal(
      await result(t, stripe, stripe.event("charge.dispute.funds_withdrawn", dd)),
      "nothing_to_take",
    );
    assert.equal(
      await result(t, stripe, stripe.event("charge.dispute.funds_withdrawn", dd)),
      "already_disputed",
    );
    assert.equal(await balance(t, mgmt), "63");
    // The whole charge disputed, then a refund (Stripe refuses to refund a disputed payment; were
    // one made anyway): the refund finds nothing left to take.
    const e = await buy();
    await result(t, stripe, stripe.event("charge.dispute.funds_withdrawn", stripe.dispute(e)));
    assert.equal(
      await result(t, stripe, stripe.event("charge.refunded", stripe.refund(e, 4000))),
      "already_refunded",
    );
    assert.equal(await balance(t, mgmt), "63");
    const byRef = (await transactions(t, mgmt, "adjustment")).reverse()
      .map((e) => [e.amount, e.reference]);
    const charge = (session: string) =>
      [...stripe.charges.values()].find((ch) =>
        ch.payment_intent === stripe.sessions.get(session)!.payment_intent
      )!.id;
    assert.deepEqual(byRef, [
      ["-42", charge(a)],
      ["-63", da.id],
      ["-63", db.id],
      ["-42", charge(b)],
      ["-42", charge(c)],
      ["-63", dc.id],
      ["63", dc.id],
      ["-105", charge(d)],
      ["-105", [...stripe.disputes.keys()].at(-1)],
    ]);
    await assertLedgerSum(t, mgmt);
    await t.assertBooks();
  }));

Deno.test("a dispute of a payment with no credited purchase is answered as its refund would be", () =>
  run(async ({ t, stripe }) => {
    const { mgmt } = await t.account("0");
    // A charge of another product on the same Stripe account (no metadata): not ours, ignored.
    stripe.charges.set("ch_foreign", {
      id: "ch_foreign",
      object: "charge",
      amount: 500,
      currency: "usd",
      payment_intent: "pi_foreign",
      metadata: {},
    });
    const foreign = {
      id: "dp_foreign",
      object: "dispute",
      amount: 500,
      balance_transactions: [{ id: "txn_x", object: "balance_transaction", amount: -500 }],
      charge: "ch_foreign",
      currency: "usd",
      payment_intent: null,
      reason: "fraudulent",
      status: "needs_response",
    };
    const before = await kvStamps(t.kv);
    assert.equal(
      await result(t, stripe, stripe.event("charge.dispute.funds_withdrawn", foreign)),
      "ignored",
    );
    assert.deepEqual(await kvStamps(t.kv), before);
    // Ours, its purchase not credited yet: 503 so that Stripe delivers it again.
    const a = await checkout(t, stripe, mgmt, "team");
    const completed = stripe.event("checkout.session.completed", stripe.complete(a));
    // As an older API version shows it: the charge only, no payment_intent.
    const disputed = stripe.event("charge.dispute.funds_withdrawn", {
      ...stripe.dispute(a, { amount: 1000 }),
      payment_intent: null,
    });
    for (let i = 0; i < 2; i++) {
      assert.equal((await json(await deliver(t, stripe, disputed), 503)).error.code, "retry_later");
    }
    assert.equal(await result(t, stripe, completed), "credited");
    assert.equal(await result(t, stripe, disputed), "disputed");
    assert.equal(await balance(t, mgmt), "15");
    // A purchase the router rejected: nothing to take back, answered at once.
    const b = await checkout(t, stripe, mgmt, "team");
    const unknown: Obj = {
      ...stripe.complete(b),
      metadata: { account_id: "acct_nobody" },
      client_reference_id: "acct_nobody",
    };
    assert.equal(
      await result(t, stripe, stripe.event("checkout.session.completed", unknown)),
      "rejected",
    );
    const db = stripe.dispute(b);
    assert.equal(
      await result(t, stripe, stripe.event("charge.dispute.funds_withdrawn", db)),
      "not_credited",
    );
    const wonB = stripe.closeDispute(db.id as string, "won");
    assert.equal(
      await result(t, stripe, stripe.event("charge.dispute.funds_reinstated", wonB)),
      "not_credited",
    );
    assert.equal(await balance(t, mgmt), "15");
    await assertLedgerSum(t, mgmt);
    await t.assertBooks();
  }));

Deno.test("a refund canceled after its take-back gives the credit back once", () =>
  run(async ({ t, stripe }) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "scale");
    await result(t, stripe, stripe.event("checkout.session.completed", stripe.complete(sessionId)));
    const refunded = stripe.event("charge.refunded", stripe.refund(sessionId, 4000));
    assert.equal(await result(t, stripe, refunded), "refunded");
    assert.equal(await balance(t, mgmt), "63");
    // The refund is canceled (the money never left): Stripe shows it `canceled`, the charge's
    // refunded amount drops by it.
    const refund = stripe.refunds.at(-1)!;
    stripe.failRefund(refund.id as string);
    refund.status = "canceled";
    delete refund.failure_reason;
    const results = [];
    for (const type of ["charge.refund.updated", "refund.updated", "charge.refund.updated"]) {
      results.push(await result(t, stripe, stripe.event(type, structuredClone(refund))));
    }
    assert.deepEqual(results, ["refund_reversed", "already_reversed", "already_reversed"]);
    assert.equal(await balance(t, mgmt), "105", "the canceled refund's take-back is given back");
    const [charge] = stripe.charges.keys();
    const adjustments = await transactions(t, mgmt, "adjustment");
    assert.deepEqual(adjustments.map((e) => [e.amount, e.reference]), [
      ["42", refund.id],
      ["-42", charge],
    ]);
    assert.match(adjustments[0].description, /canceled/);
    assert.equal(await result(t, stripe, refunded), "already_refunded");
    assert.equal(await balance(t, mgmt), "105");
    await assertLedgerSum(t, mgmt);
    await t.assertBooks();
  }));

Deno.test("a refund canceled before its take-back arrives keeps the take-back from applying", () =>
  run(async ({ t, stripe }) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "scale");
    await result(t, stripe, stripe.event("checkout.session.completed", stripe.complete(sessionId)));
    const charge = stripe.refund(sessionId, 4000);
    const stale = structuredClone(stripe.refunds.at(-1)!);
    const refund = stripe.refunds.at(-1)!;
    stripe.failRefund(refund.id as string);
    refund.status = "canceled";
    delete refund.failure_reason;
    const canceled = stripe.event("refund.updated", structuredClone(refund));
    assert.equal(await result(t, stripe, canceled), "ignored", "nothing was taken back");
    // The take-back arrives late, built while the refund still looked pending.
    const late = stripe.event("charge.refunded", {
      ...charge,
      refunds: { object: "list", data: [{ ...stale, status: "pending" }], has_more: false },
    });
    assert.equal(await result(t, stripe, late), "already_refunded");
    assert.equal(await balance(t, mgmt), "105");
    assert.deepEqual(await transactions(t, mgmt, "adjustment"), []);
    await t.assertBooks();
  }));

// ---------------------------------------------------------------------------------------------
// Signatures

Deno.test("a signed payload with non-ASCII text verifies (the raw bytes are what is signed)", () =>
  run(async ({ t, stripe }) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "team");
    const session = stripe.complete(sessionId);
    session.customer_details = { name: "Zoë Ångström — 東京 🚀", email: "zoe@example.com" };
    assert.equal(
      await result(t, stripe, stripe.event("checkout.session.completed", session)),
      "credited",
    );
    assert.equal(await balance(t, mgmt), "25");
    await t.assertBooks();
  }));

Deno.test("a signature header with several v1 values (Stripe rolling its secret) verifies", () =>
  run(async ({ t, stripe }) => {
    const { mgmt } = await t.account("0");
    const sessionId = await checkout(t, stripe, mgmt, "team");
    const event = stripe.event("checkout.session.completed", stripe.complete(sessionId));
    const { payload, header } = await stripe.sign(event, WEBHOOK_SECRET);
    const cp = Stripe.createSubtleCryptoProvider();
    const other = await Stripe.webhooks.generateTestHeaderStringAsync({
      payload,
      secret: "whsec_other_endpoint_secret",
      timestamp: Number(/t=(\d+)/.exec(header)![1]),
      cryptoProvider: cp,
    });
    // Stripe sends t=…,v1=<old>,v1=<new>: either order must verify.
    const otherV1 = /v1=([0-9a-f]+)/.exec(other)![1];
    for (const h of [`${header},v1=${otherV1}`, header.replace(/v1=/, `v1=${otherV1},v1=`)]) {
      const res = await fetch(`${t.url}/v1/stripe/webhook`, {
        method: "POST",
        headers: { "stripe-signature": h },
        body: payload,
      });
      await json(res, 200);
    }
    assert.equal(await balance(t, mgmt), "25");
    await t.assertBooks();
  }));

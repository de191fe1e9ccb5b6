/**
 * Auto top-up with two router processes (`main.ts` subprocesses on one KV file, balance leases
 * on) serving one account: the threshold crossed under 300 concurrent requests starts exactly one
 * top-up, and Stripe's webhook for it, delivered three times to either process, credits once.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { ADMIN_TOKEN, json, until } from "../_helpers.ts";
import { startFakeOpenAI } from "../_fakes/openai.ts";
import { startFakeStripe } from "../_fakes/stripe.ts";
import { startReceiver } from "../_fakes/receiver.ts";
import { spawnRouter } from "../_main.ts";
import { parseUsd } from "../../lib/money.ts";
import { CHAT, PRICED, SECRET } from "../_spend.ts";

type Router = Awaited<ReturnType<typeof spawnRouter>>;

const call = async (url: string, auth: string, method: string, path: string, body?: unknown) =>
  await fetch(url + path, {
    method,
    headers: { authorization: `Bearer ${auth}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });

Deno.test("two router processes, 300 concurrent requests through the threshold: exactly one top-up; its webhook three times credits once; the books balance", async () => {
  const dir = await Deno.makeTempDir();
  const openai = startFakeOpenAI();
  const stripe = startFakeStripe();
  const rx = startReceiver();
  // Each request billed its whole hold: its body's bytes of prompt, one output token, $0.01 each.
  const cents = new TextEncoder().encode(JSON.stringify(CHAT)).length + 1;
  openai.scenario = { usage: { prompt_tokens: cents - 1, completion_tokens: 1 }, delayMs: 20 };
  await Deno.writeTextFile(`${dir}/providers.json`, JSON.stringify(PRICED));
  const env = {
    KV_PATH: `${dir}/router.kv`,
    OPENAI_API_KEY: "sk-upstream-test",
    OPENAI_BASE_URL: openai.url,
    ADMIN_TOKEN,
    PROVIDERS_FILE: `${dir}/providers.json`,
    STRIPE_SECRET_KEY: "sk_test_router",
    STRIPE_API_BASE: stripe.url,
    STRIPE_WEBHOOK_SECRET: SECRET,
    WEBHOOK_ALLOW_PRIVATE_URLS: "true",
    LEASE_IDLE_MS: "300",
  };
  const routers: Router[] = [];
  try {
    for (let i = 0; i < 2; i++) routers.push(await spawnRouter(env));
    const [a, b] = routers.map((r) => r.url);
    // 300 requests spend 300 × cents of 360 × cents; the threshold is crossed at the 131st. Each
    // process, knowing its own debits (and the other's only once folded), sees it by its 131st,
    // within the run; the bank takes longer to answer than the rest of the run, so both
    // processes cross while the top-up is in flight.
    const start = 360 * cents / 100;
    const threshold = 230 * cents / 100;
    stripe.intentDelayMs = 1500;
    const acct = await json(
      await call(a, ADMIN_TOKEN, "POST", "/v1/admin/accounts", { name: "Load" }),
      201,
    );
    const mgmt = acct.management_key;
    const { key } = await json(await call(a, mgmt, "POST", "/v1/keys", { name: "load" }), 201);
    rx.secret = (await json(
      await call(a, mgmt, "POST", "/v1/webhooks", {
        url: rx.url,
        events: ["auto_topup.succeeded"],
      }),
      201,
    )).secret;

    // The card, saved through Stripe's setup page and its webhook (to the other process).
    const { url } = await json(await call(a, mgmt, "POST", "/v1/billing/payment_method"), 200);
    const session = stripe.completeSetup(/(cs_[a-z0-9_]+)$/.exec(url)![1]);
    const signed = await stripe.sign(stripe.event("checkout.session.completed", session), SECRET);
    const saved = await fetch(`${b}/v1/stripe/webhook`, {
      method: "POST",
      headers: { "stripe-signature": signed.header, "content-type": "application/json" },
      body: signed.payload,
    });
    assert.equal((await json(saved, 200)).result, "payment_method_saved");
    await json(
      await call(b, mgmt, "PUT", "/v1/billing/auto_topup", {
        enabled: true,
        threshold: threshold.toFixed(2),
        amount: "500",
        monthly_cap: "1000",
      }),
      200,
    );
    // The credit last: each process reads the account's thresholds at its first commit on it
    // (then again every 2 s), so both know auto top-up is on.
    await json(
      await call(a, ADMIN_TOKEN, "POST", `/v1/admin/accounts/${acct.id}/adjustments`, {
        amount: start.toFixed(2),
        reason: "start",
      }),
      201,
    );

    const clients = [a, b].map((u) =>
      new OpenAI({ apiKey: key, baseURL: `${u}/v1`, maxRetries: 0 })
    );
    const outcomes = await Promise.allSettled(
      Array.from({ length: 300 }, (_, i) => clients[i % 2].chat.completions.create(CHAT)),
    );
    const failed = outcomes.filter((o) => o.status === "rejected");
    assert.deepEqual(failed, [], "every request served");

    // The crossing may be seen late by a process whose leases lacked the other's debits (at the
    // latest when the leases are folded, once idle); then the top-up runs.
    const topup = await until("the top-up", 20_000, async () => {
      const s = await json(await call(a, mgmt, "GET", "/v1/billing/auto_topup"), 200);
      return s.last?.outcome === "succeeded" && !s.in_flight ? s : null;
    });
    assert.equal(topup.this_month, "500");
    // Leases returned: nothing left to fold that could be seen as another crossing.
    await until("the books to balance", 20_000, async () => {
      const v = await json(await call(a, ADMIN_TOKEN, "GET", "/v1/admin/verify"), 200);
      return v.ok && v.pending_events === 0 ? v : null;
    });
    await new Promise((r) => setTimeout(r, 1000));
    const creates = stripe.requests.filter((r) =>
      r.method === "POST" && r.path === "/v1/payment_intents"
    );
    assert.equal(creates.length, 1, "exactly one top-up started");
    const [pi] = [...stripe.paymentIntents.values()];
    assert.equal(pi.status, "succeeded", "its PaymentIntent succeeded");

    // Stripe's webhook for it, three times, to either process: credited once already.
    const event = stripe.event("payment_intent.succeeded", stripe.paymentIntent(pi.id as string));
    for (const u of [a, b, a]) {
      const s = await stripe.sign(event, SECRET);
      const r = await fetch(`${u}/v1/stripe/webhook`, {
        method: "POST",
        headers: { "stripe-signature": s.header, "content-type": "application/json" },
        body: s.payload,
      });
      assert.equal((await json(r, 200)).result, "topup_already_credited");
    }
    const purchases = (await json(
      await call(b, mgmt, "GET", "/v1/transactions?type=purchase"),
      200,
    )).data;
    assert.deepEqual(purchases.map((p: { amount: string }) => p.amount), ["500"]);
    const credits = await json(await call(b, mgmt, "GET", "/v1/credits"), 200);
    assert.equal(
      parseUsd(credits.balance),
      parseUsd(start.toFixed(2))! + 500_000_000_000n - 300n * BigInt(cents) * 10_000_000n,
      "start + the top-up − 300 requests",
    );
    await rx.waitFor(1);
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(rx.received.length, 1, "one auto_topup.succeeded");
    assert.ok(rx.received[0].verified.ok);
    const v = await json(await call(b, ADMIN_TOKEN, "GET", "/v1/admin/verify"), 200);
    assert.deepEqual([v.ok, v.differences], [true, []]);
  } finally {
    for (const r of routers) await r.stop().catch(() => {});
    await rx.close();
    await stripe.close();
    await openai.close();
    await Deno.remove(dir, { recursive: true });
  }
});

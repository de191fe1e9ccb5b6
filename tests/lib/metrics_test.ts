/**
 * `GET /metrics` and the instruments read in process: who may scrape, Stripe webhook outcomes,
 * a stream's gauge, the finish reasons spans carry, and the ids an outbox's age is read from.
 */
import assert from "node:assert/strict";
import { ADMIN_TOKEN, json, startRouter } from "../_helpers.ts";
import { startFakeStripe } from "../_fakes/stripe.ts";
import { deliverSigned } from "../_stripe.ts";
import { createApp } from "../../lib/app.ts";
import { loadConfig } from "../../lib/config.ts";
import { silentLogger } from "../../lib/log.ts";
import { stripeWebhooks } from "../../lib/metrics.ts";
import { finishReasons } from "../../lib/telemetry/inference.ts";
import { idFloor, idTime, newId } from "../../lib/ids.ts";

const METRICS_TOKEN = "metrics-token-0123456789";

/** A router on `env` (in memory, not listening), for `app.request`. */
async function appOn(env: Record<string, string>) {
  const kv = await Deno.openKv(":memory:");
  const router = createApp({ kv, config: loadConfig(env), log: silentLogger });
  return {
    scrape: (auth?: string) =>
      router.app.request("/metrics", auth ? { headers: { authorization: `Bearer ${auth}` } } : {}),
    async close() {
      await router.close();
      kv.close();
    },
  };
}

Deno.test("GET /metrics: METRICS_TOKEN or ADMIN_TOKEN, 401 JSON otherwise; 503 while neither is set", async () => {
  const both = await appOn({ ADMIN_TOKEN, METRICS_TOKEN, KV_PATH: ":memory:" });
  try {
    assert.equal((await json(await both.scrape(), 401)).error.code, "invalid_api_key");
    assert.equal(
      (await json(await both.scrape("x".repeat(24)), 401)).error.code,
      "invalid_api_key",
    );
    for (const token of [METRICS_TOKEN, ADMIN_TOKEN]) {
      const res = await both.scrape(token);
      assert.equal(res.status, 200);
      assert.match(await res.text(), /^# HELP router_/m);
    }
  } finally {
    await both.close();
  }
  // Production billing generates no admin token: only METRICS_TOKEN opens the metrics then.
  const production = { BILLING_MODE: "production", STRIPE_SECRET_KEY: "sk_test_x" };
  const none = await appOn(production);
  try {
    assert.equal((await json(await none.scrape(ADMIN_TOKEN), 503)).error.code, "metrics_disabled");
  } finally {
    await none.close();
  }
  const metricsOnly = await appOn({ ...production, METRICS_TOKEN });
  try {
    const res = await metricsOnly.scrape(METRICS_TOKEN);
    assert.equal(res.status, 200);
    await res.body?.cancel();
  } finally {
    await metricsOnly.close();
  }
});

Deno.test("router_stripe_webhooks_total counts each delivery by what it did or why it was refused", async () => {
  const SECRET = "whsec_metrics_test";
  const stripe = startFakeStripe();
  const t = await startRouter({
    env: {
      STRIPE_SECRET_KEY: "sk_test_metrics",
      STRIPE_WEBHOOK_SECRET: SECRET,
      STRIPE_API_BASE: stripe.url,
    },
  });
  try {
    const before = {
      ignored: await stripeWebhooks.get({ outcome: "ignored" }),
      invalid: await stripeWebhooks.get({ outcome: "invalid_signature" }),
    };
    const event = { id: "evt_metrics_1", type: "customer.created", data: { object: {} } };
    assert.equal(
      (await json(await deliverSigned(t, stripe, event, SECRET), 200)).result,
      "ignored",
    );
    const forged = await deliverSigned(t, stripe, event, "whsec_someone_else");
    assert.equal((await json(forged, 400)).error.code, "invalid_signature");
    assert.equal(await stripeWebhooks.get({ outcome: "ignored" }), before.ignored + 1);
    assert.equal(await stripeWebhooks.get({ outcome: "invalid_signature" }), before.invalid + 1);
  } finally {
    await t.close();
    await stripe.close();
  }
});

Deno.test("router_streams_live counts a stream while it runs", async () => {
  const t = await startRouter();
  try {
    const { key } = await t.account("1");
    t.openai.scenario = { chunks: 20, chunkDelayMs: 20 };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
      stream: true,
    });
    const reader = res.body!.getReader();
    await reader.read();
    const live = async () => {
      const text = await (await t.admin("GET", "/metrics")).text();
      return Number(/^router_streams_live (\d+)$/m.exec(text)?.[1]);
    };
    assert.equal(await live(), 1);
    while (!(await reader.read()).done);
    assert.equal(await live(), 0);
  } finally {
    await t.close();
  }
});

Deno.test("finishReasons: OpenAI choices, Anthropic's stop_reason, a Responses reply's status", () => {
  assert.deepEqual(
    finishReasons({ choices: [{ finish_reason: "stop" }, { finish_reason: "length" }] }),
    ["stop", "length"],
  );
  assert.deepEqual(finishReasons({ choices: [{ finish_reason: null }] }), []);
  assert.deepEqual(finishReasons({ type: "message", stop_reason: "end_turn" }), ["end_turn"]);
  assert.deepEqual(finishReasons({ type: "message_delta", delta: { stop_reason: "max_tokens" } }), [
    "max_tokens",
  ]);
  assert.deepEqual(finishReasons({ object: "response", status: "completed" }), ["completed"]);
  assert.deepEqual(
    finishReasons({
      type: "response.incomplete",
      response: { status: "incomplete", incomplete_details: { reason: "max_output_tokens" } },
    }),
    ["max_output_tokens"],
  );
});

Deno.test("idTime reads back the time an id was made at", () => {
  const ms = Date.UTC(2026, 11, 7, 12, 30, 15, 123);
  assert.equal(idTime(idFloor("evt", ms)), ms);
  const before = Date.now();
  const made = idTime(newId("evt"))!;
  assert.ok(made >= before && made <= Date.now());
  assert.equal(idTime("evt_!!"), null);
  assert.equal(idTime("nounderscore"), null);
});

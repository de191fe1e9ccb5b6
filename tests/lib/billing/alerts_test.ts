/**
 * Spend alerts: the account's low-balance threshold and each key's thresholds of its credit
 * limit, each fired once per crossing (per limit period for keys), also when two routers on one
 * KV serve the account, delivered to the account's webhook endpoints and shown as active.
 */
import assert from "node:assert/strict";
import { json, startRouter, type TestRouter, until } from "../../_helpers.ts";
import { type Receiver, startReceiver, type WebhookBody } from "../../_fakes/receiver.ts";
import { addEndpoint, settled } from "../../_webhooks.ts";
import { fireLowBalance } from "../../../lib/billing/alerts.ts";
import { CHAT, PRICED, spend, spendRouter } from "../../_spend.ts";

/**
 * The events the receiver got, as [type, data], from the `from`-th delivery on: ordered by their
 * key threshold (deliveries are not ordered), else as received. Each is verified unless the
 * router's clock was moved (its signature's timestamp is then out of the receiver's tolerance).
 */
const received = (rx: Receiver, from = 0, verify = true) =>
  rx.received.slice(from).map((r) => {
    if (verify) assert.ok(r.verified.ok, "every delivery verifies");
    const e = JSON.parse(r.body) as WebhookBody;
    return [e.type, e.data] as const;
  }).sort(([, x], [, y]) => Number(x.threshold ?? 0) - Number(y.threshold ?? 0));

Deno.test("balance.low fires once when a settlement takes the balance below the threshold, again only after it rose and crossed again", () =>
  spendRouter(async (t) => {
    const rx = startReceiver();
    try {
      const { id, mgmt, key } = await t.account("2.25");
      const endpoint = await addEndpoint(t, mgmt, rx, ["balance.low"]);
      for (const bad of [{ low_balance_threshold: "-1" }, { low_balance_threshold: "x" }, {}]) {
        await json(await t.call(mgmt, "PUT", "/v1/alerts", bad), 400);
      }
      const set = await json(
        await t.call(mgmt, "PUT", "/v1/alerts", { low_balance_threshold: "2" }),
        200,
      );
      assert.deepEqual(set, { low_balance_threshold: "2", active: [] });
      await spend(t, key, 3); // 2.25 → 1.95: crossed at the third
      await spend(t, key, 3); // below: nothing more
      // Nor does a crossing another process reports late: no credit came since it fired.
      assert.equal(await fireLowBalance(t.router.svc, id), false);
      await settled(t, mgmt, endpoint, 1);
      assert.deepEqual(received(rx), [["balance.low", { balance: "1.95", threshold: "2" }]]);
      const alerts = await json(await t.call(mgmt, "GET", "/v1/alerts"), 200);
      assert.deepEqual(alerts.active, [{
        type: "balance.low",
        balance: "1.65",
        threshold: "2",
      }]);

      // A credit lifts it above; the next crossing fires again.
      await json(
        await t.admin("POST", `/v1/admin/accounts/${id}/adjustments`, {
          amount: "0.5",
          reason: "r",
        }),
        201,
      );
      assert.deepEqual((await json(await t.call(mgmt, "GET", "/v1/alerts"), 200)).active, []);
      await spend(t, key, 2); // 2.15 → 1.95
      await settled(t, mgmt, endpoint, 2);
      assert.equal(rx.received.length, 2);
      assert.deepEqual(received(rx)[1], ["balance.low", { balance: "1.95", threshold: "2" }]);

      // Off: no more.
      await json(await t.call(mgmt, "PUT", "/v1/alerts", { low_balance_threshold: null }), 200);
      await json(
        await t.admin("POST", `/v1/admin/accounts/${id}/adjustments`, {
          amount: "0.5",
          reason: "r",
        }),
        201,
      );
      await spend(t, key, 2);
      await t.router.flush();
      assert.equal(rx.received.length, 2);
      await t.assertBooks();
    } finally {
      await rx.close();
    }
  }));

/** Two routers on one KV file, each with its fake upstream, on one clock. */
async function twoRouters(now: () => number) {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/router.kv`;
  const routers: TestRouter[] = [];
  for (let i = 0; i < 2; i++) {
    const t = await startRouter({
      kvPath,
      now,
      providersFile: PRICED,
      env: { WEBHOOK_ALLOW_PRIVATE_URLS: "true" },
    });
    // Every request billed exactly its hold: its body's bytes of prompt and its one output token.
    const bytes = new TextEncoder().encode(JSON.stringify(CHAT)).length;
    t.openai.scenario = { usage: { prompt_tokens: bytes, completion_tokens: 1 } };
    routers.push(t);
  }
  return {
    routers,
    /** Each request's cost (= its hold), in cents: $0.01 a token. */
    cents: new TextEncoder().encode(JSON.stringify(CHAT)).length + 1,
    async close() {
      for (const t of routers) await t.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("a key crossing 80 % and 100 % of its limit fires each once per period, whichever of two routers sees it, and again after the reset", async () => {
  let offset = 0;
  const now = () => Date.now() + offset;
  const { routers: [a, b], cents, close } = await twoRouters(now);
  const rx = startReceiver();
  try {
    const { mgmt, key, keyId } = await a.account("20", {
      credit_limit: (5 * cents / 100).toFixed(2),
      limit_reset: "daily",
    });
    const endpoint = await addEndpoint(a, mgmt, rx, ["key.limit_threshold"]);
    const k = await json(await a.call(mgmt, "GET", `/v1/keys/${keyId}`), 200);
    assert.deepEqual(k.alert_thresholds, [0.8, 1], "the default thresholds");

    const serve = async (t: TestRouter) => {
      await json(await t.call(key, "POST", "/v1/chat/completions", CHAT), 200);
      await t.router.svc.spend.idle();
    };
    // Five requests of a fifth of the limit each, alternating: 80 % at the fourth, 100 % at the
    // fifth; the router serving the fifth saw the spend go from 40 % to 100 %, past both.
    for (const t of [a, b, a, b, a]) await serve(t);
    const refused = await json(await b.call(key, "POST", "/v1/chat/completions", CHAT), 402);
    assert.equal(refused.error.code, "key_limit_exceeded");
    await settled(a, mgmt, endpoint, 2);
    const limit = (5 * cents / 100).toFixed(2).replace(/\.?0+$/, "");
    const spendAt = (n: number) => (n * cents / 100).toFixed(2).replace(/\.?0+$/, "");
    assert.deepEqual(received(rx), [
      ["key.limit_threshold", {
        key_id: keyId,
        threshold: 0.8,
        spend: spendAt(4),
        credit_limit: limit,
      }],
      ["key.limit_threshold", {
        key_id: keyId,
        threshold: 1,
        spend: spendAt(5),
        credit_limit: limit,
      }],
    ]);
    const active = (await json(await a.call(mgmt, "GET", "/v1/alerts"), 200)).active;
    assert.deepEqual(active, [{
      type: "key.limit_threshold",
      key_id: keyId,
      key_name: "test key",
      threshold: 1,
      spend: spendAt(5),
      credit_limit: limit,
    }]);

    // The next day the limit resets: the thresholds fire again in the new period.
    offset += 86_400_000;
    assert.deepEqual((await json(await a.call(mgmt, "GET", "/v1/alerts"), 200)).active, []);
    for (const t of [b, a, b, a, b]) await serve(t);
    await settled(a, mgmt, endpoint, 4);
    assert.deepEqual(
      received(rx, 2, false).map(([type, d]) => [type, d.threshold, d.spend]),
      [["key.limit_threshold", 0.8, spendAt(4)], ["key.limit_threshold", 1, spendAt(5)]],
    );

    // Thresholds of the key's own, from the next day on.
    const patched = await json(
      await a.call(mgmt, "PATCH", `/v1/keys/${keyId}`, { alert_thresholds: [0.5, 0.25, 0.5] }),
      200,
    );
    assert.deepEqual(patched.alert_thresholds, [0.25, 0.5]);
    offset += 86_400_000;
    for (const t of [a, b, a]) await serve(t);
    await settled(a, mgmt, endpoint, 6);
    assert.deepEqual(
      received(rx, 4, false).map(([, d]) => [d.threshold, d.spend]),
      [[0.25, spendAt(2)], [0.5, spendAt(3)]],
    );
    assert.equal(rx.received.length, 6);
    await a.assertBooks();
  } finally {
    await rx.close();
    await close();
  }
});

Deno.test("alert_thresholds are fractions above 0 and at most 1, at most 10, with at most 4 decimals", () =>
  spendRouter(async (t) => {
    const { mgmt } = await t.account("1");
    for (const bad of [[0], [1.5], [-0.1], [0.12345], ["0.8"], Array(11).fill(0.5)]) {
      const r = await json(
        await t.call(mgmt, "POST", "/v1/keys", { name: "k", alert_thresholds: bad }),
        400,
      );
      assert.match(r.error.message, /alert_thresholds/);
    }
    const k = await json(
      await t.call(mgmt, "POST", "/v1/keys", { name: "k", alert_thresholds: [0.9, 0.75] }),
      201,
    );
    assert.deepEqual(k.alert_thresholds, [0.75, 0.9]);
  }));

Deno.test("a crossing that neither of two routers sees at its settlements (each knows only its own lease debits) is found once their leases are folded, and fires once", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/router.kv`;
  const routers: TestRouter[] = [];
  const rx = startReceiver();
  try {
    for (let i = 0; i < 2; i++) {
      const t = await startRouter({
        kvPath,
        providersFile: PRICED,
        env: { WEBHOOK_ALLOW_PRIVATE_URLS: "true", LEASE_IDLE_MS: "200" },
      });
      t.openai.scenario = { usage: { prompt_tokens: 10, completion_tokens: 0 } };
      routers.push(t);
    }
    const [a, b] = routers;
    const { mgmt, key } = await a.account("20");
    const endpoint = await addEndpoint(a, mgmt, rx, ["balance.low"]);
    await json(await b.call(mgmt, "PUT", "/v1/alerts", { low_balance_threshold: "18.5" }), 200);
    // $0.10 a request, ten from each: the balance goes 20 → 18, each router's lease covering
    // its own; each knows 20 less its own $1 (19), never below 18.5.
    for (let i = 0; i < 20; i++) await spend(i % 2 ? b : a, key, 1);
    for (const t of routers) await t.router.svc.spend.idle();
    assert.equal(rx.received.length, 0);
    const leased = await Array.fromAsync(a.kv.list({ prefix: ["lease"] }));
    assert.equal(leased.length, 2, "each router served from its own lease");
    // Idle, the leases are returned: the second fold shows the true balance.
    const [d] = await until("balance.low", 10_000, async () => {
      const rows = await json(
        await a.call(mgmt, "GET", `/v1/webhooks/${endpoint}/deliveries`),
        200,
      );
      return rows.data.length ? rows.data : null;
    });
    assert.equal(d.type, "balance.low");
    await settled(a, mgmt, endpoint, 1);
    assert.deepEqual(received(rx), [["balance.low", { balance: "18", threshold: "18.5" }]]);
    await a.assertBooks();
  } finally {
    await rx.close();
    for (const t of routers) await t.close();
    await Deno.remove(dir, { recursive: true });
  }
});

import assert from "node:assert/strict";
import { ADMIN_TOKEN, json, startRouter } from "../../_helpers.ts";
import { startReceiver, TEST_CA } from "../../_fakes/receiver.ts";
import { nextAttemptMs, Webhooks } from "../../../lib/webhooks/dispatcher.ts";
import { addressPolicy, type Resolver } from "../../../lib/webhooks/addresses.ts";
import { getEndpoint } from "../../../lib/webhooks/endpoints.ts";
import { addEndpoint, closedPort, deliveries, settled } from "../../_webhooks.ts";

const MODES = ["queue", "drainer"] as const;

for (const mode of MODES) {
  Deno.test(`webhooks (${mode}): a purchase, an admin refund and a test event, each verified by standardwebhooks`, async () => {
    const t = await startRouter({ env: { OUTBOX_DELIVERY: mode } });
    const rx = startReceiver();
    const other = startReceiver();
    try {
      const { id, mgmt } = await t.account("0");
      const endpoint = await addEndpoint(t, mgmt, rx, ["credits.purchased", "credits.refunded"]);
      await addEndpoint(t, mgmt, other, ["balance.low"]);
      const listed = await json(await t.call(mgmt, "GET", "/v1/webhooks"), 200);
      assert.equal(listed.data.length, 2);
      assert.ok(listed.data.every((e: Record<string, unknown>) => !("secret" in e)));

      const bought = await json(
        await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "starter" }),
        201,
      );
      const refund = await json(
        await t.admin("POST", `/v1/admin/accounts/${id}/refunds`, {
          amount: "0.25",
          reason: "billed in error",
        }),
        201,
      );
      // Adjustments are no refund: no event.
      await json(
        await t.admin("POST", `/v1/admin/accounts/${id}/adjustments`, {
          amount: "1",
          reason: "goodwill",
        }),
        201,
      );
      const test = await json(await t.call(mgmt, "POST", `/v1/webhooks/${endpoint}/test`), 200);
      assert.equal(test.type, "webhook.test");
      assert.equal(test.state, "delivered");

      const got = await rx.waitFor(3);
      const rows = await settled(t, mgmt, endpoint, 3);
      assert.equal(got.length, 3);
      for (const r of got) assert.ok(r.verified.ok, JSON.stringify(r.verified));
      const byType = new Map(
        got.map((r) => [r.verified.ok ? r.verified.event.type : "", r]),
      );
      assert.deepEqual([...byType.keys()].sort(), [
        "credits.purchased",
        "credits.refunded",
        "webhook.test",
      ]);
      const purchased = byType.get("credits.purchased")!;
      assert.ok(purchased.verified.ok);
      // The event's data is the transaction as GET /v1/transactions shows it.
      assert.deepEqual(purchased.verified.event.data, bought.transaction);
      const refunded = byType.get("credits.refunded")!;
      assert.ok(refunded.verified.ok);
      assert.deepEqual(refunded.verified.event.data, refund);
      assert.equal(refunded.verified.event.timestamp, refund.created_at);
      // One webhook-id per event, the one the delivery log shows.
      assert.deepEqual(
        got.map((r) => r.headers["webhook-id"]).sort(),
        rows.map((d) => d.webhook_id).sort(),
      );
      for (const d of rows) {
        assert.equal(d.state, "delivered");
        assert.equal(d.attempts, 1);
        assert.equal(d.last_status, 204);
        assert.equal(d.next_attempt_at, null);
      }
      assert.equal(other.received.length, 0, "an endpoint gets only the events it subscribed to");
      await t.assertBooks();
    } finally {
      await rx.close();
      await other.close();
      await t.close();
    }
  });

  Deno.test(`webhooks (${mode}): a receiver that fails twice gets the event at the third attempt, same webhook-id`, async () => {
    // The schedule's unit shortened: the retries come after 10 ms and 60 ms.
    const t = await startRouter({
      env: { OUTBOX_DELIVERY: mode },
      webhooks: { retryBaseMs: 2 },
    });
    const rx = startReceiver();
    rx.statuses = [500, 503];
    rx.fallback = 200;
    try {
      const { mgmt } = await t.account("0");
      const endpoint = await addEndpoint(t, mgmt, rx, ["credits.purchased"]);
      await json(await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "team" }), 201);
      const [d] = await settled(t, mgmt, endpoint, 1);
      assert.equal(d.state, "delivered");
      assert.equal(d.attempts, 3);
      assert.equal(d.last_status, 200);
      assert.ok(d.delivered_at);
      // Nothing after the success: a sweep later finds it delivered.
      await t.router.svc.webhooks.sweep();
      assert.equal(rx.received.length, 3);
      assert.deepEqual(
        rx.received.map((r) => r.headers["webhook-id"]),
        Array(3).fill(d.webhook_id),
      );
      assert.deepEqual(new Set(rx.received.map((r) => r.body)).size, 1, "the same body each time");
      for (const r of rx.received) assert.ok(r.verified.ok);
      await t.assertBooks();
    } finally {
      await rx.close();
      await t.close();
    }
  });
}

Deno.test("webhooks: a receiver down for the whole day leaves the delivery failed after 28 attempts, the books whole", async () => {
  // The clock is driven: each step jumps to the delivery's next attempt.
  let clock = Date.now();
  const lines: string[] = [];
  const t = await startRouter({
    env: { OUTBOX_DELIVERY: "drainer" },
    now: () => clock,
    log: (level, msg, fields) => lines.push(JSON.stringify({ level, msg, ...fields })),
  });
  const port = closedPort();
  try {
    const { id, mgmt } = await t.account("0");
    const ep = await json(
      await t.call(mgmt, "POST", "/v1/webhooks", {
        url: `http://127.0.0.1:${port}/hook?token=private-token`,
        events: ["credits.purchased"],
      }),
      201,
    );
    await json(await t.call(mgmt, "POST", "/v1/billing/checkout", { package_id: "starter" }), 201);
    const webhooks = t.router.svc.webhooks;
    const first = clock;
    const dues: number[] = [];
    let d = (await deliveries(t, mgmt, ep.id))[0];
    for (let step = 0; step < 100 && (d === undefined || d.state === "pending"); step++) {
      if (d?.next_attempt_at) {
        clock = Date.parse(d.next_attempt_at);
        dues.push(clock - first);
      }
      await webhooks.sweep();
      d = (await deliveries(t, mgmt, ep.id))[0];
    }
    assert.equal(d.state, "failed");
    assert.equal(d.attempts, 28);
    assert.equal(d.last_status, null);
    assert.equal(d.last_error, "connection_failed");
    assert.equal(d.next_attempt_at, null);
    assert.equal(d.delivered_at, null);
    // 5 s, 30 s, 2 min, 10 min and 1 h after each failure, then hourly, all within 24 h.
    const gaps = dues.map((at, i) => (at - (dues[i - 1] ?? 0)) / 1000);
    assert.deepEqual(gaps.slice(0, 6), [5, 30, 120, 600, 3600, 3600]);
    assert.ok(gaps.slice(5).every((g) => g === 3600));
    assert.ok(dues.at(-1)! <= 86_400_000);
    assert.equal(nextAttemptMs(first, 28, first + dues.at(-1)!, 1000), null, "no 29th attempt");

    // Nothing lost from the books: the purchase is credited and in the ledger.
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.balance, "10");
    await t.assertBooks();
    const verify = await json(await t.admin("GET", "/v1/admin/verify"), 200);
    assert.equal(verify.accounts_checked, 1);
    assert.ok(id);
    // Every attempt was logged, never with the secret or the URL (it may hold a token).
    assert.equal(lines.filter((l) => l.includes("webhook attempt failed")).length, 28);
    assert.ok(lines.every((l) => !l.includes(ep.secret) && !l.includes("private-token")));
  } finally {
    await t.close();
  }
});

Deno.test("webhooks: an attempt is bounded by its timeout, then retried", async () => {
  const t = await startRouter({ webhooks: { timeoutMs: 300 } });
  // Accepts connections and never answers.
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const c of silent) held.push(c);
  })();
  try {
    const { mgmt } = await t.account("0");
    const port = (silent.addr as Deno.NetAddr).port;
    const ep = await json(
      await t.call(mgmt, "POST", "/v1/webhooks", {
        url: `http://127.0.0.1:${port}/hook`,
        events: ["credits.purchased"],
      }),
      201,
    );
    const d = await json(await t.call(mgmt, "POST", `/v1/webhooks/${ep.id}/test`), 200);
    assert.equal(d.state, "pending");
    assert.equal(d.attempts, 1);
    assert.equal(d.last_status, null);
    assert.equal(d.last_error, "timeout");
    assert.ok(d.latency_ms >= 300 && d.latency_ms < 5000, `latency ${d.latency_ms}`);
    const next = Date.parse(d.next_attempt_at) - Date.parse(d.created_at);
    assert.ok(next >= 5000 && next < 6000, "retried 5 s after the failure");
  } finally {
    silent.close();
    await accepting;
    for (const c of held) c.close();
    await t.close();
  }
});

Deno.test("webhooks: production billing refuses private endpoints when saved, and at delivery when the name rebinds", async () => {
  const rx = startReceiver();
  let rebound = false;
  const resolve: Resolver = (host) => {
    const dns: Record<string, string[]> = {
      "internal.example": ["10.0.0.7"],
      "dual.example": ["93.184.216.34", "fd00::7"],
      // Public when saved; loopback (where the receiver listens) once it rebinds.
      "hooks.example": rebound ? ["127.0.0.1"] : ["93.184.216.34"],
    };
    return dns[host] ? Promise.resolve(dns[host]) : Promise.reject(new Error("NXDOMAIN"));
  };
  const t = await startRouter({
    env: { STRIPE_SECRET_KEY: "sk_test_router" },
    webhooks: { resolve },
  });
  try {
    const { mgmt } = await t.account("0");
    const refused = [
      `http://127.0.0.1:${rx.port}/hook`,
      "http://localhost/hook",
      "http://10.0.0.1/hook",
      "https://192.168.1.20/hook",
      "http://169.254.169.254/latest/meta-data",
      "http://[::1]/hook",
      "http://[::ffff:10.0.0.1]/hook",
      "http://[fe80::1]/hook",
      "http://2130706433/hook",
      "https://internal.example/hook",
      "https://dual.example/hook",
    ];
    for (const url of refused) {
      const body = await json(
        await t.call(mgmt, "POST", "/v1/webhooks", { url, events: ["credits.purchased"] }),
        400,
      );
      assert.equal(body.error.code, "invalid_request", url);
      assert.match(body.error.message, /private, loopback or link-local/, url);
    }
    const missing = await json(
      await t.call(mgmt, "POST", "/v1/webhooks", {
        url: "https://nowhere.example/hook",
        events: ["credits.purchased"],
      }),
      400,
    );
    assert.match(missing.error.message, /does not resolve/);
    assert.equal((await json(await t.call(mgmt, "GET", "/v1/webhooks"), 200)).data.length, 0);

    // Saved while the name is public; at delivery it points inside: refused, nothing sent.
    const ep = await json(
      await t.call(mgmt, "POST", "/v1/webhooks", {
        url: `http://hooks.example:${rx.port}/hook`,
        events: ["credits.purchased"],
      }),
      201,
    );
    rebound = true;
    const d = await json(await t.call(mgmt, "POST", `/v1/webhooks/${ep.id}/test`), 200);
    assert.equal(d.last_error, "address_refused");
    assert.equal(d.last_status, null);
    assert.equal(d.state, "pending", "retried later: DNS may change back");
    assert.equal(rx.received.length, 0);
    // A change of URL is checked as a new one is.
    const patched = await t.call(mgmt, "PATCH", `/v1/webhooks/${ep.id}`, {
      url: "http://10.1.2.3/",
    });
    assert.equal((await json(patched, 400)).error.code, "invalid_request");
  } finally {
    await rx.close();
    await t.close();
  }
});

Deno.test("webhooks: WEBHOOK_ALLOW_PRIVATE_URLS lets production billing deliver to loopback", async () => {
  const rx = startReceiver();
  const t = await startRouter({
    env: { STRIPE_SECRET_KEY: "sk_test_router", WEBHOOK_ALLOW_PRIVATE_URLS: "true" },
  });
  try {
    const { mgmt } = await t.account("0");
    const ep = await addEndpoint(t, mgmt, rx, ["credits.refunded"]);
    const d = await json(await t.call(mgmt, "POST", `/v1/webhooks/${ep}/test`), 200);
    assert.equal(d.state, "delivered");
    assert.ok(rx.received[0].verified.ok);
  } finally {
    await rx.close();
    await t.close();
  }
});

Deno.test("webhooks: https goes to the checked address, with the URL's host for Host, SNI and the certificate", async () => {
  const rx = startReceiver({ tls: true });
  const t = await startRouter({
    env: { WEBHOOK_ALLOW_PRIVATE_URLS: "true" },
    webhooks: {
      resolve: (host) =>
        ["hooks.test", "other.test"].includes(host)
          ? Promise.resolve(["127.0.0.1"])
          : Promise.reject(new Error("NXDOMAIN")),
      caCerts: [TEST_CA],
    },
  });
  try {
    const { mgmt } = await t.account("0");
    const ep = await addEndpoint(t, mgmt, rx, ["credits.purchased"]);
    const d = await json(await t.call(mgmt, "POST", `/v1/webhooks/${ep}/test`), 200);
    assert.equal(d.state, "delivered", JSON.stringify(d));
    assert.equal(rx.received[0].headers.host, `hooks.test:${rx.port}`);
    assert.ok(rx.received[0].verified.ok);

    // The same address under a name its certificate does not carry: refused by TLS.
    const wrong = await json(
      await t.call(mgmt, "POST", "/v1/webhooks", {
        url: `https://other.test:${rx.port}/hook`,
        events: ["credits.purchased"],
      }),
      201,
    );
    const w = await json(await t.call(mgmt, "POST", `/v1/webhooks/${wrong.id}/test`), 200);
    assert.equal(w.last_error, "tls_failed");
    assert.equal(rx.received.length, 1);
  } finally {
    await rx.close();
    await t.close();
  }
});

Deno.test("webhooks: an operator's refund from the dashboard emits credits.refunded once, however often submitted", async () => {
  const t = await startRouter();
  const rx = startReceiver();
  try {
    const acct = await t.account("1");
    const endpoint = await addEndpoint(t, acct.mgmt, rx, ["credits.refunded"]);
    const post = (path: string, form: Record<string, string>, cookie = "") =>
      fetch(t.url + path, {
        method: "POST",
        redirect: "manual",
        headers: { "content-type": "application/x-www-form-urlencoded", origin: t.url, cookie },
        body: new URLSearchParams(form),
      });
    const signin = await post("/dashboard/admin/signin", { token: ADMIN_TOKEN });
    const cookie = signin.headers.get("set-cookie")!.split(";")[0];
    await signin.body?.cancel();
    const page = await (await fetch(`${t.url}/dashboard/admin/accounts/${acct.id}`, {
      headers: { cookie },
    })).text();
    const field = (name: string) => page.match(new RegExp(`name="${name}" value="([^"]+)"`))![1];
    const form = {
      _csrf: field("_csrf"),
      nonce: field("nonce"),
      type: "refund",
      amount: "0.75",
      reason: "billed in error",
    };
    for (let i = 0; i < 2; i++) {
      const r = await post(`/dashboard/admin/accounts/${acct.id}`, form, cookie);
      assert.equal(r.status, 303);
      await r.body?.cancel();
    }
    await settled(t, acct.mgmt, endpoint, 1);
    await t.router.svc.webhooks.sweep();
    assert.equal(rx.received.length, 1);
    assert.ok(rx.received[0].verified.ok);
    assert.equal(rx.received[0].verified.event.type, "credits.refunded");
    assert.equal(rx.received[0].verified.event.data.amount, "0.75");
    await t.assertBooks();
  } finally {
    await rx.close();
    await t.close();
  }
});

Deno.test("webhooks: an attempt whose process died is taken over when its lease ends; the late outcome does not overwrite", async () => {
  let clock = Date.now();
  const t = await startRouter({ env: { OUTBOX_DELIVERY: "drainer" }, now: () => clock });
  // A receiver that holds the first connection unanswered and answers the others 204.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  let heldOne!: () => void;
  const holding = new Promise<void>((r) => heldOne = r);
  const serving = (async () => {
    for await (const conn of listener) {
      if (held.length === 0) {
        held.push(conn);
        heldOne();
        continue;
      }
      const buf = new Uint8Array(4096);
      await conn.read(buf);
      await conn.write(new TextEncoder().encode("HTTP/1.1 204 No Content\r\n\r\n"));
      conn.close();
    }
  })();
  try {
    const { id, mgmt } = await t.account("0");
    const ep = await json(
      await t.call(mgmt, "POST", "/v1/webhooks", {
        url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}/hook`,
        events: ["credits.purchased"],
      }),
      201,
    );
    // Another process, on the same KV: it claims the test event's delivery and stalls.
    const other = new Webhooks(t.kv, {
      delivery: "drainer",
      policy: addressPolicy(t.router.svc.config),
      now: () => clock,
      log: () => {},
      timeoutMs: 60_000,
    });
    const endpoint = (await getEndpoint(t.kv, id, ep.id))!;
    const stalled = other.test(id, endpoint);
    await holding;
    let [d] = await deliveries(t, mgmt, ep.id);
    assert.equal(d.state, "pending");
    assert.equal(d.attempts, 0);
    assert.equal(Date.parse(d.next_attempt_at!), clock + 90_000, "its lease: timeout + 30 s");

    // Before the lease ends nobody else sends it; after, this process does.
    await t.router.svc.webhooks.sweep();
    assert.equal(held.length, 1);
    clock += 90_000;
    await t.router.svc.webhooks.sweep();
    [d] = await deliveries(t, mgmt, ep.id);
    assert.equal(d.state, "delivered");
    assert.equal(d.attempts, 1);
    assert.equal(d.last_status, 204);

    // The stalled attempt fails late (its connection drops): its outcome is not recorded.
    held[0].close();
    await stalled;
    assert.deepEqual(await deliveries(t, mgmt, ep.id), [d]);
  } finally {
    listener.close();
    await serving;
    await t.close();
  }
});

Deno.test("webhooks: at most 10 test events a minute to one endpoint; the 11th is a 429 with Retry-After, sends nothing, and the next minute is open", async () => {
  const rx = startReceiver();
  // 12:00:45 UTC: the minute ends in 15 s.
  let clock = Date.UTC(2026, 11, 7, 12, 0, 45);
  const t = await startRouter({ now: () => clock });
  try {
    const { mgmt } = await t.account("0");
    const ep = await addEndpoint(t, mgmt, rx, ["credits.purchased"]);
    const other = await addEndpoint(t, mgmt, rx, ["credits.purchased"]);
    const test = (id: string) => t.call(mgmt, "POST", `/v1/webhooks/${id}/test`);
    const answers = await Promise.all(Array.from({ length: 14 }, () => test(ep)));
    const statuses = answers.map((r) => r.status).sort();
    assert.deepEqual(statuses, [...Array(10).fill(200), ...Array(4).fill(429)]);
    const refused = answers.find((r) => r.status === 429)!;
    assert.equal(refused.headers.get("retry-after"), "15");
    for (const r of answers) {
      const body = await json(r, r.status);
      if (r.status === 429) assert.equal(body.error.code, "rate_limited");
    }
    assert.equal(rx.received.length, 10);
    assert.equal((await deliveries(t, mgmt, ep)).length, 10);
    // Another endpoint has a window of its own; the next minute opens this one again.
    await json(await test(other), 200);
    clock += 15_000;
    await json(await test(ep), 200);
    assert.equal(rx.received.length, 12);
  } finally {
    await rx.close();
    await t.close();
  }
});

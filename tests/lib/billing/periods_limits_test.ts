import assert from "node:assert/strict";
import { json, startRouter, type TestRouter } from "../../_helpers.ts";

// The upstream reports 100 + 20 tokens: (100 × 150 + 20 × 600) × 0.8 = 21600 nano-USD a request.
// The hold is 50 output tokens (24000 nano-USD) plus the prompt's 118 bytes (14160 nano-USD).
const USAGE = { prompt_tokens: 100, completion_tokens: 20 };

function chat(t: TestRouter, key: string) {
  return t.call(key, "POST", "/v1/chat/completions", {
    model: "openai/gpt-4o-mini",
    messages: [{ role: "user", content: "hi".padEnd(30) }],
    max_tokens: 50,
  });
}

async function status(res: Response): Promise<[number, string | null]> {
  const body = await res.json();
  return [res.status, body.error?.code ?? null];
}

// Test clocks run ahead of the real one and only forward, test after test: ids made in this
// process never run ahead of the clock, so the sweeper (which goes by it) sees every event as due.
const cases: { reset: string; start: string; before: string; boundary: string }[] = [
  {
    // Monday, Sunday's last millisecond, and the Monday that starts the next week.
    reset: "weekly",
    start: "2027-11-22T00:00:00Z",
    before: "2027-11-28T23:59:59.999Z",
    boundary: "2027-11-29T00:00:00Z",
  },
  {
    reset: "daily",
    start: "2027-12-02T08:00:00Z",
    before: "2027-12-02T23:59:59.999Z",
    boundary: "2027-12-03T00:00:00Z",
  },
  {
    reset: "monthly",
    start: "2027-12-05T00:00:00Z",
    before: "2027-12-31T23:59:59.999Z",
    boundary: "2028-01-01T00:00:00Z",
  },
];

for (const { reset, start, before, boundary } of cases) {
  Deno.test(`a ${reset} credit limit resets at the UTC boundary (injected clock)`, async () => {
    let clock = Date.parse(start);
    const t = await startRouter({ now: () => clock });
    try {
      const { key } = await t.account("1", { credit_limit: "0.00007", limit_reset: reset });
      t.openai.scenario = { usage: USAGE };
      assert.deepEqual(await status(await chat(t, key)), [200, null]);
      assert.deepEqual(await status(await chat(t, key)), [200, null]);
      assert.deepEqual(await status(await chat(t, key)), [402, "key_limit_exceeded"]);

      let me = await json(await t.call(key, "GET", "/v1/key"), 200);
      assert.equal(me.credit_limit, "0.00007");
      assert.equal(me.remaining, "0.0000268");
      assert.equal(me.spend, "0.0000432");
      assert.equal(me.limit_resets_at, new Date(Date.parse(boundary)).toISOString());

      clock = Date.parse(before);
      assert.deepEqual(await status(await chat(t, key)), [402, "key_limit_exceeded"]);
      clock = Date.parse(boundary);
      me = await json(await t.call(key, "GET", "/v1/key"), 200);
      assert.equal(me.remaining, "0.00007", "a new period starts with the whole limit");
      assert.equal(me.spend, "0.0000432", "lifetime spend is kept");
      assert.deepEqual(await status(await chat(t, key)), [200, null]);
      me = await json(await t.call(key, "GET", "/v1/key"), 200);
      assert.equal(me.remaining, "0.0000484");
      assert.equal(me.usage_today, "0.0000216");
      await t.assertBooks();
    } finally {
      await t.close();
    }
  });
}

Deno.test("a credit limit without reset is a lifetime limit", async () => {
  let clock = Date.parse("2028-01-02T08:00:00Z");
  const t = await startRouter({ now: () => clock });
  try {
    const { key } = await t.account("1", { credit_limit: "0.00007" });
    t.openai.scenario = { usage: USAGE };
    assert.deepEqual(await status(await chat(t, key)), [200, null]);
    assert.deepEqual(await status(await chat(t, key)), [200, null]);
    clock = Date.parse("2028-02-01T00:00:00Z");
    assert.deepEqual(await status(await chat(t, key)), [402, "key_limit_exceeded"]);
    const me = await json(await t.call(key, "GET", "/v1/key"), 200);
    assert.equal(me.limit_resets_at, null);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an expired key is refused with 401 from its expiry on", async () => {
  let clock = Date.parse("2028-03-01T00:00:00Z");
  const t = await startRouter({ now: () => clock });
  try {
    const expires = new Date(clock + 3_600_000).toISOString();
    const { key } = await t.account("1", { expires_at: expires });
    t.openai.scenario = { usage: USAGE };
    assert.deepEqual(await status(await chat(t, key)), [200, null]);
    clock += 3_600_000;
    assert.deepEqual(await status(await chat(t, key)), [401, "invalid_api_key"]);
    await t.router.flush();
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("rate_limit_rpm: request rpm+1 within 60 s is 429 rate_limited with Retry-After", async () => {
  const t0 = Date.parse("2028-04-01T10:00:00Z");
  let clock = t0;
  const t = await startRouter({ now: () => clock });
  try {
    const { key, mgmt } = await t.account("1", { rate_limit_rpm: 3 });
    t.openai.scenario = { usage: USAGE };
    for (const dt of [0, 10_000, 20_000]) {
      clock = t0 + dt;
      assert.deepEqual(await status(await chat(t, key)), [200, null]);
    }
    clock = t0 + 30_500;
    const res = await chat(t, key);
    assert.deepEqual(await status(res), [429, "rate_limited"]);
    assert.equal(
      res.headers.get("retry-after"),
      "30",
      "the first request leaves the window at +60 s",
    );
    clock = t0 + 59_999;
    assert.deepEqual(await status(await chat(t, key)), [429, "rate_limited"]);
    clock = t0 + 60_000;
    assert.deepEqual(await status(await chat(t, key)), [200, null]);
    const again = await chat(t, key);
    assert.deepEqual(await status(again), [429, "rate_limited"]);
    assert.equal(again.headers.get("retry-after"), "10");

    // Refusals are audited at cost 0 and are not billed.
    await t.router.flush();
    const audit = await json(await t.call(mgmt, "GET", "/v1/audit?status=429"), 200);
    assert.equal(audit.data.length, 3);
    assert.ok(audit.data.every((r: { cost: string }) => r.cost === "0"));
    const usage = await json(await t.call(mgmt, "GET", "/v1/usage?from=2028-04-01"), 200);
    assert.equal(usage.summary.requests, 4);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("rate_limit_rpm holds across two router processes on one KV file", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/router.kv`;
  const clock = Date.parse("2028-05-01T10:00:00Z");
  const a = await startRouter({ kvPath, now: () => clock });
  const b = await startRouter({ kvPath, now: () => clock });
  try {
    const { key } = await a.account("1", { rate_limit_rpm: 7 });
    a.openai.scenario = b.openai.scenario = { usage: USAGE };
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => chat(i % 2 ? a : b, key).then(status)),
    );
    assert.equal(results.filter(([s]) => s === 200).length, 7);
    assert.equal(results.filter(([s, c]) => s === 429 && c === "rate_limited").length, 13);
    await b.router.flush();
    await a.assertBooks();
  } finally {
    await a.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a hold released without charge (the provider failed) gives the key's limit back", async () => {
  const t = await startRouter();
  try {
    const { key } = await t.account("1", { credit_limit: "0.001" });
    t.openai.scenario = { status: 400 };
    assert.deepEqual(await status(await chat(t, key)), [400, "upstream_invalid_request"]);
    const me = await json(await t.call(key, "GET", "/v1/key"), 200);
    assert.equal(me.reserved, "0", "nothing is held for the failed request");
    assert.equal(me.remaining, "0.001");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

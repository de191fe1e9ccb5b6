import assert from "node:assert/strict";
import OpenAI from "openai";
import { json, padding, startRouter, type TestRouter } from "../../_helpers.ts";
import { encodingCounter } from "../../../lib/tokenizer.ts";

const SECRET = "prompt-text-that-must-not-leak-7f3a";
const body = (extra: Record<string, unknown> = {}) => ({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: SECRET }],
  max_tokens: 100,
  ...extra,
});

async function credits(t: TestRouter, mgmt: string) {
  return await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
}

/** The account's audit rows, newest first. */
async function audit(t: TestRouter, mgmt: string) {
  await t.router.flush();
  return (await json(await t.call(mgmt, "GET", "/v1/audit"), 200)).data;
}

/** Polls until the account has `n` audit rows (a stream settles after its client is gone). */
async function auditRows(t: TestRouter, mgmt: string, n: number, deadlineMs = 10_000) {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const rows = await audit(t, mgmt);
    if (rows.length >= n) return rows;
    assert.ok(Date.now() < end, `only ${rows.length} audit rows`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

Deno.test("upstream 5xx, 4xx and 429: mapped errors, body not echoed, hold released, nothing charged", async () => {
  // One attempt per request: each failure is then one audit row.
  const t = await startRouter({ providersFile: { retry: { max_retries: 0 } } });
  try {
    const { key, mgmt } = await t.account("1");
    for (
      const [status, mapped, code] of [
        [500, 502, "upstream_error"],
        [503, 502, "upstream_error"],
        [400, 400, "upstream_invalid_request"],
        [504, 504, "upstream_timeout"],
        [429, 429, "upstream_rate_limited"],
      ] as const
    ) {
      t.openai.scenario = { status, retryAfter: "7" };
      for (const stream of [false, true]) {
        const res = await t.call(key, "POST", "/v1/chat/completions", body({ stream }));
        const text = await res.text();
        assert.equal(res.status, mapped, text);
        assert.equal(JSON.parse(text).error.code, code);
        assert.ok(!text.includes(SECRET), "the upstream's error body is not echoed");
        assert.ok(!text.includes("echoing"), "the upstream's error body is not echoed");
        if (status === 429) assert.equal(res.headers.get("retry-after"), "7");
      }
    }
    t.openai.scenario = { status: 500 };
    const emb = await t.call(key, "POST", "/v1/embeddings", {
      model: "text-embedding-3-small",
      input: SECRET,
    });
    assert.equal((await json(emb, 502)).error.code, "upstream_error");
    const c = await credits(t, mgmt);
    assert.equal(c.balance, "1");
    assert.equal(c.reserved, "0");
    const rows = await audit(t, mgmt);
    assert.equal(rows.length, 11);
    assert.ok(rows.every((r: { cost: string }) => r.cost === "0"));
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an upstream that does not answer in time is 504; one that cannot be reached is 502", async () => {
  const t = await startRouter({ env: { UPSTREAM_TIMEOUT_MS: "150" } });
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { delayMs: 600 };
    const res = await t.call(key, "POST", "/v1/chat/completions", body());
    assert.equal((await json(res, 504)).error.code, "upstream_timeout");
    const res2 = await t.call(key, "POST", "/v1/chat/completions", body({ stream: true }));
    assert.equal((await json(res2, 504)).error.code, "upstream_timeout");
    const c = await credits(t, mgmt);
    assert.deepEqual([c.balance, c.reserved], ["1", "0"]);
    await t.assertBooks();
  } finally {
    await t.close();
  }
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (closed.addr as Deno.NetAddr).port;
  closed.close();
  const u = await startRouter({ env: { OPENAI_BASE_URL: `http://127.0.0.1:${port}/v1` } });
  try {
    const { key, mgmt } = await u.account("1");
    const res = await u.call(key, "POST", "/v1/chat/completions", body());
    assert.equal((await json(res, 502)).error.code, "upstream_error");
    assert.equal((await credits(u, mgmt)).balance, "1");
    await u.assertBooks();
  } finally {
    await u.close();
  }
});

Deno.test("a stream that stalls mid-way ends with an error event and bills what was produced", async () => {
  const t = await startRouter({ env: { UPSTREAM_TIMEOUT_MS: "300" } });
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { chunks: 6, stallAfter: 3, content: "one two three four five six" };
    const res = await t.call(key, "POST", "/v1/chat/completions", body({ stream: true }));
    assert.equal(res.status, 200);
    const text = await res.text();
    assert.match(text, /"code":"upstream_error"/, "the client is told the stream failed");
    const rows = await auditRows(t, mgmt, 1);
    assert.equal(rows[0].error_code, "upstream_stream_failed");
    assert.ok(rows[0].completion_tokens > 0);
    assert.notEqual(rows[0].cost, "0");
    const c = await credits(t, mgmt);
    assert.equal(c.reserved, "0");
    assert.equal(c.total_used, rows[0].cost);
    await t.assertBooks();

    // Stalled before any output: the hold is released and nothing is charged.
    t.openai.scenario = { stallAfter: 1 };
    const res2 = await t.call(key, "POST", "/v1/chat/completions", body({ stream: true }));
    await res2.text();
    const rows2 = await auditRows(t, mgmt, 2);
    assert.equal(rows2[0].cost, "0");
    assert.equal((await credits(t, mgmt)).total_used, rows[0].cost);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a client that disconnects mid-stream pays input plus the output produced", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    const content = "word ".repeat(200);
    t.openai.scenario = { chunks: 50, chunkDelayMs: 20, content };
    const res = await t.call(key, "POST", "/v1/chat/completions", body({ stream: true }));
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    let got = "";
    const dec = new TextDecoder();
    while ((got.match(/"content":"word/g) ?? []).length < 3) {
      const r = await reader.read();
      assert.ok(!r.done);
      got += dec.decode(r.value);
    }
    await reader.cancel();
    const rows = await auditRows(t, mgmt, 1);
    assert.equal(rows[0].error_code, "client_disconnected");
    assert.ok(rows[0].prompt_tokens > 0, "input is paid");
    assert.ok(rows[0].completion_tokens > 0, "produced output is paid");
    assert.ok(rows[0].completion_tokens < 250, "output never produced is not");
    assert.notEqual(rows[0].cost, "0");
    const c = await credits(t, mgmt);
    assert.equal(c.reserved, "0");
    assert.equal(c.total_used, rows[0].cost);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a non-streaming call whose client leaves is finished by the provider and billed once", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { delayMs: 300, usage: { prompt_tokens: 1000, completion_tokens: 100 } };
    const ac = new AbortController();
    const req = fetch(`${t.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify(body(padding())),
      signal: ac.signal,
    });
    await new Promise((r) => setTimeout(r, 100));
    ac.abort();
    await assert.rejects(req);
    const rows = await auditRows(t, mgmt, 1);
    assert.equal(t.openai.aborted, 0, "the provider's call is not abandoned");
    assert.deepEqual([rows[0].status, rows[0].error_code], [200, null]);
    // gpt-4o-mini: 1000 × 0.15 + 100 × 0.60 = 210 µ$ market, 168 µ$ at 20 % off.
    assert.equal(rows[0].cost, "0.000168");
    const c = await credits(t, mgmt);
    assert.deepEqual([c.total_used, c.reserved], ["0.000168", "0"]);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a stream whose upstream omits the usage chunk is counted by the router", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { omitUsage: true, chunks: 4, content: "abcdefghijklmnop" };
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1` });
    const stream = await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "count me" }],
      stream: true,
    });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
    assert.equal(text, "abcdefghijklmnop");
    const rows = await auditRows(t, mgmt, 1);
    assert.equal(rows[0].error_code, "usage_missing");
    // Each of the 4 deltas counted with gpt-4o-mini's tokenizer.
    const count = await encodingCounter("o200k_base");
    const deltas = ["abcd", "efgh", "ijkl", "mnop"].map(count).reduce((a, b) => a + b);
    assert.equal(rows[0].completion_tokens, deltas);
    assert.ok(rows[0].prompt_tokens > 0);
    assert.notEqual(rows[0].cost, "0");
    assert.equal((await credits(t, mgmt)).total_used, rows[0].cost);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a stream passes through chunk by chunk: content arrives while the upstream still holds the rest", async () => {
  const t = await startRouter({ env: { UPSTREAM_TIMEOUT_MS: "1000" } });
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { chunks: 4, stallAfter: 2, content: "first-part second-part" };
    const res = await t.call(key, "POST", "/v1/chat/completions", body({ stream: true }));
    const reader = res.body!.getReader();
    const dec = new TextDecoder();
    let got = "";
    while (!got.includes("first")) {
      const r = await reader.read();
      assert.ok(!r.done);
      got += dec.decode(r.value, { stream: true });
    }
    // The upstream is still holding its stream open: nothing was buffered until its end.
    assert.equal(t.openai.streamsCancelled, 0);
    assert.ok(!got.includes("upstream_error"));
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      got += dec.decode(r.value, { stream: true });
    }
    assert.match(got, /upstream_error/);
    await auditRows(t, mgmt, 1);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a client that disconnects while a retry waits stops the retries; nothing is charged", async () => {
  // A backoff far longer than the test: only the client's departure can end the wait.
  const t = await startRouter({ providersFile: { retry: { max_retries: 2, backoff_ms: 60_000 } } });
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { status: 503 };
    // Deno's server reports a client that leaves only for a request it read whole at once (about
    // 1 KiB): the router watches the connection itself for a longer one.
    for (const [n, extra] of [[1, {}], [2, padding(2000)]] as const) {
      const ac = new AbortController();
      const pending = fetch(`${t.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify(body(extra)),
        signal: ac.signal,
      }).catch((e) => e);
      while (t.openai.requests.length < n) await new Promise((r) => setTimeout(r, 10));
      ac.abort();
      assert.equal((await pending).name, "AbortError");

      // The failed attempt, then the abandoned request: its hold released at cost 0.
      const rows = (await auditRows(t, mgmt, 2 * n)).slice(0, 2);
      assert.equal(rows.length, 2);
      const [abandoned, attempt] = [...rows].sort((a, b) =>
        a.request_id.length - b.request_id.length
      );
      assert.equal(attempt.request_id, `${abandoned.request_id}.1`);
      assert.deepEqual([attempt.status, attempt.error_code, attempt.cost], [
        502,
        "upstream_error",
        "0",
      ]);
      assert.deepEqual([abandoned.status, abandoned.error_code, abandoned.cost], [
        499,
        "client_disconnected",
        "0",
      ]);
      assert.equal(abandoned.provider, "openai");
      assert.equal(t.openai.requests.length, n, "no attempt after the client left");
      const c = await credits(t, mgmt);
      assert.deepEqual([c.balance, c.reserved, c.total_used], ["1", "0", "0"]);
    }
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

import assert from "node:assert/strict";
import OpenAI from "openai";
import { json, padding, type TestRouter } from "../../_helpers.ts";
import { startProviders } from "../../_providers.ts";

const FAST_RETRY = { retry: { max_retries: 1, backoff_ms: 1 } };
// claude-haiku-4-5 list prices ($/M): input 1, output 5. 1000 input + 200 output tokens:
// market = 1000×1 + 200×5 = 2000 µ$ = $0.002; 20 % off = $0.0016.
const HAIKU_USAGE = { input_tokens: 1000, output_tokens: 200 };

type Row = Record<string, unknown>;
async function auditRows(t: TestRouter, mgmt: string): Promise<Row[]> {
  const body = await json(await t.call(mgmt, "GET", "/v1/audit"), 200);
  return (body.data as Row[]).sort((a, b) =>
    String(a.request_id).length - String(b.request_id).length
  );
}

Deno.test("a fallback after a 500 bills only the provider that answered; every attempt is audited", async () => {
  const t = await startProviders({ providersFile: FAST_RETRY });
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { status: 500 };
    t.anthropic.scenario = { usage: HAIKU_USAGE };
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 });
    const res = await client.chat.completions.create({
      model: "openai/gpt-4o-mini",
      ...padding(2000),
      messages: [{ role: "user", content: "hello" }],
      // OpenRouter-style fallbacks; unknown names are skipped.
      models: ["no-such/model", "anthropic/claude-haiku-4-5"],
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    assert.equal(res.choices[0].message.content, "Echo: hello");
    assert.equal((res.usage as unknown as Row).cost, 0.0016);
    assert.equal(t.openai.requests.length, 2, "the first model was tried, then retried once");
    assert.equal(t.anthropic.requests.length, 1);
    assert.equal(t.anthropic.requests[0].models, undefined, "`models` is not sent upstream");

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.0016");
    assert.equal(credits.reserved, "0");
    await t.router.flush();
    const rows = await auditRows(t, mgmt);
    assert.equal(rows.length, 3);
    const [answered, ...failed] = rows;
    assert.equal(answered.provider, "anthropic");
    assert.equal(answered.status, 200);
    assert.equal(answered.cost, "0.0016");
    for (const f of failed) {
      assert.equal(f.provider, "openai");
      assert.equal(f.status, 502);
      assert.equal(f.cost, "0");
      assert.match(String(f.request_id), new RegExp(`^${answered.request_id}\\.\\d$`));
    }
    const usage = await json(await t.call(mgmt, "GET", "/v1/usage?group_by=provider"), 200);
    assert.equal(usage.summary.requests, 1, "only the answered attempt counts as a request");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an operator fallback chain serves a stream after the provider rate-limits", async () => {
  const t = await startProviders({
    providersFile: {
      ...FAST_RETRY,
      fallbacks: { "anthropic/claude-haiku-4-5": ["google/gemini-2.5-flash"] },
    },
  });
  try {
    const { key, mgmt } = await t.account("1");
    t.anthropic.scenario = { status: 429 };
    // gemini-2.5-flash: 1000 input × 0.30 + 200 output × 2.50 = 800 µ$; 20 % off = $0.00064.
    t.gemini.scenario = {
      usage: { promptTokenCount: 1000, candidatesTokenCount: 200 },
      content: "from gemini",
    };
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 });
    const stream = await client.chat.completions.create({
      model: "claude-haiku-4-5",
      ...padding(2000),
      messages: [{ role: "user", content: "hi" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let cost: unknown = null;
    for await (const c of stream) {
      text += c.choices[0]?.delta?.content ?? "";
      if (c.usage) cost = (c.usage as unknown as Row).cost;
    }
    assert.equal(text, "from gemini");
    assert.equal(cost, 0.00064);
    assert.equal(t.anthropic.requests.length, 2);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.00064");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a 5xx is retried with backoff and the retry that answers is billed once", async () => {
  const t = await startProviders({ providersFile: FAST_RETRY });
  try {
    const { key, mgmt } = await t.account("1");
    t.anthropic.scenario = { status: 503, failFirst: 1, usage: HAIKU_USAGE };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "anthropic/claude-haiku-4-5",
      ...padding(2000),
      messages: [{ role: "user", content: "hi" }],
    });
    const body = await json(res, 200);
    assert.equal(body.usage.cost, 0.0016);
    assert.equal(t.anthropic.requests.length, 2);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.0016");
    await t.router.flush();
    const rows = await auditRows(t, mgmt);
    assert.deepEqual(rows.map((r) => [r.status, r.cost]), [[200, "0.0016"], [502, "0"]]);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("when every candidate fails, the last error is returned and nothing is billed", async () => {
  const t = await startProviders({ providersFile: FAST_RETRY });
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { status: 500 };
    t.anthropic.scenario = { status: 429 };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "gpt-4o-mini",
      ...padding(2000),
      messages: [{ role: "user", content: "my secret" }],
      models: ["claude-haiku-4-5"],
    });
    const text = await res.text();
    assert.equal(res.status, 429);
    assert.equal(JSON.parse(text).error.code, "upstream_rate_limited");
    assert.doesNotMatch(text, /my secret|failure echoing/);
    assert.equal(t.openai.requests.length + t.anthropic.requests.length, 4);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0");
    assert.equal(credits.reserved, "0");
    await t.router.flush();
    assert.equal((await auditRows(t, mgmt)).length, 4, "one row per attempt");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a retry never happens once bytes reached the client", async () => {
  const t = await startProviders({ providersFile: FAST_RETRY });
  try {
    const { key, mgmt } = await t.account("1");
    // The stream breaks after message_start, the text block start, a ping and one delta.
    t.anthropic.scenario = { usage: HAIKU_USAGE, breakAfter: 4, content: "abcdefgh", chunks: 2 };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "anthropic/claude-haiku-4-5",
      ...padding(2000),
      messages: [{ role: "user", content: "hi" }],
      models: ["openai/gpt-4o-mini"],
      stream: true,
    });
    assert.equal(res.status, 200);
    const text = await res.text();
    assert.match(text, /"content":"abcd"/);
    assert.match(text, /upstream_error/);
    assert.equal(t.anthropic.requests.length, 1);
    assert.equal(t.openai.requests.length, 0, "no fallback after bytes were sent");
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    // Billed: message_start's 1000 input tokens and the output counted by the router at its
    // UTF-8 length (Anthropic's tokenizer is not public: "abcd" = 4 tokens at most) →
    // 1000×1 + 4×5 = 1020 µ$ market at claude-haiku-4-5's prices, 816 µ$ at 20 % off.
    assert.equal(credits.total_used, "0.000816");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("the hold covers the dearest fallback candidate", async () => {
  const t = await startProviders();
  try {
    // gpt-4o-mini alone: tiny; claude-sonnet-4-5 with 64 000 output tokens × $15/M ≈ $0.96 market.
    const { key } = await t.account("0.05");
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "gpt-4o-mini",
      ...padding(2000),
      messages: [{ role: "user", content: "hi" }],
      models: ["anthropic/claude-sonnet-4-5"],
    });
    const body = await json(res, 402);
    assert.equal(body.error.code, "insufficient_credits");
    assert.equal(t.openai.requests.length, 0);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a Gemini error is mapped without its body; a 5xx is retried then reported", async () => {
  const t = await startProviders({ providersFile: FAST_RETRY });
  try {
    const { key, mgmt } = await t.account("1");
    t.gemini.scenario = { status: 500 };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "gemini-2.5-flash",
      ...padding(2000),
      messages: [{ role: "user", content: "private words" }],
      stream: true,
    });
    const text = await res.text();
    assert.equal(res.status, 502);
    assert.equal(JSON.parse(text).error.code, "upstream_error");
    assert.doesNotMatch(text, /private words|failure echoing/);
    assert.equal(t.gemini.requests.length, 2);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0");
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a request naming only models is served by the first that answers", async () => {
  const t = await startProviders({ providersFile: FAST_RETRY });
  try {
    const { key } = await t.account("1");
    t.anthropic.scenario = { status: 500 };
    const body = await json(
      await t.call(key, "POST", "/v1/chat/completions", {
        models: ["anthropic/claude-haiku-4-5", "openai/gpt-4o-mini"],
        ...padding(2000),
        messages: [{ role: "user", content: "hi" }],
      }),
      200,
    );
    assert.equal(body.choices[0].message.content, "Echo: hi");
    assert.equal(t.anthropic.requests.length, 2);
    assert.equal(t.openai.requests[0].model, "gpt-4o-mini");
    const none = await t.call(key, "POST", "/v1/chat/completions", {
      ...padding(2000),
      messages: [{ role: "user", content: "hi" }],
    });
    assert.match((await json(none, 400)).error.message, /'model'/);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("GET /v1/audit/{request_id} shows the answering row and the failed attempts before it", async () => {
  const t = await startProviders({ providersFile: { retry: { max_retries: 0 } } });
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { status: 500 };
    t.anthropic.scenario = { usage: HAIKU_USAGE };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "openai/gpt-4o-mini",
      ...padding(2000),
      messages: [{ role: "user", content: "hello" }],
      models: ["anthropic/claude-haiku-4-5"],
    });
    await json(res, 200);
    const requestId = res.headers.get("x-request-id")!;
    await t.router.flush();
    const row = await json(await t.call(mgmt, "GET", `/v1/audit/${requestId}`), 200);
    assert.equal(row.request_id, requestId);
    assert.deepEqual([row.provider, row.status, row.cost], ["anthropic", 200, "0.0016"]);
    assert.equal(row.attempts.length, 1);
    const [failed] = row.attempts;
    assert.deepEqual(
      [failed.request_id, failed.provider, failed.model, failed.status, failed.cost],
      [`${requestId}.1`, "openai", "gpt-4o-mini", 502, "0"],
    );
    assert.equal(failed.error_code, "upstream_error");
    // The rows have the list's shape: the same fields as GET /v1/audit.
    const list = await json(await t.call(mgmt, "GET", "/v1/audit"), 200);
    const { attempts: _, ...answered } = row;
    assert.deepEqual(
      new Set(list.data.map((r: Row) => JSON.stringify(r))),
      new Set([answered, failed].map((r) => JSON.stringify(r))),
    );
    // An attempt's own id finds that row, with no attempts of its own.
    const one = await json(await t.call(mgmt, "GET", `/v1/audit/${requestId}.1`), 200);
    assert.deepEqual(one, { ...failed, attempts: [] });
    // Another account sees neither.
    const other = await t.account("1");
    await json(await t.call(other.mgmt, "GET", `/v1/audit/${requestId}`), 404);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

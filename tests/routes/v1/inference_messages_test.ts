import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import { json, padding } from "../../_helpers.ts";
import { encodingCounter } from "../../../lib/tokenizer.ts";
import { startProviders } from "../../_providers.ts";

// claude-haiku-4-5 list prices ($/M): input 1, output 5, cache read 0.10, cache write (5 min)
// 1.25, cache write (1 h) 2. Usage: 400 uncached input, 1000 cache reads, 600 cache writes of
// which 200 for one hour, 300 output.
// market = 400×1 + 1000×0.10 + 400×1.25 + 200×2 + 300×5 = 400 + 100 + 500 + 400 + 1500
//        = 2900 µ$ = $0.0029 (2 900 000 nano-USD); 20 % off = $0.00232.
const USAGE = {
  input_tokens: 400,
  cache_read_input_tokens: 1000,
  cache_creation_input_tokens: 600,
  cache_creation: { ephemeral_5m_input_tokens: 400, ephemeral_1h_input_tokens: 200 },
  output_tokens: 300,
};

Deno.test("the Anthropic SDK calls /v1/messages natively, priced with cache writes", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    t.anthropic.scenario = { usage: USAGE };
    const client = new Anthropic({ apiKey: key, baseURL: t.url });
    const msg = await client.messages.create({
      model: "claude-haiku-4-5",
      max_tokens: 1024,
      system: "Be brief.",
      ...(padding(2000) as object),
      messages: [{ role: "user", content: "hello" }],
    }, { headers: { "anthropic-beta": "extended-cache-ttl-2025-04-11" } });
    assert.deepEqual(msg.content, [{ type: "text", text: "Echo: hello" }]);
    const usage = msg.usage as unknown as Record<string, unknown>;
    assert.equal(usage.input_tokens, 400, "the provider's usage is passed on as is");
    assert.equal(usage.cost, 0.00232);
    assert.equal(usage.market_cost, 0.0029);

    const h = t.anthropic.headers[0];
    assert.equal(h.get("x-api-key"), "sk-ant-operator", "the operator's key, not the client's");
    assert.equal(h.get("anthropic-beta"), "extended-cache-ttl-2025-04-11");
    assert.match(h.get("anthropic-version") ?? "", /^\d{4}-\d{2}-\d{2}$/);
    assert.equal(t.anthropic.requests[0].system, "Be brief.");
    assert.equal(t.anthropic.requests[0].model, "claude-haiku-4-5");

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.00232");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a native Messages stream bills message_delta's cumulative usage once", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    t.anthropic.scenario = { usage: USAGE, chunks: 4 };
    const client = new Anthropic({ apiKey: key, baseURL: t.url });
    const stream = await client.messages.create({
      model: "anthropic/claude-haiku-4-5",
      max_tokens: 1024,
      ...(padding(2000) as object),
      messages: [{ role: "user", content: "stream me" }],
      stream: true,
    });
    let text = "";
    const types: string[] = [];
    let deltaUsage: Record<string, unknown> | null = null;
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === "content_block_delta" && event.delta.type === "text_delta") {
        text += event.delta.text;
      }
      if (event.type === "message_delta") {
        deltaUsage = event.usage as unknown as Record<string, unknown>;
      }
    }
    assert.equal(text, "Echo: stream me");
    assert.equal(types[0], "message_start");
    assert.equal(types.at(-1), "message_stop");
    assert.equal(deltaUsage?.output_tokens, 300);
    assert.equal(deltaUsage?.cost, 0.00232);
    assert.equal(deltaUsage?.market_cost, 0.0029);

    // The SDK's helper assembles the final message through the router too.
    const final = await client.messages.stream({
      model: "claude-haiku-4-5",
      max_tokens: 1024,
      ...(padding(2000) as object),
      messages: [{ role: "user", content: "again" }],
    }).finalMessage();
    assert.deepEqual(final.content, [{ type: "text", text: "Echo: again" }]);

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.00464");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a Messages stream cut by the provider bills input and the output produced", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    // message_start, content_block_start, ping, then two text deltas; then the connection dies.
    t.anthropic.scenario = { usage: USAGE, chunks: 4, breakAfter: 5, content: "abcdefghijklmnop" };
    const res = await t.call(key, "POST", "/v1/messages", {
      model: "claude-haiku-4-5",
      max_tokens: 1000,
      ...(padding(2000) as object),
      messages: [{ role: "user", content: "x" }],
      stream: true,
    });
    assert.equal(res.status, 200);
    const body = await res.text();
    assert.match(body, /upstream_error/);
    assert.equal(t.anthropic.requests.length, 1, "no retry once bytes reached the client");
    // Billed: message_start's input (400 + 1000 + 600 cache) and the output counted at its
    // UTF-8 length ("abcd" + "efgh": 8 tokens at most) → 400×1 + 1000×0.1 + 400×1.25 + 200×2
    // + 8×5 = 1440 µ$ market, $0.001152 at 20 % off.
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.001152");
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

// gpt-4o-mini ($/M): input 0.15, cached input 0.075, output 0.60. 1000 prompt tokens of which
// 400 cached, 200 output: 600×0.15 + 400×0.075 + 200×0.60 = 240 µ$ market, $0.000192 at 20 % off.
const OPENAI_USAGE = {
  prompt_tokens: 1000,
  completion_tokens: 200,
  prompt_tokens_details: { cached_tokens: 400 },
};

Deno.test("a native Messages stream carrying an error event is audited as a failed stream", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    // message_start, content_block_start, ping, two text deltas, then an overloaded_error event.
    t.anthropic.scenario = { usage: USAGE, chunks: 4, errorAfter: 5, content: "abcdefghijklmnop" };
    const res = await t.call(key, "POST", "/v1/messages", {
      model: "claude-haiku-4-5",
      max_tokens: 1000,
      ...(padding(2000) as object),
      messages: [{ role: "user", content: "x" }],
      stream: true,
    });
    assert.equal(res.status, 200);
    const body = await res.text();
    // Passed on as Anthropic sent it.
    assert.match(body, /event: error\ndata: \{"type":"error","error":\{"type":"overloaded_error"/);
    assert.doesNotMatch(body, /upstream_error/);
    await t.router.flush();
    const row = await json(
      await t.call(mgmt, "GET", `/v1/audit/${res.headers.get("x-request-id")}`),
      200,
    );
    assert.equal(row.error_code, "upstream_stream_failed");
    // Billed as a stream cut there: message_start's input and 8 counted output tokens, $0.001152.
    assert.equal(row.completion_tokens, 8);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.001152");
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("the Anthropic SDK reaches an OpenAI model through /v1/messages, translated", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { usage: OPENAI_USAGE };
    const client = new Anthropic({ apiKey: key, baseURL: t.url });
    const msg = await client.messages.create({
      model: "openai/gpt-4o-mini",
      max_tokens: 1000,
      system: [{ type: "text", text: "Be brief." }],
      stop_sequences: ["END"],
      ...(padding(2000) as object),
      messages: [{ role: "user", content: [{ type: "text", text: "hello" }] }],
    });
    assert.equal(msg.type, "message");
    assert.equal(msg.model, "openai/gpt-4o-mini");
    assert.deepEqual(msg.content, [{ type: "text", text: "Echo: hello" }]);
    assert.equal(msg.stop_reason, "end_turn");
    const usage = msg.usage as unknown as Record<string, unknown>;
    assert.equal(usage.input_tokens, 600, "uncached input, as Anthropic counts it");
    assert.equal(usage.cache_read_input_tokens, 400);
    assert.equal(usage.output_tokens, 200);
    assert.equal(usage.cost, 0.000192);
    assert.equal(usage.market_cost, 0.00024);
    const sent = t.openai.requests[0];
    assert.deepEqual(sent.messages, [
      { role: "system", content: "Be brief." },
      { role: "user", content: [{ type: "text", text: "hello" }] },
    ]);
    assert.equal(sent.max_tokens, 1000);
    assert.deepEqual(sent.stop, ["END"]);
    assert.equal(t.openai.auth[0], "Bearer sk-upstream-test");
    assert.equal(t.anthropic.requests.length, 0);

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.000192");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("the Anthropic SDK calls tools on a Gemini model, streaming, billed from its usage", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    // gemini-2.5-flash: 1000 input × 0.30 + 200 output × 2.50 = 800 µ$; 20 % off = $0.00064.
    const usage = { promptTokenCount: 1000, candidatesTokenCount: 200 };
    t.gemini.scenario = { usage, functionCall: { name: "get_weather", args: { city: "Lima" } } };
    const client = new Anthropic({ apiKey: key, baseURL: t.url });
    const tools = [{
      name: "get_weather",
      description: "Weather of a city",
      input_schema: { type: "object" as const, properties: { city: { type: "string" } } },
    }];
    const first = await client.messages.stream({
      model: "google/gemini-2.5-flash",
      max_tokens: 1000,
      tools,
      ...(padding(2000) as object),
      messages: [{ role: "user", content: "Weather in Lima?" }],
    }).finalMessage();
    assert.equal(first.stop_reason, "tool_use");
    const call = first.content.find((b) => b.type === "tool_use");
    assert.ok(call && call.type === "tool_use");
    assert.equal(call.name, "get_weather");
    assert.deepEqual(call.input, { city: "Lima" });
    assert.equal(first.usage.input_tokens, 1000);
    assert.equal(first.usage.output_tokens, 200);
    assert.match(t.gemini.paths[0], /:streamGenerateContent\?alt=sse$/);

    t.gemini.scenario = { usage };
    const events = await client.messages.create({
      model: "gemini-2.5-flash",
      max_tokens: 1000,
      tools,
      stream: true,
      ...(padding(2000) as object),
      messages: [
        { role: "user", content: "Weather in Lima?" },
        { role: "assistant", content: first.content },
        {
          role: "user",
          content: [{ type: "tool_result", tool_use_id: call.id, content: "cloudy" }],
        },
      ],
    });
    let text = "";
    const types: string[] = [];
    let final: Record<string, unknown> | null = null;
    for await (const e of events) {
      types.push(e.type);
      if (e.type === "content_block_delta" && e.delta.type === "text_delta") text += e.delta.text;
      if (e.type === "message_delta") final = e.usage as unknown as Record<string, unknown>;
    }
    assert.equal(text, 'Tool said: {"result":"cloudy"}');
    assert.deepEqual(types.slice(0, 2), ["message_start", "content_block_start"]);
    assert.deepEqual(types.slice(-3), ["content_block_stop", "message_delta", "message_stop"]);
    assert.equal(final?.cost, 0.00064);
    assert.deepEqual(t.gemini.requests[1].contents, [
      { role: "user", parts: [{ text: "Weather in Lima?" }] },
      { role: "model", parts: [{ functionCall: { name: "get_weather", args: { city: "Lima" } } }] },
      {
        role: "user",
        parts: [{ functionResponse: { name: "get_weather", response: { result: "cloudy" } } }],
      },
    ]);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.00128");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("/v1/messages validates its body", async () => {
  const t = await startProviders();
  try {
    const { key } = await t.account("1");
    const missing = await json(
      await t.call(key, "POST", "/v1/messages", {
        model: "claude-haiku-4-5",
        ...(padding(2000) as object),
        messages: [{ role: "user", content: "x" }],
      }),
      400,
    );
    assert.match(missing.error.message, /max_tokens/);
    assert.equal(t.anthropic.requests.length, 0);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a translated Messages stream whose upstream sent no usage is counted by the router", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { omitUsage: true, content: "abcdefgh", chunks: 2 };
    const body = {
      model: "openai/gpt-4o-mini",
      max_tokens: 100,
      messages: [{ role: "user", content: "hi" }],
      stream: true,
    };
    const res = await t.call(key, "POST", "/v1/messages", body);
    assert.equal(res.status, 200);
    const text = await res.text();
    assert.match(text, /event: message_delta/);
    assert.match(text, /event: message_stop/);
    // Counted with gpt-4o-mini's tokenizer: the body as sent, each output delta on its own;
    // $0.15/M in and $0.60/M out, 20 % off.
    const count = await encodingCounter("o200k_base");
    const [prompt, output] = [count(JSON.stringify(body)), count("abcd") + count("efgh")];
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, String((prompt * 120 + output * 480) / 1e9));
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("count_tokens asks Anthropic for its models and estimates for others, free", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    const client = new Anthropic({ apiKey: key, baseURL: t.url });
    const messages = [{ role: "user" as const, content: "count these words" }];
    const counted = await client.messages.countTokens({ model: "claude-haiku-4-5", messages });
    assert.equal(counted.input_tokens, Math.ceil(JSON.stringify(messages).length / 4));
    assert.equal(t.anthropic.headers[0].get("x-api-key"), "sk-ant-operator");
    const estimated = await client.messages.countTokens({ model: "gpt-4o-mini", messages });
    assert.ok(estimated.input_tokens > 0);
    assert.equal(t.openai.requests.length, 0);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("count_tokens calls leave audit rows at cost 0: answered or refused, never billed", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt, keyId } = await t.account("1");
    const messages = [{ role: "user", content: "count these words" }];
    const count = (model: string) =>
      t.call(key, "POST", "/v1/messages/count_tokens", { model, messages });
    const ids: string[] = [];
    for (
      const [model, status] of [["claude-haiku-4-5", 200], ["gpt-4o-mini", 200], [
        "nope/x",
        404,
      ]] as const
    ) {
      const res = await count(model);
      await json(res, status);
      ids.push(res.headers.get("x-request-id")!);
    }
    const bad = await t.call(key, "POST", "/v1/messages/count_tokens", { model: "gpt-4o-mini" });
    await json(bad, 400);
    ids.push(bad.headers.get("x-request-id")!);
    await t.router.flush();
    const rows = [];
    for (const id of ids) rows.push(await json(await t.call(mgmt, "GET", `/v1/audit/${id}`), 200));
    assert.deepEqual(
      rows.map((
        r,
      ) => [r.key_id, r.provider, r.model, r.status, r.error_code, r.cost, r.market_cost]),
      [
        [keyId, "anthropic", "claude-haiku-4-5", 200, null, "0", "0"],
        [keyId, "openai", "gpt-4o-mini", 200, null, "0", "0"],
        [keyId, "nope", "x", 404, "model_not_found", "0", "0"],
        [keyId, "", "", 400, "invalid_request", "0", "0"],
      ],
    );
    assert.ok(rows.every((r) => r.prompt_tokens === 0 && r.completion_tokens === 0));
    // Free calls are no billed requests: usage and credit do not move.
    const usage = await json(await t.call(mgmt, "GET", "/v1/usage"), 200);
    assert.equal(usage.summary.requests, 0);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.deepEqual([credits.balance, credits.total_used], ["1", "0"]);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("count_tokens still waiting for Anthropic at the shutdown deadline is answered 503 shutting_down, audited", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    t.anthropic.scenario = { delayMs: 60_000 };
    const waiting = t.call(key, "POST", "/v1/messages/count_tokens", {
      model: "claude-haiku-4-5",
      messages: [{ role: "user", content: "count these words" }],
    });
    while (t.anthropic.requests.length === 0) await new Promise((r) => setTimeout(r, 10));
    await t.router.endStreams(1000);
    const res = await waiting;
    assert.equal(res.headers.get("retry-after"), "1");
    assert.equal((await json(res, 503)).error.code, "shutting_down");
    await t.router.flush();
    const row = await json(
      await t.call(mgmt, "GET", `/v1/audit/${res.headers.get("x-request-id")}`),
      200,
    );
    assert.equal(row.status, 503);
    assert.equal(row.error_code, "shutting_down");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

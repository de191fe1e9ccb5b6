import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import { json } from "../_helpers.ts";
import { startProviders } from "../providers/_setup.ts";

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
      messages: [{ role: "user", content: "x" }],
      stream: true,
    });
    assert.equal(res.status, 200);
    const body = await res.text();
    assert.match(body, /upstream_error/);
    assert.equal(t.anthropic.requests.length, 1, "no retry once bytes reached the client");
    // Billed: message_start's input (400 + 1000 + 600 cache) and 2 counted output tokens
    // ("abcd" + "efgh" is 8 characters, 2 deltas) → 400×1 + 1000×0.1 + 400×1.25 + 200×2
    // + 2×5 = 1410 µ$ market, $0.001128 at 20 % off.
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.001128");
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("/v1/messages refuses models that are not Anthropic's", async () => {
  const t = await startProviders();
  try {
    const { key } = await t.account("1");
    const res = await t.call(key, "POST", "/v1/messages", {
      model: "openai/gpt-4o-mini",
      max_tokens: 10,
      messages: [{ role: "user", content: "x" }],
    });
    const body = await json(res, 400);
    assert.equal(body.error.code, "invalid_request");
    const missing = await json(
      await t.call(key, "POST", "/v1/messages", {
        model: "claude-haiku-4-5",
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

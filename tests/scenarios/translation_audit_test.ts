import assert from "node:assert/strict";
import OpenAI from "openai";
import { json, padding } from "../_helpers.ts";
import { sseData, startProviders } from "../_providers.ts";
import { anthropic } from "../../lib/providers/anthropic/mod.ts";
import { gemini } from "../../lib/providers/gemini/mod.ts";
import { UsageReader } from "../../lib/providers/usage.ts";

const FAST_RETRY = { retry: { max_retries: 1, backoff_ms: 1 } };
const UP = { baseUrl: "http://127.0.0.1:1", apiKey: "k" };
type Row = Record<string, unknown>;
const obj = (v: unknown) => (v && typeof v === "object" ? v : {}) as Row;

/** The upstream body an adapter builds for an OpenAI chat body. */
const sent = (adapter: typeof anthropic, body: Row) =>
  JSON.parse(String(adapter.chatRequest(UP, { model: "m", ...body }).init.body));

const streamOf = (text: string) => new Response(text).body!;
const anthropicSse = (events: Row[]) =>
  events.map((e) => `event: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`).join("");
const geminiSse = (events: Row[]) =>
  events.map((e) => `data: ${JSON.stringify(e)}\r\n\r\n`).join("");
const choicesOf = (chunks: Row[]) =>
  chunks.flatMap((c) => (c.choices as Row[]) ?? []).filter(Boolean);

Deno.test("n > 1 to Anthropic (one choice only) is refused clearly, before any hold or call", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "anthropic/claude-haiku-4-5",
      messages: [{ role: "user", content: "hi" }],
      n: 2,
    });
    const body = await json(res, 400);
    assert.equal(body.error.code, "invalid_request");
    assert.match(body.error.message, /\bn\b/);
    assert.equal(t.anthropic.requests.length, 0, "never sent upstream");
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0");
    assert.equal(credits.reserved, "0");

    // n = 1 is served as usual; so is n > 1 by Gemini (candidateCount).
    await json(
      await t.call(key, "POST", "/v1/chat/completions", {
        model: "anthropic/claude-haiku-4-5",
        messages: [{ role: "user", content: "hi" }],
        n: 1,
      }),
      200,
    );
    await json(
      await t.call(key, "POST", "/v1/chat/completions", {
        model: "google/gemini-2.5-flash",
        messages: [{ role: "user", content: "hi" }],
        n: 2,
      }),
      200,
    );
    assert.equal(obj(obj(t.gemini.requests[0]).generationConfig).candidateCount, 2);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("n > 1: an Anthropic fallback is skipped rather than answering one choice", async () => {
  const t = await startProviders({ providersFile: FAST_RETRY });
  try {
    const { key } = await t.account("1");
    t.openai.scenario = { status: 500 };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "openai/gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
      n: 2,
      models: ["anthropic/claude-haiku-4-5", "google/gemini-2.5-flash"],
    });
    await json(res, 200);
    assert.equal(t.anthropic.requests.length, 0);
    assert.equal(t.gemini.requests.length, 1);
  } finally {
    await t.close();
  }
});

Deno.test("response_format json_schema reaches Anthropic as output_config.format", () => {
  const schema = {
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
    additionalProperties: false,
  };
  const body = sent(anthropic, {
    messages: [{ role: "user", content: "where?" }],
    max_tokens: 100,
    response_format: { type: "json_schema", json_schema: { name: "place", strict: true, schema } },
  });
  assert.deepEqual(body.output_config, { format: { type: "json_schema", schema } });
  // Plain text, and json_object (no Anthropic equivalent), send no format.
  assert.equal(
    sent(anthropic, {
      messages: [{ role: "user", content: "x" }],
      response_format: { type: "text" },
    }).output_config,
    undefined,
  );
});

Deno.test("system messages (several, mid-conversation) and parallel tool results translate", () => {
  const messages = [
    { role: "system", content: "A." },
    { role: "user", content: "go" },
    { role: "developer", content: [{ type: "text", text: "B." }] },
    {
      role: "assistant",
      content: null,
      tool_calls: [
        { id: "call_1", type: "function", function: { name: "f", arguments: '{"a":1}' } },
        { id: "call_2", type: "function", function: { name: "g", arguments: "{}" } },
      ],
    },
    { role: "tool", tool_call_id: "call_1", content: "one" },
    { role: "tool", tool_call_id: "call_2", content: "two" },
    { role: "user", content: [{ type: "image_url", image_url: { url: "https://x.test/a.png" } }] },
  ];
  const a = sent(anthropic, { messages, max_tokens: 10 });
  assert.equal(a.system, "A.\n\nB.");
  assert.deepEqual(a.messages, [
    { role: "user", content: [{ type: "text", text: "go" }] },
    {
      role: "assistant",
      content: [
        { type: "tool_use", id: "call_1", name: "f", input: { a: 1 } },
        { type: "tool_use", id: "call_2", name: "g", input: {} },
      ],
    },
    {
      role: "user",
      content: [
        { type: "tool_result", tool_use_id: "call_1", content: "one" },
        { type: "tool_result", tool_use_id: "call_2", content: "two" },
        { type: "image", source: { type: "url", url: "https://x.test/a.png" } },
      ],
    },
  ]);
  const g = sent(gemini, { messages });
  assert.deepEqual(g.systemInstruction, { parts: [{ text: "A.\n\nB." }] });
  assert.deepEqual(g.contents, [
    { role: "user", parts: [{ text: "go" }] },
    {
      role: "model",
      parts: [{ functionCall: { name: "f", args: { a: 1 } } }, {
        functionCall: { name: "g", args: {} },
      }],
    },
    {
      role: "user",
      parts: [
        { functionResponse: { name: "f", response: { result: "one" } } },
        { functionResponse: { name: "g", response: { result: "two" } } },
        { fileData: { fileUri: "https://x.test/a.png", mimeType: "image/png" } },
      ],
    },
  ]);
});

Deno.test("tool_choice translates for Anthropic and Gemini; none never carries parallel flags", () => {
  const tools = [{ type: "function", function: { name: "f", parameters: { type: "object" } } }];
  const base = { messages: [{ role: "user", content: "x" }], tools, max_tokens: 5 };
  const cases: [unknown, Row | undefined, Row | undefined][] = [
    ["auto", { type: "auto" }, { mode: "AUTO" }],
    ["none", { type: "none" }, { mode: "NONE" }],
    ["required", { type: "any" }, { mode: "ANY" }],
    [
      { type: "function", function: { name: "f" } },
      { type: "tool", name: "f" },
      { mode: "ANY", allowedFunctionNames: ["f"] },
    ],
  ];
  for (const [choice, a, g] of cases) {
    assert.deepEqual(sent(anthropic, { ...base, tool_choice: choice }).tool_choice, a);
    assert.deepEqual(
      obj(sent(gemini, { ...base, tool_choice: choice }).toolConfig).functionCallingConfig,
      g,
    );
  }
  assert.deepEqual(
    sent(anthropic, { ...base, tool_choice: "required", parallel_tool_calls: false }).tool_choice,
    { type: "any", disable_parallel_tool_use: true },
  );
  // Anthropic's `none` choice has no disable_parallel_tool_use field.
  assert.deepEqual(
    sent(anthropic, { ...base, tool_choice: "none", parallel_tool_calls: false }).tool_choice,
    { type: "none" },
  );
});

Deno.test("a streamed Anthropic tool call without arguments still gives the client a JSON object", async () => {
  const upstream = anthropicSse([
    { type: "message_start", message: { id: "msg_1", model: "c", usage: { input_tokens: 3 } } },
    {
      type: "content_block_start",
      index: 0,
      content_block: { type: "tool_use", id: "toolu_1", name: "now", input: {} },
    },
    {
      type: "content_block_delta",
      index: 0,
      delta: { type: "input_json_delta", partial_json: "" },
    },
    { type: "content_block_stop", index: 0 },
    {
      type: "content_block_start",
      index: 1,
      content_block: { type: "tool_use", id: "toolu_2", name: "where", input: {} },
    },
    {
      type: "content_block_delta",
      index: 1,
      delta: { type: "input_json_delta", partial_json: '{"a":' },
    },
    {
      type: "content_block_delta",
      index: 1,
      delta: { type: "input_json_delta", partial_json: "1}" },
    },
    { type: "content_block_stop", index: 1 },
    { type: "message_delta", delta: { stop_reason: "tool_use" }, usage: { output_tokens: 9 } },
    { type: "message_stop" },
  ]);
  const chunks = sseData(await new Response(anthropic.chatStream(streamOf(upstream))).text());
  const args = ["", ""];
  for (const c of choicesOf(chunks)) {
    for (const tc of (obj(c.delta).tool_calls as Row[]) ?? []) {
      args[tc.index as number] += String(obj(tc.function).arguments ?? "");
    }
  }
  assert.deepEqual(args, ["{}", '{"a":1}']);
  assert.equal(choicesOf(chunks).at(-1)!.finish_reason, "tool_calls");
});

Deno.test("a streamed Gemini reply to a blocked prompt finishes as content_filter, its prompt billed", async () => {
  const upstream = geminiSse([{
    promptFeedback: { blockReason: "PROHIBITED_CONTENT" },
    usageMetadata: { promptTokenCount: 12, totalTokenCount: 12 },
    modelVersion: "gemini-2.5-flash",
    responseId: "r1",
  }]);
  const chunks = sseData(await new Response(gemini.chatStream(streamOf(upstream))).text());
  const finishes = choicesOf(chunks).map((c) => c.finish_reason).filter(Boolean);
  assert.deepEqual(finishes, ["content_filter"]);
  assert.equal(obj(chunks.at(-1)!.usage).prompt_tokens, 12);
});

Deno.test("a Gemini blocked prompt, streamed or not: content_filter through the SDK, the prompt billed", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 });
    // gemini-2.5-flash input $0.30/M: 1000 prompt tokens = 300 µ$, 20 % off = $0.00024.
    t.gemini.scenario = { blockReason: "SAFETY", usage: { promptTokenCount: 1000 } };
    const reply = await client.chat.completions.create({
      model: "gemini-2.5-flash",
      ...padding(2000),
      messages: [{ role: "user", content: "x" }],
    });
    assert.equal(reply.choices[0].finish_reason, "content_filter");
    assert.equal((reply.usage as unknown as Row).cost, 0.00024);
    const stream = await client.chat.completions.create({
      model: "gemini-2.5-flash",
      ...padding(2000),
      messages: [{ role: "user", content: "x" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let finish: string | null = null;
    let cost: unknown = null;
    for await (const c of stream) {
      finish = c.choices[0]?.finish_reason ?? finish;
      if (c.usage) cost = (c.usage as unknown as Row).cost;
    }
    assert.equal(finish, "content_filter");
    assert.equal(cost, 0.00024);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.00048");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a Gemini stream that reports an error mid-way ends with an error, not a quiet [DONE]", async () => {
  const upstream = geminiSse([
    {
      candidates: [{ content: { role: "model", parts: [{ text: "Hel" }] }, index: 0 }],
      usageMetadata: { promptTokenCount: 7 },
      responseId: "r2",
    },
    { error: { code: 500, message: "Internal error echoing secret words", status: "INTERNAL" } },
  ]);
  const text = await new Response(gemini.chatStream(streamOf(upstream))).text();
  assert.doesNotMatch(text, /secret words/);
  const chunks = sseData(text);
  const err = chunks.find((c) => c.error);
  assert.ok(err, "the client sees the failure");
  assert.equal(obj(err.error).code, "upstream_error");
});

Deno.test("a Gemini stream failing mid-way: the SDK throws, nothing echoed, the reported input billed", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    t.gemini.scenario = {
      content: "abcdefgh",
      chunks: 2,
      errorAfter: 1,
      usage: { promptTokenCount: 1000, candidatesTokenCount: 2 },
    };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "gemini-2.5-flash",
      ...padding(2000),
      messages: [{ role: "user", content: "secret words" }],
      stream: true,
    });
    const text = await res.text();
    assert.doesNotMatch(text, /secret words|failure echoing/);
    assert.ok(sseData(text).some((c) => obj(c.error).code === "upstream_error"));

    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 });
    const stream = await client.chat.completions.create({
      model: "gemini-2.5-flash",
      ...padding(2000),
      messages: [{ role: "user", content: "x" }],
      stream: true,
    });
    await assert.rejects(async () => {
      for await (const _ of stream) { /* reads until the error */ }
    });

    await t.router.flush();
    const audit = await json(await t.call(mgmt, "GET", "/v1/audit"), 200);
    for (const row of audit.data as Row[]) {
      assert.equal(row.prompt_tokens, 1000, "the input Gemini reported");
      assert.ok(Number(row.completion_tokens) >= 1, "the output streamed is counted");
    }
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a translated stream whose provider sends an error event is audited as a failed stream", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    // Anthropic: message_start (1000 input), the text block's start, a ping, one delta, then an
    // overloaded_error event. Gemini: one event with text and the prompt's usage, then an error.
    t.anthropic.scenario = {
      content: "abcdefgh",
      chunks: 2,
      errorAfter: 4,
      usage: { input_tokens: 1000, output_tokens: 2 },
    };
    t.gemini.scenario = {
      content: "abcdefgh",
      chunks: 2,
      errorAfter: 1,
      usage: { promptTokenCount: 1000, candidatesTokenCount: 2 },
    };
    for (const model of ["anthropic/claude-haiku-4-5", "google/gemini-2.5-flash"]) {
      const res = await t.call(key, "POST", "/v1/chat/completions", {
        model,
        ...padding(2000),
        messages: [{ role: "user", content: "secret words" }],
        stream: true,
        stream_options: { include_usage: true },
      });
      const text = await res.text();
      assert.doesNotMatch(text, /secret words|failure echoing/, model);
      const chunks = sseData(text);
      // What the client receives is unchanged: the text so far, the error chunk, [DONE].
      assert.equal(obj(chunks.at(-1)!.error).code, "upstream_error", model);
      assert.ok(!chunks.some((c) => c.usage), model);
      assert.match(text, /data: \[DONE\]\n\n$/, model);
    }
    // Gemini reached through the Messages API: the translated stream ends with `event: error`.
    const res = await t.call(key, "POST", "/v1/messages", {
      model: "google/gemini-2.5-flash",
      max_tokens: 100,
      ...padding(2000),
      messages: [{ role: "user", content: "secret words" }],
      stream: true,
    });
    const text = await res.text();
    assert.doesNotMatch(text, /secret words|failure echoing/);
    assert.match(text, /event: error\n/);

    await t.router.flush();
    const audit = await json(await t.call(mgmt, "GET", "/v1/audit"), 200);
    const rows = audit.data as Row[];
    assert.deepEqual(rows.map((r) => r.provider).sort(), ["anthropic", "google", "google"]);
    for (const row of rows) {
      assert.equal(row.error_code, "upstream_stream_failed", String(row.provider));
      assert.equal(row.prompt_tokens, 1000, "the input the provider reported");
      assert.ok(Number(row.completion_tokens) >= 1, "the output streamed is counted");
      assert.ok(Number(row.cost) > 0, "billed");
    }
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("n > 1 streamed from Gemini: the OpenAI SDK assembles every choice", async () => {
  const t = await startProviders();
  try {
    const { key } = await t.account("1");
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 });
    t.gemini.scenario = { content: "two ways", chunks: 2 };
    const stream = client.chat.completions.stream({
      model: "gemini-2.5-flash",
      messages: [{ role: "user", content: "x" }],
      n: 2,
    });
    const done = await stream.finalChatCompletion();
    assert.deepEqual(
      done.choices.map((c) => [c.index, c.message.role, c.message.content, c.finish_reason]),
      [[0, "assistant", "two ways", "stop"], [1, "assistant", "two ways", "stop"]],
    );
  } finally {
    await t.close();
  }
});

Deno.test("Anthropic overloaded_error (529) is retried like a 5xx and never echoed", async () => {
  const t = await startProviders({ providersFile: FAST_RETRY });
  try {
    const { key, mgmt } = await t.account("1");
    t.anthropic.scenario = {
      status: 529,
      failFirst: 1,
      usage: { input_tokens: 10, output_tokens: 2 },
    };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "anthropic/claude-haiku-4-5",
      messages: [{ role: "user", content: "hi" }],
    });
    const body = await json(res, 200);
    assert.equal(t.anthropic.requests.length, 2);
    assert.equal(body.usage.prompt_tokens, 10);
    t.anthropic.scenario = { status: 529 };
    const fail = await t.call(key, "POST", "/v1/chat/completions", {
      model: "anthropic/claude-haiku-4-5",
      messages: [{ role: "user", content: "secret words" }],
    });
    const text = await fail.text();
    assert.equal(fail.status, 502);
    assert.doesNotMatch(text, /secret words|failure echoing/);
    assert.equal(t.anthropic.requests.length, 4);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("Gemini's call id and thought signature both travel in the tool call id, and go back", () => {
  const { body } = gemini.chatReply({
    candidates: [{
      content: {
        parts: [
          { functionCall: { id: "g-1", name: "f", args: { a: 1 } }, thoughtSignature: "c2_ln+/=" },
          { functionCall: { name: "g", args: {} } },
        ],
      },
      finishReason: "STOP",
    }],
  }, new UsageReader());
  const calls = obj((body.choices as Row[])[0].message).tool_calls as Row[];
  assert.equal(new Set(calls.map((c) => c.id)).size, 2, "distinct ids");
  const g = sent(gemini, {
    messages: [
      { role: "user", content: "go" },
      { role: "assistant", content: null, tool_calls: calls },
      { role: "tool", tool_call_id: calls[0].id, content: "one" },
      { role: "tool", tool_call_id: calls[1].id, content: "two" },
    ],
  });
  assert.deepEqual(g.contents.slice(1), [
    {
      role: "model",
      parts: [
        { functionCall: { id: "g-1", name: "f", args: { a: 1 } }, thoughtSignature: "c2_ln+/=" },
        { functionCall: { name: "g", args: {} } },
      ],
    },
    {
      role: "user",
      parts: [
        { functionResponse: { id: "g-1", name: "f", response: { result: "one" } } },
        // A call Gemini gave no id: the router's id stays with the router.
        { functionResponse: { name: "g", response: { result: "two" } } },
      ],
    },
  ]);
});

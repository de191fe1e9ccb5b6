import assert from "node:assert/strict";
import OpenAI from "openai";
import { json, padding } from "../../../_helpers.ts";
import { sseData, startProviders } from "../../../_providers.ts";

// claude-sonnet-4-5 list prices ($/M): input 3, output 15, cache read 0.30, cache write (5 min)
// 3.75, cache write (1 h) 6. Usage: 1000 uncached input, 2000 cache reads, 3000 cache writes of
// which 1000 for one hour, 500 output.
// market = 1000×3 + 2000×0.30 + 2000×3.75 + 1000×6 + 500×15 = 3000 + 600 + 7500 + 6000 + 7500
//        = 24 600 µ$ = $0.0246 (24 600 000 nano-USD); 20 % off = $0.01968.
const USAGE = {
  input_tokens: 1000,
  cache_read_input_tokens: 2000,
  cache_creation_input_tokens: 3000,
  cache_creation: { ephemeral_5m_input_tokens: 2000, ephemeral_1h_input_tokens: 1000 },
  output_tokens: 500,
};
const TOOLS = [{
  type: "function" as const,
  function: {
    name: "get_weather",
    description: "Weather of a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
}];

Deno.test("chat completions to Anthropic: a tool-calling round trip, translated both ways", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1` });
    t.anthropic.scenario = {
      usage: USAGE,
      content: "Let me look.",
      toolCall: { id: "toolu_01", name: "get_weather", input: { city: "Paris" } },
    };
    const first = await client.chat.completions.create({
      model: "anthropic/claude-sonnet-4-5",
      ...padding(6000),
      messages: [
        { role: "system", content: "Be brief." },
        {
          role: "user",
          content: [
            { type: "text", text: "Weather in Paris?" },
            { type: "image_url", image_url: { url: "data:image/png;base64,iVBORw0KGgo=" } },
          ],
        },
      ],
      tools: TOOLS,
      tool_choice: "required",
      temperature: 1.5,
      top_p: 0.9,
      stop: "END",
    });
    const choice = first.choices[0];
    assert.equal(choice.finish_reason, "tool_calls");
    assert.equal(choice.message.content, "Let me look.");
    assert.deepEqual(choice.message.tool_calls, [{
      id: "toolu_01",
      type: "function",
      function: { name: "get_weather", arguments: '{"city":"Paris"}' },
    }]);
    const usage = first.usage as unknown as Record<string, unknown>;
    assert.equal(usage.prompt_tokens, 6000);
    assert.equal(usage.completion_tokens, 500);
    assert.deepEqual(usage.prompt_tokens_details, {
      cached_tokens: 2000,
      cache_write_tokens: 3000,
      cache_write_1h_tokens: 1000,
    });
    assert.equal(usage.cost, 0.01968);
    assert.equal(usage.market_cost, 0.0246);

    // The upstream got a Messages request with the operator's key, never the client's.
    const h = t.anthropic.headers[0];
    assert.equal(h.get("x-api-key"), "sk-ant-operator");
    assert.equal(h.get("authorization"), null);
    assert.equal(h.get("anthropic-version"), "2023-06-01");
    const sent = t.anthropic.requests[0];
    assert.equal(sent.model, "claude-sonnet-4-5");
    assert.equal(sent.system, "Be brief.");
    assert.equal(sent.max_tokens, 8192, "the default max_tokens Anthropic requires");
    assert.equal(sent.temperature, 1, "clamped to Anthropic's range");
    assert.equal(sent.top_p, undefined, "not sent with temperature (recent Claude refuses both)");
    assert.deepEqual(sent.stop_sequences, ["END"]);
    assert.deepEqual(sent.tool_choice, { type: "any" });
    assert.deepEqual(sent.tools, [{
      name: "get_weather",
      description: "Weather of a city",
      input_schema: TOOLS[0].function.parameters,
    }]);
    assert.deepEqual(sent.messages, [{
      role: "user",
      content: [
        { type: "text", text: "Weather in Paris?" },
        {
          type: "image",
          source: { type: "base64", media_type: "image/png", data: "iVBORw0KGgo=" },
        },
      ],
    }]);

    // The tool result goes back as a tool_result block in a user turn.
    t.anthropic.scenario = { usage: USAGE };
    const second = await client.chat.completions.create({
      model: "claude-sonnet-4-5",
      ...padding(6000),
      messages: [
        { role: "user", content: "Weather in Paris?" },
        choice.message,
        { role: "tool", tool_call_id: "toolu_01", content: "sunny, 21 °C" },
      ],
      tools: TOOLS,
      max_tokens: 2000,
      top_p: 0.9,
    });
    assert.equal(second.choices[0].message.content, "Tool said: sunny, 21 °C");
    assert.equal(second.choices[0].finish_reason, "stop");
    const sent2 = t.anthropic.requests[1];
    assert.equal(sent2.max_tokens, 2000);
    assert.equal(sent2.top_p, 0.9);
    assert.deepEqual(sent2.messages, [
      { role: "user", content: [{ type: "text", text: "Weather in Paris?" }] },
      {
        role: "assistant",
        content: [
          { type: "text", text: "Let me look." },
          { type: "tool_use", id: "toolu_01", name: "get_weather", input: { city: "Paris" } },
        ],
      },
      {
        role: "user",
        content: [{ type: "tool_result", tool_use_id: "toolu_01", content: "sunny, 21 °C" }],
      },
    ]);

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.03936");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a streamed Anthropic reply is translated to OpenAI chunks one by one", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    t.anthropic.scenario = {
      usage: USAGE,
      content: "Checking it",
      chunks: 3,
      toolCall: { id: "toolu_02", name: "get_weather", input: { city: "Oslo" } },
    };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "anthropic/claude-sonnet-4-5",
      ...padding(6000),
      messages: [{ role: "user", content: "Weather in Oslo?" }],
      tools: TOOLS,
      stream: true,
      stream_options: { include_usage: true },
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /text\/event-stream/);
    const raw = await res.text();
    assert.ok(raw.trimEnd().endsWith("data: [DONE]"));
    const chunks = sseData(raw);
    const deltas = chunks.map((c) => {
      const ch = (c.choices as Record<string, unknown>[])[0];
      return ch ? { delta: ch.delta, finish: ch.finish_reason } : { usage: c.usage };
    });
    const usage = deltas.at(-1)!.usage as Record<string, unknown>;
    assert.deepEqual(deltas.slice(0, -1), [
      { delta: { role: "assistant", content: "" }, finish: null },
      { delta: { content: "Chec" }, finish: null },
      { delta: { content: "king" }, finish: null },
      { delta: { content: " it" }, finish: null },
      {
        delta: {
          tool_calls: [{
            index: 0,
            id: "toolu_02",
            type: "function",
            function: { name: "get_weather", arguments: "" },
          }],
        },
        finish: null,
      },
      { delta: { tool_calls: [{ index: 0, function: { arguments: '{"city"' } }] }, finish: null },
      {
        delta: { tool_calls: [{ index: 0, function: { arguments: ':"Oslo"}' } }] },
        finish: null,
      },
      { delta: {}, finish: "tool_calls" },
    ]);
    assert.equal(usage.prompt_tokens, 6000);
    assert.equal(usage.completion_tokens, 500, "message_delta's cumulative output, counted once");
    assert.equal(usage.cost, 0.01968);
    assert.equal(usage.market_cost, 0.0246);
    assert.equal(t.anthropic.requests[0].stream, true);

    // The OpenAI SDK assembles the same stream.
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1` });
    const stream = await client.chat.completions.create({
      model: "claude-sonnet-4-5",
      ...padding(6000),
      messages: [{ role: "user", content: "again" }],
      tools: TOOLS,
      stream: true,
    });
    let text = "";
    let args = "";
    let sawUsage = false;
    for await (const c of stream) {
      text += c.choices[0]?.delta?.content ?? "";
      args += c.choices[0]?.delta?.tool_calls?.[0]?.function?.arguments ?? "";
      if (c.usage) sawUsage = true;
    }
    assert.equal(text, "Checking it");
    assert.deepEqual(JSON.parse(args), { city: "Oslo" });
    assert.equal(sawUsage, false, "usage only when the client asked for it");

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.03936");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an Anthropic error is mapped and its body never echoed", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    t.anthropic.scenario = { status: 400 };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "anthropic/claude-haiku-4-5",
      ...padding(6000),
      messages: [{ role: "user", content: "secret prompt text" }],
    });
    const text = await res.text();
    assert.equal(res.status, 400);
    assert.equal(JSON.parse(text).error.code, "upstream_invalid_request");
    assert.doesNotMatch(text, /secret prompt text|failure echoing/);
    assert.equal(t.anthropic.requests.length, 1, "a 400 is not retried");
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0");
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a client leaving a translated stream pays for the input and the output produced", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    t.anthropic.scenario = {
      usage: USAGE,
      content: "x".repeat(400),
      chunks: 100,
      eventDelayMs: 20,
    };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "anthropic/claude-sonnet-4-5",
      ...padding(6000),
      messages: [{ role: "user", content: "long answer please" }],
      stream: true,
    });
    const reader = res.body!.getReader();
    let got = "";
    while (!got.includes('"content":"xxxx"')) {
      got += new TextDecoder().decode((await reader.read()).value);
    }
    await reader.cancel();
    // The cancel reaches the provider through the translation, and the hold is settled.
    for (let i = 0; i < 200 && t.anthropic.streamsCancelled === 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(t.anthropic.streamsCancelled, 1);
    let credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    for (let i = 0; i < 200 && credits.reserved !== "0"; i++) {
      await new Promise((r) => setTimeout(r, 10));
      credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    }
    assert.equal(credits.reserved, "0");
    assert.notEqual(credits.total_used, "0");
    await t.router.flush();
    const audit = await json(await t.call(mgmt, "GET", "/v1/audit"), 200);
    assert.equal(audit.data[0].provider, "anthropic");
    assert.equal(audit.data[0].prompt_tokens, 6000, "the input message_start reported");
    assert.equal(audit.data[0].cached_tokens, 2000);
    assert.equal(audit.data[0].cache_write_tokens, 3000);
    assert.ok(audit.data[0].completion_tokens >= 1, "the output produced is counted");
    assert.ok(audit.data[0].completion_tokens < 100, "not the whole answer");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("usage a translated stream had to clamp is reported as a native one's is: logged with the figures and the provider", async () => {
  const clamped: Record<string, unknown>[] = [];
  const t = await startProviders({
    log: (_level, msg, fields) => {
      if (msg === "upstream usage clamped") clamped.push(fields ?? {});
    },
  });
  try {
    const { key } = await t.account("1");
    const ask = async (path: string, model: string) => {
      const res = await t.call(key, "POST", path, {
        model,
        max_tokens: 50,
        messages: [{ role: "user", content: "Hello" }],
        stream: true,
        ...(path === "/v1/chat/completions" ? { stream_options: { include_usage: true } } : {}),
      });
      assert.equal(res.status, 200);
      await res.text();
    };
    // Chat completions translated from Messages; Messages translated from Gemini's stream.
    t.anthropic.scenario = { usage: { input_tokens: 12, output_tokens: -7 } };
    await ask("/v1/chat/completions", "anthropic/claude-sonnet-4-5");
    t.gemini.scenario = {
      usage: { promptTokenCount: 9, candidatesTokenCount: "many", totalTokenCount: 9 },
    };
    await ask("/v1/messages", "google/gemini-2.5-flash");
    await t.assertBooks();
    assert.equal(clamped.length, 2, JSON.stringify(clamped));
    assert.deepEqual(clamped.map((f) => f.provider), ["anthropic", "google"]);
    assert.match(String((clamped[0].anomalies as string[])[0]), /-7 clamped to 0/);
    assert.match(String((clamped[1].anomalies as string[])[0]), /string clamped to 0/);
  } finally {
    await t.close();
  }
});

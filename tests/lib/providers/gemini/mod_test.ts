import assert from "node:assert/strict";
import OpenAI from "openai";
import { json, padding } from "../../../_helpers.ts";
import { sseData, startProviders } from "../../../_providers.ts";

// gemini-2.5-flash list prices ($/M): input 0.30, cached input 0.03, output 2.50 (thoughts are
// output). Usage: 10 000 prompt tokens of which 4000 cached, 300 candidate and 700 thought tokens.
// market = 6000×0.30 + 4000×0.03 + (300 + 700)×2.50 = 1800 + 120 + 2500 = 4420 µ$ = $0.00442
// (4 420 000 nano-USD); 20 % off = $0.003536.
const USAGE = {
  promptTokenCount: 10000,
  cachedContentTokenCount: 4000,
  candidatesTokenCount: 300,
  thoughtsTokenCount: 700,
  totalTokenCount: 11000,
};
const TOOLS = [{
  type: "function" as const,
  function: {
    name: "get_weather",
    description: "Weather of a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string" } },
      required: ["city"],
      additionalProperties: false,
    },
  },
}];

Deno.test("chat completions to Gemini: a tool-calling round trip, reasoning and cache billed", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1` });
    t.gemini.scenario = {
      usage: USAGE,
      functionCall: { name: "get_weather", args: { city: "Rome" } },
    };
    const first = await client.chat.completions.create({
      model: "google/gemini-2.5-flash",
      ...padding(10000),
      messages: [
        { role: "system", content: "Be brief." },
        {
          role: "user",
          content: [
            { type: "text", text: "Weather in Rome?" },
            { type: "image_url", image_url: { url: "data:image/jpeg;base64,/9j/4AAQ" } },
          ],
        },
      ],
      tools: TOOLS,
      tool_choice: "auto",
      temperature: 0.2,
      stop: ["END", "STOP"],
      max_tokens: 4000,
      seed: 7,
      reasoning_effort: "low",
      response_format: { type: "json_object" },
    });
    const choice = first.choices[0];
    assert.equal(choice.finish_reason, "tool_calls");
    assert.equal(choice.message.tool_calls?.length, 1);
    const call = choice.message.tool_calls![0];
    assert.equal(call.type, "function");
    assert.equal(call.function.name, "get_weather");
    assert.deepEqual(JSON.parse(call.function.arguments), { city: "Rome" });
    const usage = first.usage as unknown as Record<string, unknown>;
    assert.equal(usage.prompt_tokens, 10000);
    assert.equal(usage.completion_tokens, 1000, "thoughts are output");
    assert.deepEqual(usage.completion_tokens_details, { reasoning_tokens: 700 });
    assert.equal((usage.prompt_tokens_details as Record<string, number>).cached_tokens, 4000);
    assert.equal(usage.cost, 0.003536);
    assert.equal(usage.market_cost, 0.00442);

    assert.equal(t.gemini.paths[0], "/v1beta/models/gemini-2.5-flash:generateContent");
    assert.equal(t.gemini.keys[0], "gemini-operator");
    const sent = t.gemini.requests[0];
    assert.deepEqual(sent.systemInstruction, { parts: [{ text: "Be brief." }] });
    assert.deepEqual(sent.contents, [{
      role: "user",
      parts: [{ text: "Weather in Rome?" }, {
        inlineData: { mimeType: "image/jpeg", data: "/9j/4AAQ" },
      }],
    }]);
    assert.deepEqual(sent.generationConfig, {
      temperature: 0.2,
      maxOutputTokens: 4000,
      stopSequences: ["END", "STOP"],
      seed: 7,
      responseMimeType: "application/json",
      thinkingConfig: { thinkingBudget: 1024 },
    });
    assert.deepEqual(sent.tools, [{
      functionDeclarations: [{
        name: "get_weather",
        description: "Weather of a city",
        parametersJsonSchema: TOOLS[0].function.parameters,
      }],
    }]);
    assert.deepEqual(sent.toolConfig, { functionCallingConfig: { mode: "AUTO" } });

    // The tool result goes back as a functionResponse named after the call.
    t.gemini.scenario = { usage: USAGE };
    const second = await client.chat.completions.create({
      model: "gemini-2.5-flash",
      ...padding(10000),
      messages: [
        { role: "user", content: "Weather in Rome?" },
        choice.message,
        { role: "tool", tool_call_id: call.id, content: '{"sky":"clear"}' },
      ],
      tools: TOOLS,
    });
    assert.equal(second.choices[0].message.content, 'Tool said: {"sky":"clear"}');
    assert.equal(second.choices[0].finish_reason, "stop");
    assert.deepEqual(t.gemini.requests[1].contents, [
      { role: "user", parts: [{ text: "Weather in Rome?" }] },
      { role: "model", parts: [{ functionCall: { name: "get_weather", args: { city: "Rome" } } }] },
      {
        role: "user",
        parts: [{ functionResponse: { name: "get_weather", response: { sky: "clear" } } }],
      },
    ]);

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.007072");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a streamed Gemini reply is translated to OpenAI chunks one by one", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    t.gemini.scenario = { usage: USAGE, content: "Sunny in Rome", chunks: 3 };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "google/gemini-2.5-flash",
      ...padding(10000),
      messages: [{ role: "user", content: "Weather?" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    assert.equal(res.status, 200);
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
      { delta: { content: "Sunny" }, finish: null },
      { delta: { content: " in R" }, finish: null },
      { delta: { content: "ome" }, finish: null },
      { delta: {}, finish: "stop" },
    ]);
    assert.equal(usage.cost, 0.003536);
    assert.equal(usage.market_cost, 0.00442);
    assert.equal(
      t.gemini.paths[0],
      "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
    );

    // A streamed function call comes out as one tool_calls delta, finished as tool_calls.
    t.gemini.scenario = {
      usage: USAGE,
      functionCall: { name: "get_weather", args: { city: "Rome" } },
    };
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1` });
    const stream = await client.chat.completions.create({
      model: "gemini-2.5-flash",
      ...padding(10000),
      messages: [{ role: "user", content: "Weather?" }],
      tools: TOOLS,
      stream: true,
    });
    let args = "";
    let finish: string | null = null;
    for await (const c of stream) {
      args += c.choices[0]?.delta?.tool_calls?.[0]?.function?.arguments ?? "";
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    assert.deepEqual(JSON.parse(args), { city: "Rome" });
    assert.equal(finish, "tool_calls");

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.007072");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

// A tool schema as OpenAI clients write them (zod, Pydantic): $defs/$ref, const, nullable unions
// and closed objects. None of it fits Gemini's OpenAPI-subset `parameters`.
const RICH_SCHEMA = {
  $schema: "http://json-schema.org/draft-07/schema#",
  type: "object",
  $defs: {
    unit: { type: "string", enum: ["c", "f"] },
  },
  properties: {
    city: { type: "string" },
    unit: { $ref: "#/$defs/unit" },
    country: { type: ["string", "null"] },
    days: { anyOf: [{ type: "integer", minimum: 1 }, { type: "null" }] },
    kind: { const: "forecast" },
  },
  required: ["city", "unit", "country", "days", "kind"],
  additionalProperties: false,
};

Deno.test("tool and response schemas reach Gemini whole, as JSON Schema (parametersJsonSchema)", async () => {
  const t = await startProviders();
  try {
    const { key } = await t.account("1");
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1` });
    t.gemini.scenario = { content: "{}" };
    const reply = await client.chat.completions.create({
      model: "gemini-2.5-flash",
      ...padding(10000),
      messages: [{ role: "user", content: "Forecast?" }],
      tools: [{
        type: "function",
        function: { name: "forecast", description: "A forecast", parameters: RICH_SCHEMA },
      }],
      response_format: {
        type: "json_schema",
        json_schema: { name: "answer", strict: true, schema: RICH_SCHEMA },
      },
    });
    assert.equal(reply.choices[0].finish_reason, "stop");
    const sent = t.gemini.requests[0];
    assert.deepEqual(sent.tools, [{
      functionDeclarations: [{
        name: "forecast",
        description: "A forecast",
        parametersJsonSchema: RICH_SCHEMA,
      }],
    }]);
    const gen = sent.generationConfig as Record<string, unknown>;
    assert.deepEqual(gen.responseJsonSchema, RICH_SCHEMA);
    assert.equal(gen.responseSchema, undefined);
  } finally {
    await t.close();
  }
});

Deno.test("Gemini's function call id goes back on the functionResponse, streamed or not", async () => {
  const t = await startProviders();
  try {
    const { key } = await t.account("1");
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1` });
    const ask = [{ role: "user" as const, content: "Weather in Rome?" }];
    for (const stream of [false, true]) {
      const geminiId = stream ? "fc-stream-2" : "fc-plain-1";
      t.gemini.scenario = {
        functionCall: { id: geminiId, name: "get_weather", args: { city: "Rome" } },
      };
      let call: { id: string; type: "function"; function: { name: string; arguments: string } };
      if (stream) {
        const chunks = await client.chat.completions.create({
          model: "gemini-2.5-flash",
          messages: ask,
          tools: TOOLS,
          stream: true,
        });
        let id = "";
        let args = "";
        for await (const c of chunks) {
          const tc = c.choices[0]?.delta?.tool_calls?.[0];
          id += tc?.id ?? "";
          args += tc?.function?.arguments ?? "";
        }
        call = { id, type: "function", function: { name: "get_weather", arguments: args } };
      } else {
        const first = await client.chat.completions.create({
          model: "gemini-2.5-flash",
          messages: ask,
          tools: TOOLS,
        });
        const tc = first.choices[0].message.tool_calls![0];
        assert.equal(tc.type, "function");
        call = tc as typeof call;
      }
      t.gemini.scenario = {};
      const second = await client.chat.completions.create({
        model: "gemini-2.5-flash",
        ...padding(10000),
        messages: [
          ...ask,
          { role: "assistant", content: null, tool_calls: [call] },
          { role: "tool", tool_call_id: call.id, content: '{"sky":"clear"}' },
        ],
        tools: TOOLS,
      });
      assert.equal(second.choices[0].message.content, 'Tool said: {"sky":"clear"}');
      assert.deepEqual(t.gemini.requests.at(-1)!.contents, [
        { role: "user", parts: [{ text: "Weather in Rome?" }] },
        {
          role: "model",
          parts: [{ functionCall: { id: geminiId, name: "get_weather", args: { city: "Rome" } } }],
        },
        {
          role: "user",
          parts: [{
            functionResponse: { id: geminiId, name: "get_weather", response: { sky: "clear" } },
          }],
        },
      ]);
    }
  } finally {
    await t.close();
  }
});

import assert from "node:assert/strict";
import {
  openAIUsageOf,
  readAnthropicUsage,
  readGeminiUsage,
  readOpenAIUsage,
  readResponsesUsage,
  responsesWebSearches,
  UsageReader,
  withSearches,
} from "../../../lib/providers/usage.ts";
import {
  anthropicSearchBound,
  DEFAULT_WEB_SEARCH_BOUND,
  responsesSearchBound,
} from "../../../lib/proxy/tokens.ts";
import { anthropic } from "../../../lib/providers/anthropic/mod.ts";
import { gemini } from "../../../lib/providers/gemini/mod.ts";
import { ZERO_USAGE } from "../../../lib/pricing.ts";
import { sseData } from "../../_providers.ts";

Deno.test("Anthropic usage: the prompt adds cache reads and writes to input_tokens", () => {
  const r = new UsageReader();
  assert.deepEqual(
    readAnthropicUsage({
      input_tokens: 10,
      cache_read_input_tokens: 20,
      cache_creation_input_tokens: 30,
      cache_creation: { ephemeral_5m_input_tokens: 18, ephemeral_1h_input_tokens: 12 },
      output_tokens: 5,
    }, r),
    { prompt: 60, cached: 20, cacheWrite: 30, cacheWrite1h: 12, completion: 5, reasoning: 0 },
  );
  // Without the total, the write breakdown is summed.
  assert.equal(
    readAnthropicUsage({
      input_tokens: 1,
      cache_creation: { ephemeral_5m_input_tokens: 2, ephemeral_1h_input_tokens: 3 },
    }, r).cacheWrite,
    5,
  );
  assert.deepEqual(r.anomalies, []);
  assert.deepEqual(readAnthropicUsage(null, r), ZERO_USAGE);
  const bad = new UsageReader();
  assert.equal(readAnthropicUsage({ input_tokens: -5, output_tokens: "x" }, bad).prompt, 0);
  assert.equal(bad.anomalies.length, 2);
});

Deno.test("Gemini usage: thoughts are reasoning output, cached content is part of the prompt", () => {
  const r = new UsageReader();
  assert.deepEqual(
    readGeminiUsage({
      promptTokenCount: 100,
      cachedContentTokenCount: 40,
      candidatesTokenCount: 7,
      thoughtsTokenCount: 3,
    }, r),
    { prompt: 100, cached: 40, cacheWrite: 0, cacheWrite1h: 0, completion: 10, reasoning: 3 },
  );
});

Deno.test("Responses usage: cached and reasoning details", () => {
  assert.deepEqual(
    readResponsesUsage({
      input_tokens: 9,
      input_tokens_details: { cached_tokens: 4 },
      output_tokens: 6,
      output_tokens_details: { reasoning_tokens: 2 },
    }, new UsageReader()),
    { prompt: 9, cached: 4, cacheWrite: 0, cacheWrite1h: 0, completion: 6, reasoning: 2 },
  );
});

/** A stream delivering `text` a few bytes at a time, splitting events and UTF-8 sequences. */
function trickle(text: string, size: number): ReadableStream<Uint8Array> {
  const bytes = new TextEncoder().encode(text);
  let i = 0;
  return new ReadableStream({
    pull(ctrl) {
      if (i >= bytes.length) return ctrl.close();
      ctrl.enqueue(bytes.slice(i, i + size));
      i += size;
    },
  });
}

const sse = (events: [string, unknown][]) =>
  events.map(([name, data]) => `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`).join("");

Deno.test("the Anthropic stream translation survives events split at any byte", async () => {
  const upstream = sse([
    ["message_start", {
      type: "message_start",
      message: { id: "msg_1", model: "claude-x", usage: { input_tokens: 5, output_tokens: 1 } },
    }],
    ["content_block_start", {
      type: "content_block_start",
      index: 0,
      content_block: { type: "text", text: "" },
    }],
    ["content_block_delta", {
      type: "content_block_delta",
      index: 0,
      delta: { type: "text_delta", text: "héllo ✓" },
    }],
    ["message_delta", {
      type: "message_delta",
      delta: { stop_reason: "max_tokens" },
      usage: { output_tokens: 9 },
    }],
    ["message_stop", { type: "message_stop" }],
  ]);
  for (const size of [1, 3, 7, 1000]) {
    const out = await new Response(anthropic.chatStream(trickle(upstream, size))).text();
    assert.ok(out.endsWith("data: [DONE]\n\n"));
    const chunks = sseData(out);
    assert.equal(chunks.length, 4, `size ${size}`);
    const choices = chunks.map((c) => (c.choices as Record<string, unknown>[])[0]);
    assert.deepEqual(choices[1].delta, { content: "héllo ✓" });
    assert.equal(choices[2].finish_reason, "length");
    assert.equal(chunks[3].id, "msg_1");
    assert.deepEqual(chunks[3].choices, []);
    assert.equal((chunks[3].usage as Record<string, number>).completion_tokens, 9);
    assert.equal((chunks[3].usage as Record<string, number>).prompt_tokens, 5);
  }
});

Deno.test("the Gemini stream translation reports the last usageMetadata once, at the end", async () => {
  const data = (text: string, usage: unknown, finish?: string) =>
    `data: ${
      JSON.stringify({
        candidates: [{
          content: { parts: [{ text }] },
          ...(finish ? { finishReason: finish } : {}),
        }],
        usageMetadata: usage,
        responseId: "r1",
      })
    }\r\n\r\n`;
  const upstream = data("a", { promptTokenCount: 4 }) +
    data(
      "b",
      { promptTokenCount: 4, candidatesTokenCount: 2, thoughtsTokenCount: 5 },
      "MAX_TOKENS",
    );
  const out = await new Response(gemini.chatStream(trickle(upstream, 5))).text();
  const chunks = sseData(out);
  const usage = chunks.filter((c) => c.usage);
  assert.equal(usage.length, 1);
  assert.deepEqual(usage[0].usage, {
    prompt_tokens: 4,
    completion_tokens: 7,
    total_tokens: 11,
    prompt_tokens_details: { cached_tokens: 0, cache_write_tokens: 0, cache_write_1h_tokens: 0 },
    completion_tokens_details: { reasoning_tokens: 5 },
  });
  const finish = chunks.map((c) => (c.choices as Record<string, unknown>[])[0]?.finish_reason)
    .filter(Boolean);
  assert.deepEqual(finish, ["length"]);
});

Deno.test("a Gemini reply to a blocked prompt is a content_filter choice, its prompt billed", () => {
  const r = new UsageReader();
  const { body, usage } = gemini.chatReply({
    promptFeedback: { blockReason: "SAFETY" },
    usageMetadata: { promptTokenCount: 12 },
  }, r);
  assert.deepEqual(body.choices, [{
    index: 0,
    message: { role: "assistant", content: null, refusal: null },
    finish_reason: "content_filter",
    logprobs: null,
  }]);
  assert.equal(usage.prompt, 12);
});

Deno.test("a Gemini thought signature travels in the tool call id and goes back with the call", () => {
  const { body } = gemini.chatReply({
    candidates: [{
      content: {
        parts: [{ functionCall: { name: "f", args: { a: 1 } }, thoughtSignature: "c2ln+/=" }],
      },
      finishReason: "STOP",
    }],
  }, new UsageReader());
  const call = ((body.choices as Record<string, unknown>[])[0].message as {
    tool_calls: { id: string; function: { name: string; arguments: string } }[];
  }).tool_calls[0];
  const next = JSON.parse(
    String(
      gemini.chatRequest({ baseUrl: "http://127.0.0.1:1", apiKey: "k" }, {
        model: "gemini-3-pro-preview",
        messages: [
          { role: "user", content: "go" },
          { role: "assistant", content: null, tool_calls: [{ type: "function", ...call }] },
          { role: "tool", tool_call_id: call.id, content: "done" },
        ],
      }).init.body,
    ),
  );
  assert.deepEqual(next.contents[1].parts, [
    { functionCall: { name: "f", args: { a: 1 } }, thoughtSignature: "c2ln+/=" },
  ]);
  assert.equal(next.contents[2].parts[0].functionResponse.name, "f");
});

Deno.test("audio tokens are read from OpenAI and Gemini usage and survive translation", () => {
  const r = new UsageReader();
  const openai = readOpenAIUsage({
    prompt_tokens: 1000,
    completion_tokens: 500,
    prompt_tokens_details: { cached_tokens: 0, audio_tokens: 800 },
    completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 400 },
  }, r);
  assert.equal(openai.audioIn, 800);
  assert.equal(openai.audioOut, 400);
  const gem = readGeminiUsage({
    promptTokenCount: 10_000,
    cachedContentTokenCount: 2000,
    candidatesTokenCount: 500,
    thoughtsTokenCount: 1000,
    promptTokensDetails: [{ modality: "TEXT", tokenCount: 4000 }, {
      modality: "AUDIO",
      tokenCount: 6000,
    }],
    cacheTokensDetails: [{ modality: "AUDIO", tokenCount: 500 }, {
      modality: "TEXT",
      tokenCount: 1500,
    }],
    candidatesTokensDetails: [{ modality: "TEXT", tokenCount: 500 }],
  }, r);
  assert.deepEqual(gem, {
    prompt: 10_000,
    cached: 2000,
    cacheWrite: 0,
    cacheWrite1h: 0,
    completion: 1500,
    reasoning: 1000,
    audioIn: 6000,
    audioCached: 500,
  });
  // The router's own OpenAI-shaped usage (translated streams) reads back the same.
  assert.deepEqual(readOpenAIUsage(openAIUsageOf(gem), r), gem);
  assert.deepEqual(readOpenAIUsage(openAIUsageOf(openai), r), openai);
  assert.deepEqual(r.anomalies, []);
});

Deno.test("web searches: Anthropic's server_tool_use, OpenAI Responses' web_search_call items", () => {
  const r = new UsageReader();
  const u = readAnthropicUsage({
    input_tokens: 10,
    output_tokens: 5,
    server_tool_use: { web_search_requests: 4, web_fetch_requests: 2 },
  }, r);
  assert.equal(u.webSearches, 4);
  assert.equal(readAnthropicUsage({ input_tokens: 1, output_tokens: 1 }, r).webSearches, undefined);
  const output = [
    { type: "web_search_call", id: "ws_1", status: "completed", action: { type: "search" } },
    { type: "reasoning", id: "rs_1" },
    { type: "web_search_call", id: "ws_2", status: "completed", action: { type: "open_page" } },
    { type: "message", id: "msg_1" },
  ];
  assert.equal(responsesWebSearches(output, r), 2);
  assert.equal(responsesWebSearches(undefined, r), 0);
  const base = readResponsesUsage({ input_tokens: 7, output_tokens: 3 }, r);
  assert.equal(withSearches(base, 2).webSearches, 2);
  // Two counts of one request's searches are cumulative: the larger stands.
  assert.equal(withSearches({ ...base, webSearches: 5 }, 2).webSearches, 5);
  assert.deepEqual(r.anomalies, []);
  assert.equal(
    readAnthropicUsage({ server_tool_use: { web_search_requests: -1 } }, r).webSearches,
    undefined,
  );
  assert.equal(r.anomalies.length, 1);
});

Deno.test("the hold's search bound: max_uses, max_tool_calls, or the default", () => {
  const ws = { type: "web_search_20250305", name: "web_search" };
  assert.equal(anthropicSearchBound({ tools: [{ name: "f", input_schema: {} }] }), 0);
  assert.equal(anthropicSearchBound({ tools: [{ ...ws, max_uses: 3 }] }), 3);
  assert.equal(anthropicSearchBound({ tools: [ws] }), DEFAULT_WEB_SEARCH_BOUND);
  assert.equal(
    anthropicSearchBound({ tools: [{ ...ws, max_uses: "9" }] }),
    DEFAULT_WEB_SEARCH_BOUND,
  );
  assert.equal(responsesSearchBound({ tools: [{ type: "function", name: "f" }] }), 0);
  assert.equal(responsesSearchBound({ tools: [{ type: "web_search" }] }), DEFAULT_WEB_SEARCH_BOUND);
  assert.equal(
    responsesSearchBound({ tools: [{ type: "web_search_preview" }], max_tool_calls: 2 }),
    2,
  );
  // A stored prompt may bring its own tools: held as if it searched.
  assert.equal(responsesSearchBound({ prompt: { id: "pmpt_1" } }), DEFAULT_WEB_SEARCH_BOUND);
});

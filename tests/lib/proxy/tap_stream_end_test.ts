/**
 * A stream whose final usage has arrived ends cleanly when its upstream then breaks, before its
 * own end (`[DONE]`, `message_stop`): the real SDKs read it to the end without throwing, and it is
 * billed once, at the provider's usage.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { json } from "../../_helpers.ts";
import { type ProviderRouter, startProviders } from "../../_providers.ts";

/** The audit row of a request, once recorded: billed once, at these tokens, as a success. */
async function billed(
  t: ProviderRouter,
  mgmt: string,
  requestId: string | null | undefined,
  tokens: [prompt: number, completion: number],
) {
  assert.ok(requestId, "the reply carries its request id");
  await t.router.flush();
  const row = await json(await t.call(mgmt, "GET", `/v1/audit/${requestId}`), 200);
  assert.deepEqual([row.prompt_tokens, row.completion_tokens, row.error_code], [...tokens, null]);
  assert.deepEqual(row.attempts, [], "one attempt, one charge");
}

/** Reads an OpenAI chat stream to its end: its text and last usage. */
async function readChat(stream: AsyncIterable<OpenAI.ChatCompletionChunk>) {
  let text = "";
  let usage: OpenAI.CompletionUsage | undefined;
  for await (const c of stream) {
    text += c.choices[0]?.delta?.content ?? "";
    usage = c.usage ?? usage;
  }
  return { text, usage: [usage?.prompt_tokens, usage?.completion_tokens] };
}

const chatBody = (model: string) => ({
  model,
  messages: [{ role: "user" as const, content: "hello" }],
  stream: true as const,
  stream_options: { include_usage: true },
});

/** Reads a Messages stream to its final message, with the SDK's own helper. */
async function readMessages(anthropic: Anthropic, model: string) {
  const stream = anthropic.messages.stream({
    model,
    max_tokens: 100,
    messages: [{ role: "user", content: "hello" }],
  });
  const { content: [block], usage } = await stream.finalMessage();
  return { text: block.type === "text" ? block.text : "", output: usage.output_tokens, stream };
}

// Each fake's stream, and how many of its events carry the final usage: the ones it is cut after.
/** Events: role, 2 parts, finish, usage | [DONE]. */
const OPENAI_REPLY = {
  content: "abcdefgh",
  chunks: 2,
  usage: { prompt_tokens: 11, completion_tokens: 7 },
};
const OPENAI_FINAL = 5;
/** Events: message_start, block start, ping, 2 deltas, block stop, message_delta | message_stop. */
const ANTHROPIC_REPLY = {
  content: "from claude",
  chunks: 2,
  usage: { input_tokens: 13, output_tokens: 5 },
};
const ANTHROPIC_FINAL = 7;
/** Events: 2, the second finishing the choice with the usage | the stream's close. */
const GEMINI_REPLY = {
  content: "from gemini",
  chunks: 2,
  usage: { promptTokenCount: 9, candidatesTokenCount: 4, totalTokenCount: 13 },
};
const GEMINI_FINAL = 2;

Deno.test("an upstream that breaks after the final usage: each format's stream ends cleanly for its SDK, billed once", async (ctx) => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("5");
    const openai = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 });
    const anthropic = new Anthropic({ apiKey: key, baseURL: t.url, maxRetries: 0 });
    const openaiBreaking = { ...OPENAI_REPLY, dropAfter: OPENAI_FINAL };
    t.anthropic.scenario = { ...ANTHROPIC_REPLY, breakAfter: ANTHROPIC_FINAL };

    await ctx.step("OpenAI chat, passed through", async () => {
      t.openai.scenario = openaiBreaking;
      const { data, response } = await openai.chat.completions.create(chatBody("gpt-4o-mini"))
        .withResponse();
      assert.deepEqual(await readChat(data), { text: "abcdefgh", usage: [11, 7] });
      await billed(t, mgmt, response.headers.get("x-request-id"), [11, 7]);
    });

    await ctx.step("chat completions to Anthropic, translated", async () => {
      const { data, response } = await openai.chat.completions.create(
        chatBody("claude-haiku-4-5"),
      ).withResponse();
      assert.deepEqual(await readChat(data), { text: "from claude", usage: [13, 5] });
      await billed(t, mgmt, response.headers.get("x-request-id"), [13, 5]);
    });

    await ctx.step("native Messages", async () => {
      const { text, output, stream } = await readMessages(anthropic, "claude-haiku-4-5");
      assert.deepEqual([text, output], ["from claude", 5]);
      await billed(t, mgmt, stream.request_id, [13, 5]);
    });

    await ctx.step("Messages to an OpenAI model, translated", async () => {
      t.openai.scenario = openaiBreaking;
      const { text, output, stream } = await readMessages(anthropic, "gpt-4o-mini");
      assert.deepEqual([text, output], ["abcdefgh", 7]);
      await billed(t, mgmt, stream.request_id, [11, 7]);
    });

    await ctx.step("Responses: response.completed came, then the connection broke", async () => {
      // Events: created, one delta, text done, completed | the end never comes.
      t.openai.scenario = {
        content: "responded",
        chunks: 1,
        responsesUsage: { input_tokens: 17, output_tokens: 3 },
        dropAfter: 4,
      };
      const { data, response } = await openai.responses.create({
        model: "gpt-4o-mini",
        input: "hello",
        stream: true,
      }).withResponse();
      const events = [];
      for await (const e of data) events.push(e);
      const last = events.at(-1);
      assert.equal(last?.type === "response.completed" && last.response.usage?.output_tokens, 3);
      await billed(t, mgmt, response.headers.get("x-request-id"), [17, 3]);
    });

    await ctx.step(
      "Chat completions to Gemini, translated: the break after its last event",
      async () => {
        // Gemini ends its stream by closing it: here the last event (finish, usage) came, then the
        // connection broke.
        t.gemini.scenario = { ...GEMINI_REPLY, dropAfter: GEMINI_FINAL };
        const { data, response } = await openai.chat.completions.create(
          chatBody("gemini-2.5-flash"),
        ).withResponse();
        assert.deepEqual(await readChat(data), { text: "from gemini", usage: [9, 4] });
        await billed(t, mgmt, response.headers.get("x-request-id"), [9, 4]);
      },
    );

    await ctx.step("a break before the final usage still fails the stream", async () => {
      t.gemini.scenario = { ...t.gemini.scenario, dropAfter: 1 };
      const cut = await openai.chat.completions.create(chatBody("gemini-2.5-flash"));
      await assert.rejects(() => readChat(cut), /stream failed/);
      t.anthropic.scenario = { ...t.anthropic.scenario, breakAfter: 6 };
      await assert.rejects(() => readMessages(anthropic, "claude-haiku-4-5"), /stream failed/);
    });
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an upstream that stalls after the final usage: the stream ends cleanly at UPSTREAM_TIMEOUT_MS for the SDK, billed once", async (ctx) => {
  const t = await startProviders({ env: { UPSTREAM_TIMEOUT_MS: "300" } });
  try {
    const { key, mgmt } = await t.account("5");
    const openai = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 });
    const anthropic = new Anthropic({ apiKey: key, baseURL: t.url, maxRetries: 0 });
    // Each upstream sends its final usage, then nothing more, its connection left open.
    t.openai.scenario = { ...OPENAI_REPLY, stallAfter: OPENAI_FINAL };
    t.anthropic.scenario = { ...ANTHROPIC_REPLY, stallAfter: ANTHROPIC_FINAL };
    t.gemini.scenario = { ...GEMINI_REPLY, stallAfter: GEMINI_FINAL };
    const chats: [string, string, string, [number, number]][] = [
      ["OpenAI chat, passed through", "gpt-4o-mini", "abcdefgh", [11, 7]],
      [
        "chat to Anthropic, translated: usage sent at message_delta",
        "claude-haiku-4-5",
        "from claude",
        [13, 5],
      ],
      [
        "chat to Gemini, translated: usage sent with the last event",
        "gemini-2.5-flash",
        "from gemini",
        [9, 4],
      ],
    ];
    for (const [name, model, text, tokens] of chats) {
      await ctx.step(name, async () => {
        const { data, response } = await openai.chat.completions.create(chatBody(model))
          .withResponse();
        assert.deepEqual(await readChat(data), { text, usage: tokens });
        await billed(t, mgmt, response.headers.get("x-request-id"), tokens);
      });
    }
    const messages: [string, string, string, [number, number]][] = [
      ["native Messages, passed through", "claude-haiku-4-5", "from claude", [13, 5]],
      ["Messages to OpenAI, translated: ended at the usage chunk", "gpt-4o-mini", "abcdefgh", [
        11,
        7,
      ]],
    ];
    for (const [name, model, text, tokens] of messages) {
      await ctx.step(name, async () => {
        const { text: got, output, stream } = await readMessages(anthropic, model);
        assert.deepEqual([got, output], [text, tokens[1]]);
        await billed(t, mgmt, stream.request_id, tokens);
      });
    }
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

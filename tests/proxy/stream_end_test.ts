/**
 * A stream whose final usage has arrived ends cleanly when its upstream then breaks, before its
 * own end (`[DONE]`, `message_stop`): the real SDKs read it to the end without throwing, and it is
 * billed once, at the provider's usage.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { json } from "../_helpers.ts";
import { type ProviderRouter, startProviders } from "../providers/_setup.ts";

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

Deno.test("an upstream that breaks after the final usage: each format's stream ends cleanly for its SDK, billed once", async (ctx) => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("5");
    const openai = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 });
    const anthropic = new Anthropic({ apiKey: key, baseURL: t.url, maxRetries: 0 });
    // Events: role, 2 parts, finish, usage | [DONE] never comes.
    const openaiBreaking = {
      content: "abcdefgh",
      chunks: 2,
      usage: { prompt_tokens: 11, completion_tokens: 7 },
      dropAfter: 5,
    };
    // Events: message_start, block start, ping, 2 deltas, block stop, message_delta | message_stop
    // never comes.
    t.anthropic.scenario = {
      content: "from claude",
      chunks: 2,
      usage: { input_tokens: 13, output_tokens: 5 },
      breakAfter: 7,
    };

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

    /** Reads a Messages stream to its final message, with the SDK's own helper. */
    const readMessages = async (model: string) => {
      const stream = anthropic.messages.stream({
        model,
        max_tokens: 100,
        messages: [{ role: "user", content: "hello" }],
      });
      const { content: [block], usage } = await stream.finalMessage();
      return { text: block.type === "text" ? block.text : "", output: usage.output_tokens, stream };
    };

    await ctx.step("native Messages", async () => {
      const { text, output, stream } = await readMessages("claude-haiku-4-5");
      assert.deepEqual([text, output], ["from claude", 5]);
      await billed(t, mgmt, stream.request_id, [13, 5]);
    });

    await ctx.step("Messages to an OpenAI model, translated", async () => {
      t.openai.scenario = openaiBreaking;
      const { text, output, stream } = await readMessages("gpt-4o-mini");
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
        t.gemini.scenario = {
          content: "from gemini",
          chunks: 2,
          usage: { promptTokenCount: 9, candidatesTokenCount: 4, totalTokenCount: 13 },
          dropAfter: 2,
        };
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
      await assert.rejects(() => readMessages("claude-haiku-4-5"), /stream failed/);
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
    // Events: message_start, block start, ping, 2 deltas, block stop, message_delta | nothing more,
    // the connection left open.
    t.anthropic.scenario = {
      content: "from claude",
      chunks: 2,
      usage: { input_tokens: 13, output_tokens: 5 },
      stallAfter: 7,
    };

    await ctx.step(
      "chat completions to Anthropic, translated: usage sent at message_delta",
      async () => {
        const { data, response } = await openai.chat.completions.create(
          chatBody("claude-haiku-4-5"),
        ).withResponse();
        assert.deepEqual(await readChat(data), { text: "from claude", usage: [13, 5] });
        await billed(t, mgmt, response.headers.get("x-request-id"), [13, 5]);
      },
    );

    await ctx.step("native Messages, passed through: the stall after message_delta", async () => {
      const anthropic = new Anthropic({ apiKey: key, baseURL: t.url, maxRetries: 0 });
      const stream = anthropic.messages.stream({
        model: "claude-haiku-4-5",
        max_tokens: 100,
        messages: [{ role: "user", content: "hello" }],
      });
      const { content: [block], usage } = await stream.finalMessage();
      assert.deepEqual([block.type === "text" && block.text, usage.output_tokens], [
        "from claude",
        5,
      ]);
      await billed(t, mgmt, stream.request_id, [13, 5]);
    });

    await ctx.step(
      "chat completions to Gemini, translated: usage sent with the last event",
      async () => {
        // Two events, the second finishing the choice with the usage | the connection left open.
        t.gemini.scenario = {
          content: "from gemini",
          chunks: 2,
          usage: { promptTokenCount: 9, candidatesTokenCount: 4, totalTokenCount: 13 },
          stallAfter: 2,
        };
        const { data, response } = await openai.chat.completions.create(
          chatBody("gemini-2.5-flash"),
        ).withResponse();
        assert.deepEqual(await readChat(data), { text: "from gemini", usage: [9, 4] });
        await billed(t, mgmt, response.headers.get("x-request-id"), [9, 4]);
      },
    );

    // Events: role, 2 parts, finish, usage | [DONE] never comes.
    t.openai.scenario = {
      content: "abcdefgh",
      chunks: 2,
      usage: { prompt_tokens: 11, completion_tokens: 7 },
      stallAfter: 5,
    };

    await ctx.step("OpenAI chat, passed through: the stall after the usage chunk", async () => {
      const { data, response } = await openai.chat.completions.create(chatBody("gpt-4o-mini"))
        .withResponse();
      assert.deepEqual(await readChat(data), { text: "abcdefgh", usage: [11, 7] });
      await billed(t, mgmt, response.headers.get("x-request-id"), [11, 7]);
    });

    await ctx.step(
      "Messages to an OpenAI model, translated: ended at the usage chunk",
      async () => {
        const anthropic = new Anthropic({ apiKey: key, baseURL: t.url, maxRetries: 0 });
        const stream = anthropic.messages.stream({
          model: "gpt-4o-mini",
          max_tokens: 100,
          messages: [{ role: "user", content: "hello" }],
        });
        const { content: [block], usage } = await stream.finalMessage();
        assert.deepEqual([block.type === "text" && block.text, usage.output_tokens], [
          "abcdefgh",
          7,
        ]);
        await billed(t, mgmt, stream.request_id, [11, 7]);
      },
    );
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

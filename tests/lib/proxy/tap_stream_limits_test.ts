/**
 * The bounds on a provider's stream: the largest SSE event (`MAX_SSE_EVENT_BYTES`) and the longest
 * stream (`MAX_STREAM_MS`), each ending it with an error event, billed for what was delivered.
 */
import assert from "node:assert/strict";
import { json, startRouter, type TestRouter } from "../../_helpers.ts";
import { countedStream, serveLoopback } from "../../_fakes/serve.ts";
import { startProviders } from "../../_providers.ts";
import { countStreamedOutput } from "../../../lib/proxy/tokens.ts";
import { encodingCounter } from "../../../lib/tokenizer.ts";

// The router counts gpt-4o-mini's output with its tokenizer (loaded here, so already when a stream
// starts).
const o200k = await encodingCounter("o200k_base");
import { STREAM_FAILURE, STREAM_TOO_LONG } from "../../../lib/sse.ts";

const enc = new TextEncoder();
const MiB = 1024 * 1024;
const chunkEvent = (content: string) =>
  `data: ${
    JSON.stringify({
      id: "chatcmpl-1",
      object: "chat.completion.chunk",
      created: 1,
      model: "gpt-4o-mini",
      choices: [{ index: 0, delta: { content }, finish_reason: null }],
    })
  }\n\n`;
const FAILED = `data: ${JSON.stringify({ error: STREAM_FAILURE })}\n\n`;
const TOO_LONG = `data: ${JSON.stringify({ error: STREAM_TOO_LONG })}\n\n`;

/** The audit row of a request, once recorded. */
async function auditRow(t: TestRouter, mgmt: string, res: Response) {
  await t.router.flush();
  return await json(await t.call(mgmt, "GET", `/v1/audit/${res.headers.get("x-request-id")}`), 200);
}

const ask = (content: string, stream: boolean) => ({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content }],
  stream,
  max_tokens: 1000,
});

Deno.test("an unterminated 64 MB SSE event ends the stream at MAX_SSE_EVENT_BYTES, billed for what went out, while another request is served", async () => {
  let reached!: () => void;
  const midEvent = new Promise<void>((r) => reached = r);
  let resume!: () => void;
  const resumed = new Promise<void>((r) => resume = r);
  let stats = { sent: 0, cancelled: false };
  const delivered = chunkEvent("Hello ") + chunkEvent("world");
  const upstream = serveLoopback(async (req) => {
    const body = await req.json();
    if (!body.stream) {
      return Response.json({
        choices: [{
          index: 0,
          message: { role: "assistant", content: "ok" },
          finish_reason: "stop",
        }],
        usage: { prompt_tokens: 5, completion_tokens: 1 },
      });
    }
    // Two events, then one that never ends: 64 MiB of its text, then the connection closes.
    const piece = enc.encode("a".repeat(64 * 1024));
    function* parts(): Generator<Uint8Array | Promise<Uint8Array>> {
      yield enc.encode(delivered + 'data: {"choices":[{"index":0,"delta":{"content":"');
      for (let i = 0; i < 1024; i++) {
        // A megabyte into the event, the upstream waits until the other request was answered.
        if (i === 16) {
          reached();
          yield resumed.then(() => piece);
        } else yield piece;
      }
    }
    const s = countedStream(parts());
    stats = s.stats;
    return new Response(s.body, { headers: { "content-type": "text/event-stream" } });
  });
  const t = await startRouter({ env: { OPENAI_BASE_URL: `${upstream.origin}/v1` } });
  try {
    const { key, mgmt } = await t.account("1");
    const streamed = await t.call(key, "POST", "/v1/chat/completions", ask("stream", true));
    assert.equal(streamed.status, 200);
    const text = streamed.text();
    await midEvent;
    const other = await json(
      await t.call(key, "POST", "/v1/chat/completions", ask("hi", false)),
      200,
    );
    assert.equal(other.choices[0].message.content, "ok");
    resume();

    const body = await text;
    assert.ok(body.length < MiB, `${body.length} characters came: the unfinished event went out`);
    assert.equal(body, delivered + FAILED, "what went out, then the error event");
    assert.ok(stats.cancelled, "the upstream is let go");
    assert.ok(stats.sent < 64 * MiB, `read ${stats.sent} bytes, not the whole event`);
    const row = await auditRow(t, mgmt, streamed);
    assert.equal(row.error_code, "upstream_stream_failed");
    assert.equal(row.completion_tokens, countStreamedOutput(delivered, o200k));
    assert.ok(row.cost !== "0", "billed");
    await t.assertBooks();
  } finally {
    await t.close();
    await upstream.close();
  }
});

Deno.test("MAX_STREAM_MS ends a stream with an error event and settles its hold, also when the client stopped reading", async (ctx) => {
  const t = await startProviders({ env: { MAX_STREAM_MS: "300", HOLD_TTL_MS: "1000" } });
  try {
    const { key, mgmt } = await t.account("1");
    await ctx.step("a client reading", async () => {
      // A thousand chunks 20 ms apart: twenty seconds of stream, cut at 0.3.
      t.openai.scenario = { content: "abcd".repeat(1000), chunks: 1000, chunkDelayMs: 20 };
      const res = await t.call(key, "POST", "/v1/chat/completions", ask("stream", true));
      const text = await res.text();
      assert.ok(text.endsWith(TOO_LONG), text.slice(-300));
      const row = await auditRow(t, mgmt, res);
      assert.equal(row.error_code, "stream_too_long");
      assert.equal(
        row.completion_tokens,
        countStreamedOutput(text.slice(0, -TOO_LONG.length), o200k),
      );
      assert.ok(row.completion_tokens > 0);
      assert.equal(t.router.svc.actors.liveHolds.size, 0, "no hold left to renew");
    });
    await ctx.step("a client that stopped reading", async () => {
      // Chunks of 64 KiB as fast as they go, to a client that reads none: once the sockets are
      // full nothing pulls the stream, and the deadline ends it from its timer.
      t.openai.scenario = { content: "z".repeat(64 * MiB), chunks: 1024 };
      const res = await t.call(key, "POST", "/v1/chat/completions", ask("stream", true));
      assert.equal(res.status, 200);
      let row = null;
      for (let i = 0; i < 200 && !row; i++) {
        await new Promise((r) => setTimeout(r, 50));
        await t.router.flush();
        const found = await t.call(mgmt, "GET", `/v1/audit/${res.headers.get("x-request-id")}`);
        row = found.status === 200 ? await found.json() : (await found.body?.cancel(), null);
      }
      assert.equal(row?.error_code, "stream_too_long", "settled while the client reads nothing");
      assert.equal(t.router.svc.actors.liveHolds.size, 0, "no hold left to renew");
      await res.body?.cancel();
    });
    await ctx.step("Messages to an OpenAI model, translated, past MAX_STREAM_MS", async () => {
      t.openai.scenario = { content: "abcd".repeat(500), chunks: 500, chunkDelayMs: 20 };
      const res = await t.call(key, "POST", "/v1/messages", {
        model: "gpt-4o-mini",
        max_tokens: 100,
        stream: true,
        messages: [{ role: "user", content: "x" }],
      });
      const text = await res.text();
      const last = `event: error\ndata: ${
        JSON.stringify({ type: "error", error: STREAM_TOO_LONG })
      }\n\n`;
      assert.ok(text.endsWith(last), text.slice(-300));
      const row = await auditRow(t, mgmt, res);
      assert.equal(row.error_code, "stream_too_long");
      assert.ok(row.completion_tokens > 0, "billed for what went out");
    });
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("translated streams and native Messages are held to MAX_SSE_EVENT_BYTES too", async (ctx) => {
  const t = await startProviders({ env: { MAX_SSE_EVENT_BYTES: "1024" } });
  try {
    const { key, mgmt } = await t.account("1");
    const big = "b".repeat(2000);
    // Each upstream sends its text in one event of 2,000 characters: the stream ends with the
    // format's error event, and as nothing was produced before it, nothing is billed.
    const cut = async (path: string, body: unknown, last: string) => {
      const res = await t.call(key, "POST", path, body);
      assert.equal(res.status, 200);
      const text = await res.text();
      assert.ok(text.endsWith(last), text.slice(-300));
      const row = await auditRow(t, mgmt, res);
      assert.deepEqual([row.status, row.error_code], [502, "upstream_error"]);
    };
    const messages = {
      model: "claude-haiku-4-5",
      max_tokens: 100,
      stream: true,
      messages: [{ role: "user", content: "x" }],
    };
    t.anthropic.scenario = { content: big, chunks: 1 };
    t.gemini.scenario = { content: big, chunks: 1 };
    await ctx.step("from Anthropic, translated", async () => {
      await cut("/v1/chat/completions", { ...ask("x", true), model: "claude-haiku-4-5" }, FAILED);
    });
    await ctx.step("from Gemini, translated", async () => {
      await cut("/v1/chat/completions", { ...ask("x", true), model: "gemini-2.5-flash" }, FAILED);
    });
    await ctx.step("native Messages", async () => {
      const error = { type: "error", error: STREAM_FAILURE };
      await cut("/v1/messages", messages, `event: error\ndata: ${JSON.stringify(error)}\n\n`);
    });
    assert.equal(t.router.svc.actors.liveHolds.size, 0);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an SSE event nested past MAX_JSON_DEPTH is passed on unread: the stream is billed for the rest and its hold settled", async () => {
  // Counting the output of a stream without usage walked each delta recursively: an event nested
  // 50,000 deep overflowed the stack as the stream ended, which left it unbilled and its hold
  // renewed for as long as the process ran.
  const deep = chunkEvent("x").replace('"x"', "[".repeat(50_000) + '"x"' + "]".repeat(50_000));
  const sent = chunkEvent("Hello ") + deep + chunkEvent("world") + "data: [DONE]\n\n";
  const upstream = serveLoopback(() =>
    new Response(sent, { headers: { "content-type": "text/event-stream" } })
  );
  const t = await startRouter({ env: { OPENAI_BASE_URL: `${upstream.origin}/v1` } });
  try {
    const { key, mgmt } = await t.account("1");
    const res = await t.call(key, "POST", "/v1/chat/completions", ask("hi", true));
    assert.equal(res.status, 200);
    assert.equal(await res.text(), sent);
    const row = await auditRow(t, mgmt, res);
    assert.deepEqual([row.error_code, row.completion_tokens], [
      "usage_missing",
      countStreamedOutput(chunkEvent("Hello ") + chunkEvent("world"), o200k),
    ]);
    assert.ok(Number(row.cost) > 0, "billed");
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0", "no hold left");
    await t.assertBooks();
  } finally {
    await t.close();
    await upstream.close();
  }
});

Deno.test("an event within a MAX_SSE_EVENT_BYTES raised past its default is counted when the stream ends without usage: billed, its hold settled", async () => {
  // The tap passes events up to the configured maximum; counting what a cut stream delivered must
  // take them too, or the stream ends unbilled with its hold renewed for as long as the process runs.
  const padded = chunkEvent("Hello ").replace(
    '"finish_reason"',
    `"pad":"${"p".repeat(17 * MiB)}","finish_reason"`,
  );
  const sent = padded + chunkEvent("world");
  const upstream = serveLoopback(() =>
    new Response(sent, { headers: { "content-type": "text/event-stream" } })
  );
  const t = await startRouter({
    env: { OPENAI_BASE_URL: `${upstream.origin}/v1`, MAX_SSE_EVENT_BYTES: String(32 * MiB) },
  });
  try {
    const { key, mgmt } = await t.account("1");
    const res = await t.call(key, "POST", "/v1/chat/completions", ask("hi", true));
    assert.equal(res.status, 200);
    const got = await res.text();
    assert.equal(got.length, sent.length, got.slice(0, 200));
    const row = await auditRow(t, mgmt, res);
    assert.deepEqual([row.error_code, row.completion_tokens], [
      "usage_missing",
      countStreamedOutput(chunkEvent("Hello ") + chunkEvent("world"), o200k),
    ]);
    assert.equal(t.router.svc.actors.liveHolds.size, 0, "no hold left to renew");
    await t.assertBooks();
  } finally {
    await t.close();
    await upstream.close();
  }
});

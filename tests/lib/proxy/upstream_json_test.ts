/** A JSON reply longer than `MAX_UPSTREAM_BODY_BYTES` is an upstream failure, read no further. */
import assert from "node:assert/strict";
import { json, startRouter, type TestRouter } from "../../_helpers.ts";
import { countedStream, serveLoopback } from "../../_fakes/serve.ts";
import { MAX_JSON_DEPTH } from "../../../lib/json.ts";

const enc = new TextEncoder();
const MiB = 1024 * 1024;

/** A chat completion reply whose JSON text is exactly `bytes` long (padded with spaces). */
function completionOf(bytes: number): string {
  const body = JSON.stringify({
    id: "chatcmpl-1",
    object: "chat.completion",
    created: 1,
    model: "gpt-4o-mini",
    choices: [{ index: 0, message: { role: "assistant", content: "ok" }, finish_reason: "stop" }],
    usage: { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6 },
  });
  return body + " ".repeat(bytes - body.length);
}

/** A 502 with `message`, audited at cost 0: the hold released. */
async function upstreamFailed(t: TestRouter, mgmt: string, res: Response, message: string) {
  assert.deepEqual(await json(res, 502), {
    error: { message, type: "api_error", code: "upstream_error" },
  });
  await t.router.flush();
  const id = res.headers.get("x-request-id");
  const row = await json(await t.call(mgmt, "GET", `/v1/audit/${id}`), 200);
  assert.deepEqual([row.status, row.error_code, row.cost], [502, "upstream_error", "0"]);
}

const ask = (content: string) => ({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content }],
  max_tokens: 1000,
});

Deno.test("a JSON reply over MAX_UPSTREAM_BODY_BYTES is a 502 with the hold released, read no further than the limit", async () => {
  const stats: { sent: number; cancelled: boolean }[] = [];
  const upstream = serveLoopback(async (req) => {
    const body = await req.json();
    const what = body.messages[0].content;
    // Declared: a Content-Length over the limit. Otherwise chunked, without a length.
    if (what === "declared") return new Response(completionOf(100_000));
    // "long": 96 MiB, a megabyte reply over and over (never read to its end).
    const size = what === "exact" ? 4096 : what === "one over" ? 4097 : 96 * MiB;
    const part = enc.encode(completionOf(Math.min(size, MiB)));
    const s = countedStream(Array(size / part.length).fill(part).values());
    stats.push(s.stats);
    return new Response(s.body, { headers: { "content-type": "application/json" } });
  });
  const t = await startRouter({
    env: { OPENAI_BASE_URL: `${upstream.origin}/v1`, MAX_UPSTREAM_BODY_BYTES: "4096" },
  });
  try {
    const { key, mgmt } = await t.account("1");
    const exact = await t.call(key, "POST", "/v1/chat/completions", ask("exact"));
    assert.equal((await json(exact, 200)).choices[0].message.content, "ok");
    for (const what of ["one over", "declared", "long"]) {
      const res = await t.call(key, "POST", "/v1/chat/completions", ask(what));
      await upstreamFailed(t, mgmt, res, "The provider's reply is too large");
    }
    const long = stats.at(-1)!;
    assert.ok(long.cancelled, "the reply's body is let go");
    assert.ok(long.sent < 32 * MiB, `read ${long.sent} bytes of 96 MiB`);
    await t.assertBooks();
  } finally {
    await t.close();
    await upstream.close();
  }
});

Deno.test("a JSON reply nested past MAX_JSON_DEPTH is a 502 with the hold released; one at it is served", async () => {
  // A reply nested thousands deep overflowed the stack where the router walks it (counting the
  // output of a reply without usage): a 500.
  const nest = (d: number) => "[".repeat(d) + '"١٢٣"' + "]".repeat(d);
  const upstream = serveLoopback(async (req) => {
    const body = await req.json();
    // The depth of the whole reply, asked for as the prompt.
    const depth = Number(body.messages[0].content);
    const text = req.url.endsWith("/count_tokens")
      ? `{"input_tokens":3,"extra":${nest(depth - 1)}}`
      : `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini",` +
        `"choices":[{"index":0,"message":{"role":"assistant","content":"ok","extra":${
          nest(depth - 4)
        }},"finish_reason":"stop"}]}`;
    return new Response(text, { headers: { "content-type": "application/json" } });
  });
  const t = await startRouter({
    env: {
      OPENAI_BASE_URL: `${upstream.origin}/v1`,
      ANTHROPIC_BASE_URL: upstream.origin,
      ANTHROPIC_API_KEY: "sk-ant-test",
    },
  });
  try {
    const { key, mgmt } = await t.account("1");
    const at = await t.call(key, "POST", "/v1/chat/completions", ask(String(MAX_JSON_DEPTH)));
    const served = await json(at, 200);
    assert.equal(served.choices[0].message.content, "ok");
    assert.ok(served.usage.completion_tokens > 0, "counted by the router");
    for (const depth of [MAX_JSON_DEPTH + 1, 50_000]) {
      const res = await t.call(key, "POST", "/v1/chat/completions", ask(String(depth)));
      await upstreamFailed(t, mgmt, res, "The provider's reply nests too deep");
    }
    // Anthropic's token count is read the same way (and neither held nor billed).
    const count = await t.call(key, "POST", "/v1/messages/count_tokens", {
      model: "claude-haiku-4-5",
      messages: [{ role: "user", content: "50000" }],
    });
    assert.equal(count.status, 502);
    assert.equal((await count.json()).error.code, "upstream_error");
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
    await upstream.close();
  }
});

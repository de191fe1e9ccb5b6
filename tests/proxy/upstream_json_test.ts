/** A JSON reply longer than `MAX_UPSTREAM_BODY_BYTES` is an upstream failure, read no further. */
import assert from "node:assert/strict";
import { json, startRouter } from "../_helpers.ts";
import { countedStream, serveLoopback } from "../_fakes/serve.ts";

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
      assert.deepEqual(await json(res, 502), {
        error: {
          message: "The provider's reply is too large",
          type: "api_error",
          code: "upstream_error",
        },
      });
      await t.router.flush();
      const id = res.headers.get("x-request-id");
      const row = await json(await t.call(mgmt, "GET", `/v1/audit/${id}`), 200);
      assert.deepEqual([row.status, row.error_code, row.cost], [502, "upstream_error", "0"]);
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

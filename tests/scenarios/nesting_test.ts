/**
 * JSON.parse takes a body nested any depth, but the router writes bodies out again (to the
 * provider, to the client) and JSON.stringify can overflow the stack a few thousand levels down:
 * a 500. Bodies nested past MAX_JSON_DEPTH are refused up front.
 */
import assert from "node:assert/strict";
import { json } from "../_helpers.ts";
import { startProviders } from "../_providers.ts";
import { MAX_JSON_DEPTH } from "../../lib/json.ts";

/** Arrays `d` deep around a non-ASCII text (which sends JSON.stringify down its slow path). */
const arrays = (d: number) => "[".repeat(d) + '"١٢٣"' + "]".repeat(d);
const objects = (d: number) => '{"a":'.repeat(d) + '"١٢٣"' + "}".repeat(d);

Deno.test("a body nested past MAX_JSON_DEPTH is 400 on every JSON endpoint, one at it is read", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    // A token count for Anthropic sent this body on with JSON.stringify, which overflowed: 500.
    const mixed = `["١٢٣",${"[".repeat(20_000)}${"]".repeat(20_000)}]`;
    const counted = await t.call(
      key,
      "POST",
      "/v1/messages/count_tokens",
      `{"model":"anthropic/claude-haiku-4-5","messages":[{"role":"user","content":${mixed}}]}`,
    );
    assert.equal((await json(counted, 400)).error.code, "invalid_request");
    // For another provider's model the router's estimate walked the content recursively: 500.
    const estimated = await t.call(
      key,
      "POST",
      "/v1/messages/count_tokens",
      `{"model":"gpt-4o-mini","messages":[{"role":"user","content":${arrays(20_000)}}]}`,
    );
    assert.equal((await json(estimated, 400)).error.code, "invalid_request");
    // `x` sits at depth 1 of the body: its value may nest MAX_JSON_DEPTH - 1 more.
    const body = (model: string, x: string) =>
      `{"model":"${model}","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"x":${x}}`;
    for (const nest of [arrays, objects]) {
      for (
        const path of ["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"]
      ) {
        for (const model of ["gpt-4o-mini", "claude-haiku-4-5", "google/gemini-2.5-flash"]) {
          for (const depth of [MAX_JSON_DEPTH, 5_000, 50_000]) {
            const res = await t.call(key, "POST", path, body(model, nest(depth)));
            const err = (await json(res, 400)).error;
            assert.equal(err.code, "invalid_request", `${path} ${model} ${depth}`);
            assert.match(err.message, /nests/);
          }
        }
      }
      const embed = `{"model":"text-embedding-3-small","input":"x","x":${nest(5_000)}}`;
      await json(await t.call(key, "POST", "/v1/embeddings", embed), 400);
      const resp = `{"model":"gpt-4o-mini","input":"x","x":${nest(5_000)}}`;
      await json(await t.call(key, "POST", "/v1/responses", resp), 400);
      await json(await t.call(mgmt, "POST", "/v1/keys", `{"name":${nest(5_000)}}`), 400);
      await json(await t.admin("POST", "/v1/admin/accounts", `{"name":${nest(5_000)}}`), 400);
    }
    // At the bound the body is read (and forwarded) as any other.
    const res = await t.call(
      key,
      "POST",
      "/v1/messages/count_tokens",
      body("claude-haiku-4-5", arrays(MAX_JSON_DEPTH - 1)),
    );
    assert.ok((await json(res, 200)).input_tokens > 0);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

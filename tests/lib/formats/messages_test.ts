import assert from "node:assert/strict";
import { messages, messagesReducer } from "../../../lib/formats/messages.ts";
import { ZERO_USAGE } from "../../../lib/pricing.ts";
import { contextOf } from "../../../lib/proxy/tokens.ts";
import { model, reduce, rendered, sse, unbounded } from "./_reduce.ts";

const start = (usage: Record<string, unknown>) =>
  sse({
    type: "message_start",
    message: { id: "msg_1", type: "message", role: "assistant", content: [], usage },
  }, "message_start");
const text = (t: string) =>
  sse(
    { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: t } },
    "content_block_delta",
  );
const delta = (usage: Record<string, unknown>) =>
  sse({ type: "message_delta", delta: { stop_reason: "end_turn" }, usage }, "message_delta");
const stop = sse({ type: "message_stop" }, "message_stop");
const searchResult = (id: string, content: unknown) =>
  sse({
    type: "content_block_start",
    index: 1,
    content_block: { type: "web_search_tool_result", tool_use_id: id, content },
  }, "content_block_start");
const native = { translated: false, searches: 20, bounded: unbounded };

Deno.test("messagesReducer: message_delta's cumulative usage is final, with message_start's input", () => {
  const r = reduce(messagesReducer(native), [
    start({ input_tokens: 25, cache_read_input_tokens: 5, output_tokens: 1 }),
    text("hi"),
    delta({ output_tokens: 15 }),
    stop,
  ]);
  assert.equal(r.final.length, 1);
  assert.deepEqual(r.final[0].usage, { ...ZERO_USAGE, prompt: 30, cached: 5, completion: 15 });
  // The delta shows the charge; message_start passed as sent (within the hold).
  const shown = JSON.parse(rendered(r.final[0])!.split("data: ")[1]);
  assert.equal(shown.usage.cost, 0.0015);
  assert.match(rendered(r.final[0])!, /^event: message_delta\n/);
  assert.equal(r.steps[0].out, undefined);
  assert.equal(r.steps[0].usage, undefined, "message_start's output (1) is no running count");
});

Deno.test("messagesReducer: message_start beyond the hold is shown clamped", () => {
  const bounded = (u: typeof ZERO_USAGE) => ({ ...u, prompt: Math.min(u.prompt, 100) });
  const r = reduce(messagesReducer({ ...native, bounded }), [start({ input_tokens: 5_000_000 })]);
  const shown = JSON.parse((r.steps[0].out as string).split("data: ")[1]);
  assert.equal(shown.message.usage.input_tokens, 100);
});

Deno.test("messagesReducer: a translated message_delta without input_tokens is not final (the router counts)", () => {
  const translated = reduce(messagesReducer({ ...native, translated: true }), [
    start({ input_tokens: 0, output_tokens: 0 }),
    text("hi"),
    delta({ output_tokens: 0 }),
  ]);
  assert.equal(translated.final.length, 0);
  const counted = reduce(messagesReducer({ ...native, translated: true }), [
    delta({ input_tokens: 9, output_tokens: 3 }),
  ]);
  assert.equal(counted.final[0].usage?.prompt, 9);
});

Deno.test("messagesReducer: a stream cut before message_delta keeps its input and the searches whose results came", () => {
  const r = reduce(messagesReducer(native), [
    start({ input_tokens: 40, output_tokens: 1 }),
    searchResult("srv_1", [{ type: "web_search_result", url: "https://a.example" }]),
    searchResult("srv_1", [{ type: "web_search_result", url: "https://a.example" }]),
    // A failed search (its result an error object) is not billed.
    searchResult("srv_2", { type: "web_search_tool_result_error", error_code: "unavailable" }),
    searchResult("srv_3", []),
    text("partial"),
  ]);
  assert.equal(r.final.length, 0);
  assert.deepEqual(r.state.searched, ["srv_1", "srv_3"]);
  assert.deepEqual(r.state.started, { input_tokens: 40, output_tokens: 1 });
});

Deno.test("messagesReducer: an error event is a failure, and nothing after the final usage counts", () => {
  const failed = reduce(messagesReducer(native), [
    start({ input_tokens: 4 }),
    sse({ type: "error", error: { type: "overloaded_error", message: "m" } }, "error"),
  ]);
  assert.deepEqual(failed.steps.map((s) => s.failed ?? false), [false, true]);
  const after = reduce(messagesReducer(native), [
    delta({ input_tokens: 4, output_tokens: 2 }),
    sse({ type: "error", error: {} }, "error"),
    delta({ input_tokens: 4, output_tokens: 9 }),
  ]);
  assert.equal(after.final.length, 1);
  assert.ok(after.steps.slice(1).every((s) => !s.failed && !s.usage));
});

Deno.test("messagesReducer: a message_delta repeated after the final one shows the same bill, not its own figures", () => {
  const r = reduce(messagesReducer(native), [
    delta({ input_tokens: 4, output_tokens: 2 }),
    delta({ input_tokens: 4, output_tokens: 90_000_000 }),
  ]);
  assert.equal(r.final.length, 1);
  const usage = (i: number) => JSON.parse(rendered(r.steps[i])!.split("data: ")[1]).usage;
  assert.deepEqual(usage(1), usage(0));
  assert.equal(usage(1).output_tokens, 5, "BILLED's output");
});

Deno.test("messagesReducer: a stream without usage reports none", () => {
  const r = reduce(messagesReducer(native), [text("a"), text("b"), stop]);
  assert.ok(r.steps.every((s) => !s.usage && !s.final && !s.failed));
});

Deno.test("messages: a cut native stream bills Anthropic's input count and a context window per search", async () => {
  const raw = JSON.stringify({
    model: "anthropic/claude-haiku-4-5",
    max_tokens: 100,
    messages: [{ role: "user", content: "news?" }],
    tools: [{ type: "web_search_20250305", name: "web_search" }],
    stream: true,
  });
  const m = model("anthropic/claude-haiku-4-5");
  const req = messages.request(raw, JSON.parse(raw));
  const billed = req.events!(m, new ReadableStream(), { maxEventBytes: 1024, bounded: unbounded });
  const r = reduce(billed.reducer, [
    start({ input_tokens: 40, output_tokens: 1 }),
    searchResult("srv_1", []),
  ]);
  const usage = billed.unfinished(r.state, (s) => s.length);
  assert.deepEqual(usage, {
    ...ZERO_USAGE,
    prompt: 40 + contextOf(m),
    completion: 0,
    webSearches: 1,
  });
  await billed.body.cancel();
});

Deno.test("messagesReducer: a provider reporting searches past the hold's bound is kept to one past it", () => {
  // Each id a distinct string as long as an event allows: kept all, they grew without bound.
  const results = Array.from(
    { length: 1000 },
    (_, i) => searchResult(`srv_${i}_${"x".repeat(1000)}`, []),
  );
  const r = reduce(messagesReducer({ ...native, searches: 2 }), results);
  assert.equal(r.state.searched.length, 3);
});

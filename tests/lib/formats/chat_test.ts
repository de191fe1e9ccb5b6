import assert from "node:assert/strict";
import { chat, chatReducer } from "../../../lib/formats/chat.ts";
import { ZERO_USAGE } from "../../../lib/pricing.ts";
import { model, reduce, rendered, sse, unbounded } from "./_reduce.ts";

const head = { id: "c1", object: "chat.completion.chunk", model: "m" };
const content = (text: string, finish: string | null = null) =>
  sse({ ...head, choices: [{ index: 0, delta: { content: text }, finish_reason: finish }] });
const USAGE = { prompt_tokens: 12, completion_tokens: 7, total_tokens: 19 };
const rules = { n: 1, wantsUsage: true, searches: 0, bounded: unbounded };

Deno.test("chatReducer: the usage chunk after the finishing one is final, shown with the charge", () => {
  const usageChunk = sse({ ...head, choices: [], usage: USAGE });
  const r = reduce(chatReducer(rules), [content("hi"), content("", "stop"), usageChunk]);
  assert.equal(r.final.length, 1);
  assert.equal(r.steps.indexOf(r.final[0]), 2, "final on the usage chunk");
  assert.deepEqual(r.final[0].usage, { ...ZERO_USAGE, prompt: 12, completion: 7 });
  assert.ok(r.state.final);
  const shown = JSON.parse(rendered(r.final[0])!.slice(6));
  assert.equal(shown.usage.cost, 0.0015);
  assert.equal(shown.usage.market_cost, 0.002);
  // Without include_usage the client gets no usage chunk at all.
  const quiet = reduce(chatReducer({ ...rules, wantsUsage: false }), [usageChunk]);
  assert.equal(rendered(quiet.final[0]), null);
});

Deno.test("chatReducer: a usage chunk repeated after the final one shows the same bill, once billed", () => {
  const usageChunk = sse({ ...head, choices: [], usage: USAGE });
  const r = reduce(chatReducer(rules), [usageChunk, usageChunk]);
  assert.equal(r.final.length, 1, "only the first is final");
  assert.equal(r.steps[1].usage, undefined, "the repeat reports nothing to bill");
  assert.deepEqual(rendered(r.steps[1]), rendered(r.steps[0]));
});

Deno.test("chatReducer: usage on the last content chunk is final when it finishes the only choice", () => {
  const running = (text: string, n: number, finish: string | null = null) =>
    sse({
      ...head,
      choices: [{ index: 0, delta: { content: text }, finish_reason: finish }],
      usage: { prompt_tokens: 12, completion_tokens: n },
    });
  const events = [running("a", 1), running("b", 2), running("c", 3, "stop")];
  const r = reduce(chatReducer(rules), events);
  assert.deepEqual(r.steps.map((s) => [s.final ?? false, s.usage?.completion]), [
    [false, 1],
    [false, 2],
    [true, 3],
  ]);
  // Running counts pass as sent when within the hold (undefined: unchanged), and without their
  // usage when the client did not ask for it; the final one keeps its content.
  assert.equal(r.steps[0].out, undefined);
  const quiet = reduce(chatReducer({ ...rules, wantsUsage: false }), events);
  assert.equal(JSON.parse((quiet.steps[0].out as string).slice(6)).usage, undefined);
  assert.equal(JSON.parse(rendered(quiet.final[0])!.slice(6)).choices[0].delta.content, "c");
  // With two choices a finished chunk is not the end: the usage is not final yet.
  assert.equal(reduce(chatReducer({ ...rules, n: 2 }), events).final.length, 0);
});

Deno.test("chatReducer: a running count beyond the hold is shown clamped", () => {
  const bounded = (u: typeof ZERO_USAGE) => ({ ...u, completion: Math.min(u.completion, 4) });
  const big = sse({
    ...head,
    choices: [{ index: 0, delta: { content: "x" }, finish_reason: null }],
    usage: { prompt_tokens: 12, completion_tokens: 1_000_000 },
  });
  const r = reduce(chatReducer({ ...rules, bounded }), [big]);
  assert.equal(JSON.parse((r.steps[0].out as string).slice(6)).usage.completion_tokens, 4);
  assert.equal(r.steps[0].usage?.completion, 1_000_000, "kept as reported: the metering clamps");
});

Deno.test("chatReducer: a cut stream has no final usage; its latest running count is reported", () => {
  const r = reduce(chatReducer(rules), [
    content("a"),
    sse({
      ...head,
      choices: [{ index: 0, delta: { content: "b" } }],
      usage: { completion_tokens: 2 },
    }),
    content("c"),
  ]);
  assert.equal(r.final.length, 0);
  assert.equal(r.state.final, false);
  assert.equal(r.steps.findLast((s) => s.usage)?.usage?.completion, 2);
});

Deno.test("chatReducer: an error chunk is a failure; the word in a reply is not", () => {
  const r = reduce(chatReducer(rules), [
    content('the "error" key'),
    sse({ error: { message: "overloaded", type: "api_error" } }),
  ]);
  assert.deepEqual(r.steps.map((s) => s.failed ?? false), [false, true]);
  assert.equal(r.final.length, 0);
});

Deno.test("chatReducer: a final usage chunk that carries an error is final and a failure", () => {
  const r = reduce(chatReducer(rules), [
    content("partial"),
    sse({ ...head, choices: [], usage: USAGE, error: { message: "overloaded" } }),
  ]);
  assert.equal(r.final.length, 1);
  assert.equal(r.final[0].failed, true, "audited upstream_stream_failed, billed its usage");
  assert.deepEqual(r.final[0].usage, { ...ZERO_USAGE, prompt: 12, completion: 7 });
});

Deno.test("chatReducer: a stream without usage reports none", () => {
  const r = reduce(chatReducer(rules), [content("a"), content("b", "stop"), "data: [DONE]"]);
  assert.ok(r.steps.every((s) => s.usage === undefined && !s.final && s.out === undefined));
});

Deno.test("chat: a search model's final usage counts its search", () => {
  const r = reduce(chatReducer({ ...rules, searches: 1 }), [
    sse({ ...head, choices: [], usage: USAGE }),
  ]);
  assert.equal(r.final[0].usage?.webSearches, 1);
});

Deno.test("chat: a stream cut before its usage is billed the prompt as the router counts it", async () => {
  const raw = JSON.stringify({
    model: "openai/gpt-4o-mini",
    messages: [{ role: "user", content: "hello there" }],
    stream: true,
  });
  const m = model("openai/gpt-4o-mini");
  const req = chat.request(raw, JSON.parse(raw));
  const billed = req.events!(m, new ReadableStream(), { maxEventBytes: 1024, bounded: unbounded });
  const count = (s: string) => s.length;
  const usage = billed.unfinished(billed.reducer.init, count);
  assert.deepEqual(usage, req.prompt.count(m, count));
  assert.ok(usage.prompt > 0);
  await billed.body.cancel();
});

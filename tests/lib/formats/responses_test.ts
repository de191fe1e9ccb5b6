import assert from "node:assert/strict";
import { responses, responsesReducer } from "../../../lib/formats/responses.ts";
import { ZERO_USAGE } from "../../../lib/pricing.ts";
import { model, reduce, rendered, sse, unbounded } from "./_reduce.ts";

const USAGE = {
  input_tokens: 30,
  input_tokens_details: { cached_tokens: 10 },
  output_tokens: 12,
  output_tokens_details: { reasoning_tokens: 4 },
  total_tokens: 42,
};
const searchCall = (id: string) => ({ type: "web_search_call", id, status: "completed" });
const done = (item: unknown, i = 0) =>
  sse({ type: "response.output_item.done", output_index: i, item });
const delta = (t: string) => sse({ type: "response.output_text.delta", delta: t });
const final = (type: string, usage: unknown, output: unknown[] = []) =>
  sse({ type, response: { id: "resp_1", status: "completed", output, usage } });

Deno.test("responsesReducer: response.completed carries the final usage, its search calls counted", () => {
  const output = [searchCall("ws_1"), searchCall("ws_2"), { type: "message" }];
  const r = reduce(responsesReducer(20), [
    sse({ type: "response.created", response: { id: "resp_1", usage: null } }),
    delta("hi"),
    final("response.completed", USAGE, output),
  ]);
  assert.equal(r.final.length, 1);
  assert.deepEqual(r.final[0].usage, {
    ...ZERO_USAGE,
    prompt: 30,
    cached: 10,
    completion: 12,
    reasoning: 4,
    webSearches: 2,
  });
  assert.ok(!r.final[0].failed);
  const shown = JSON.parse(rendered(r.final[0])!.slice(6));
  assert.equal(shown.response.usage.cost, 0.0015);
});

Deno.test("responsesReducer: a response.completed repeated after the final one shows the same bill, not its own figures", () => {
  const r = reduce(responsesReducer(20), [
    final("response.completed", USAGE),
    final("response.completed", { ...USAGE, output_tokens: 90_000_000 }),
  ]);
  assert.equal(r.final.length, 1);
  assert.equal(r.steps[1].usage, undefined, "the repeat reports nothing to bill");
  const usage = (i: number) => JSON.parse(rendered(r.steps[i])!.slice(6)).response.usage;
  assert.deepEqual(usage(1), usage(0));
  assert.equal(usage(1).output_tokens, 5, "BILLED's output");
});

Deno.test("responsesReducer: the usage of the last event (.incomplete, .failed) is final; .failed is a failure", () => {
  const incomplete = reduce(responsesReducer(20), [final("response.incomplete", USAGE)]);
  assert.ok(incomplete.final[0] && !incomplete.final[0].failed);
  const failed = reduce(responsesReducer(20), [final("response.failed", USAGE)]);
  assert.ok(failed.final[0].failed);
});

Deno.test("responsesReducer: a cut stream keeps the web searches done, each once", () => {
  const r = reduce(responsesReducer(20), [
    done(searchCall("ws_1")),
    done(searchCall("ws_1")),
    done({ type: "message", id: "m" }, 1),
    done(searchCall("ws_2"), 2),
    delta("par"),
  ]);
  assert.equal(r.final.length, 0);
  assert.deepEqual(r.state.searched, ["ws_1", "ws_2"]);
});

Deno.test("responsesReducer: an error event is a failure", () => {
  const r = reduce(responsesReducer(20), [
    delta('"error"'),
    sse({ type: "error", code: "server_error", message: "m" }),
  ]);
  assert.deepEqual(r.steps.map((s) => s.failed ?? false), [false, true]);
  assert.equal(r.final.length, 0);
});

Deno.test("responsesReducer: a final event without usage reports none", () => {
  const r = reduce(responsesReducer(20), [delta("a"), final("response.completed", null)]);
  assert.ok(r.steps.every((s) => !s.usage && !s.final));
});

Deno.test("responses: a cut stream bills the prompt as counted and a context window per search done", async () => {
  const raw = JSON.stringify({
    model: "openai/gpt-4o-mini",
    input: "news?",
    tools: [{ type: "web_search" }],
    stream: true,
  });
  const m = model("openai/gpt-4o-mini");
  const req = responses.request(raw, JSON.parse(raw));
  const billed = req.events!(m, new ReadableStream(), { maxEventBytes: 1024, bounded: unbounded });
  const r = reduce(billed.reducer, [done(searchCall("ws_1"))]);
  const count = (s: string) => s.length;
  assert.deepEqual(
    billed.unfinished(r.state, count),
    { ...req.prompt.count(m, count, 1), webSearches: 1 },
  );
  await billed.body.cancel();
});

Deno.test("responsesReducer: a provider reporting searches past the hold's bound is kept to one past it", () => {
  // Each id a distinct string as long as an event allows: kept all, they grew without bound.
  const calls = Array.from(
    { length: 1000 },
    (_, i) => done(searchCall(`ws_${i}_${"x".repeat(1000)}`), i),
  );
  const r = reduce(responsesReducer(2), calls);
  assert.equal(r.state.searched.length, 3);
});

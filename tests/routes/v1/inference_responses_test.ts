import assert from "node:assert/strict";
import OpenAI from "openai";
import { json, padding, startRouter } from "../../_helpers.ts";
import { encodingCounter } from "../../../lib/tokenizer.ts";

// o3-mini list prices ($/M): input 1.10, cached input 0.55, output 4.40 (reasoning is output).
// Usage: 2000 input tokens of which 1000 cached, 500 output tokens of which 300 reasoning.
// market = 1000×1.10 + 1000×0.55 + 500×4.40 = 1100 + 550 + 2200 = 3850 µ$ = $0.00385
// (3 850 000 nano-USD); 20 % off = $0.00308.
const USAGE = {
  input_tokens: 2000,
  input_tokens_details: { cached_tokens: 1000 },
  output_tokens: 500,
  output_tokens_details: { reasoning_tokens: 300 },
  total_tokens: 2500,
};

Deno.test("the Responses API passes through and is billed with cached and reasoning tokens", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { responsesUsage: USAGE };
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1` });
    const res = await client.responses.create({
      model: "openai/o3-mini",
      input: "hello",
      ...padding(),
    });
    assert.equal(res.output_text, "Echo: hello");
    const usage = res.usage as unknown as Record<string, unknown>;
    assert.equal(usage.input_tokens, 2000);
    assert.equal(usage.cost, 0.00308);
    assert.equal(usage.market_cost, 0.00385);
    assert.equal(t.openai.requests[0].model, "o3-mini");
    assert.equal(t.openai.auth[0], "Bearer sk-upstream-test");

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.00308");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a Responses stream bills response.completed's usage and shows its cost", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { responsesUsage: USAGE, chunks: 4 };
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1` });
    const stream = await client.responses.create({
      model: "o3-mini",
      input: "stream me",
      stream: true,
      ...padding(),
    });
    let text = "";
    let usage: Record<string, unknown> | null = null;
    const types: string[] = [];
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === "response.output_text.delta") text += event.delta;
      if (event.type === "response.completed") {
        usage = event.response.usage as unknown as Record<string, unknown>;
      }
    }
    assert.equal(text, "Echo: stream me");
    assert.equal(types[0], "response.created");
    assert.equal(types.at(-1), "response.completed");
    assert.equal(usage?.cost, 0.00308);
    assert.equal(usage?.market_cost, 0.00385);
    assert.equal(t.openai.requests[0].stream, true);

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.00308");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a Responses stream cut mid-way is billed for what it produced, never retried", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    // response.created and two deltas ("Echo" + ": st" of "Echo: stream me" in 4 parts), then cut.
    t.openai.scenario = { responsesUsage: USAGE, chunks: 4, stallAfter: 3 };
    const body = { model: "o3-mini", input: "stream me", stream: true };
    const res = await t.call(key, "POST", "/v1/responses", body);
    assert.equal(res.status, 200);
    assert.match(await res.text(), /upstream_error/);
    assert.equal(t.openai.requests.length, 1, "no retry once bytes reached the client");
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    // Counted by the router with o3-mini's tokenizer: the body, and each of the 2 deltas
    // → at $1.10/M in and $4.40/M out, 20 % off.
    const count = await encodingCounter("o200k_base");
    const [prompt, output] = [count(JSON.stringify(body)), count("Echo") + count(": st")];
    assert.equal(credits.total_used, String((prompt * 880 + output * 3520) / 1e9));
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a Responses stream reporting a failure (error, response.failed) is audited as a failed stream", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    const failures = [
      // response.created, two deltas ("Echo", ": st"), then an `error` event.
      { responsesUsage: USAGE, chunks: 4, errorAfter: 3 },
      // The same ended by response.failed without usage.
      { chunks: 4, errorAfter: 3, responsesFailure: "response.failed" as const },
      // response.failed with the provider's usage: that usage is billed.
      {
        responsesUsage: USAGE,
        chunks: 4,
        errorAfter: 3,
        responsesFailure: "response.failed" as const,
      },
    ];
    const request = { model: "o3-mini", input: "stream me", stream: true, ...padding() };
    for (const scenario of failures) {
      t.openai.scenario = scenario;
      const res = await t.call(key, "POST", "/v1/responses", request);
      assert.equal(res.status, 200);
      const body = await res.text();
      // Passed on as the provider sent it.
      assert.match(body, scenario.responsesFailure ? /event: response.failed\n/ : /event: error\n/);
      assert.doesNotMatch(body, /upstream_error/);
      await t.router.flush();
      const row = await json(
        await t.call(mgmt, "GET", `/v1/audit/${res.headers.get("x-request-id")}`),
        200,
      );
      assert.equal(row.error_code, "upstream_stream_failed", JSON.stringify(scenario));
    }
    // Counted by the router twice (as a stream cut there), then response.failed's usage
    // (3 080 000 nano-USD).
    const count = await encodingCounter("o200k_base");
    const [prompt, output] = [count(JSON.stringify(request)), count("Echo") + count(": st")];
    const counted = prompt * 880 + output * 3520;
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, String((2 * counted + 3_080_000) / 1e9));
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a continued Responses conversation holds for the stored context and bills it all", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    // The upstream counts the stored turns: 100 000 input tokens from a tiny body (within
    // gpt-4o-mini's context window of 128 000). 100 000 × 0.15 + 100 × 0.60 = 15 060 µ$ market
    // at gpt-4o-mini's prices; 20 % off = $0.012048.
    t.openai.scenario = {
      responsesUsage: { input_tokens: 100_000, output_tokens: 100 },
    };
    const res = await json(
      await t.call(key, "POST", "/v1/responses", {
        model: "gpt-4o-mini",
        input: "and then?",
        previous_response_id: "resp_123",
        max_output_tokens: 100,
      }),
      200,
    );
    assert.equal(res.usage.cost, 0.012048);
    assert.equal(t.openai.requests[0].previous_response_id, "resp_123");
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.012048");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

import assert from "node:assert/strict";
import OpenAI from "openai";
import { json, padding, startRouter } from "../../_helpers.ts";
import { sseData } from "../../_providers.ts";
import { serveLoopback } from "../../_fakes/serve.ts";
import { encodingCounter } from "../../../lib/tokenizer.ts";

const USAGE = {
  prompt_tokens: 1000,
  completion_tokens: 200,
  prompt_tokens_details: { cached_tokens: 400 },
  completion_tokens_details: { reasoning_tokens: 50 },
};
// gpt-4o-mini list prices: input $0.15/M, cached input $0.075/M, output $0.60/M.
// market = 600 × 0.15 + 400 × 0.075 + 200 × 0.60 = 240 µ$ = $0.00024; 20 % off = $0.000192.

Deno.test("chat completion through the OpenAI SDK is priced exactly, cached tokens included", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { usage: USAGE };
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1` });
    const res = await client.chat.completions.create({
      model: "openai/gpt-4o-mini",
      ...padding(),
      messages: [{ role: "user", content: "hello" }],
    });
    assert.equal(res.choices[0].message.content, "Echo: hello");
    const usage = res.usage as unknown as Record<string, number>;
    assert.equal(usage.cost, 0.000192);
    assert.equal(usage.market_cost, 0.00024);
    assert.equal(t.openai.requests[0].model, "gpt-4o-mini");
    assert.equal(t.openai.auth[0], "Bearer sk-upstream-test");

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.deepEqual(credits, {
      balance: "0.999808",
      reserved: "0",
      available: "0.999808",
      total_purchased: "0",
      total_used: "0.000192",
    });
    await t.assertBooks();
    const tx = await json(await t.call(mgmt, "GET", "/v1/transactions?type=usage_debit"), 200);
    assert.equal(tx.data.length, 1);
    assert.equal(tx.data[0].amount, "-0.000192");
    assert.equal(tx.data[0].balance_after, "0.999808");
  } finally {
    await t.close();
  }
});

Deno.test("a stream passes through, bills its usage, and shows usage only when asked", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { usage: USAGE, chunks: 5 };
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1` });

    const withUsage = await client.chat.completions.create({
      model: "gpt-4o-mini",
      ...padding(),
      messages: [{ role: "user", content: "stream me" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage: Record<string, number> | null = null;
    for await (const chunk of withUsage) {
      text += chunk.choices[0]?.delta?.content ?? "";
      if (chunk.usage) usage = chunk.usage as unknown as Record<string, number>;
    }
    assert.equal(text, "Echo: stream me");
    assert.equal(usage?.cost, 0.000192);
    assert.equal(usage?.market_cost, 0.00024);

    const noUsage = await client.chat.completions.create({
      model: "gpt-4o-mini",
      ...padding(),
      messages: [{ role: "user", content: "again" }],
      stream: true,
    });
    let sawUsage = false;
    text = "";
    for await (const chunk of noUsage) {
      text += chunk.choices[0]?.delta?.content ?? "";
      if (chunk.usage) sawUsage = true;
    }
    assert.equal(text, "Echo: again");
    assert.equal(sawUsage, false, "the usage chunk is dropped when the client did not ask");
    // The router asked the upstream for usage both times.
    for (const r of t.openai.requests) {
      assert.deepEqual((r.stream_options as Record<string, unknown>).include_usage, true);
    }
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.000384");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("usage on every chunk (vLLM's continuous stats): billed once, on the chunk that finishes the choice", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    // Each chunk carries the running usage (output so far), the finishing chunk and the last,
    // empty-choices chunk the whole reply's: 1000 in, 200 out, billed $0.000192 at your rate.
    t.openai.scenario = { usage: USAGE, chunks: 5, cumulativeUsage: true };
    const stream = (include_usage: boolean) =>
      t.call(key, "POST", "/v1/chat/completions", {
        model: "gpt-4o-mini",
        ...padding(),
        messages: [{ role: "user", content: "stream me" }],
        stream: true,
        stream_options: { include_usage },
      });

    // Asked for usage: the running counts pass unchanged; the finishing chunk, and the usage
    // chunk after it, carry the cost of the whole.
    const asked = sseData(await (await stream(true)).text());
    const withChoices = asked.filter((c) => (c.choices as unknown[]).length > 0);
    assert.equal(withChoices.length, 7);
    assert.deepEqual(
      withChoices.map((c) => (c.usage as Record<string, number>).completion_tokens),
      [0, 40, 80, 120, 160, 200, 200],
      "the provider's running usage reaches the client as sent",
    );
    assert.ok(withChoices.slice(0, -1).every((c) => !("cost" in (c.usage as object))));
    for (const billed of [withChoices.at(-1)!, asked.at(-1)!]) {
      const u = billed.usage as Record<string, number>;
      assert.equal(u.completion_tokens, 200);
      assert.equal(u.cost, 0.000192);
      assert.equal(u.market_cost, 0.00024);
    }
    assert.deepEqual(asked.at(-1)!.choices, []);

    // Not asked: no usage anywhere, as with OpenAI.
    const plain = sseData(await (await stream(false)).text());
    assert.ok(plain.length > 0);
    assert.ok(plain.every((c) => !c.usage), "no usage when the client did not ask");
    assert.ok(plain.every((c) => (c.choices as unknown[]).length > 0));

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.000384", "each stream billed the final usage exactly");
    assert.equal(credits.reserved, "0");
    // Audit rows are recorded from the outbox after the settlement: wait for the recorder.
    await t.router.flush();
    const audit = await json(await t.call(mgmt, "GET", "/v1/audit"), 200);
    assert.equal(audit.data.length, 2);
    for (const row of audit.data) {
      assert.equal(row.error_code, null);
      assert.equal(row.prompt_tokens, 1000);
      assert.equal(row.completion_tokens, 200);
      assert.equal(row.reasoning_tokens, 50);
      assert.equal(row.cost, "0.000192");
    }
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a stream whose final usage counts no tokens is counted by the router, never free", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    // "abcd" × 4 in two chunks of "abcdabcd".
    t.openai.scenario = {
      usage: { prompt_tokens: 0, completion_tokens: 0 },
      content: "abcd".repeat(4),
      chunks: 2,
    };
    const body = {
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "x".repeat(40) }],
      stream: true,
      stream_options: { include_usage: true },
    };
    const res = await t.call(key, "POST", "/v1/chat/completions", body);
    assert.equal(res.status, 200);
    const usage = sseData(await res.text()).at(-1)!.usage as Record<string, number>;
    // Counted with gpt-4o-mini's tokenizer: the body as sent, each delta on its own.
    const count = await encodingCounter("o200k_base");
    const prompt = count(JSON.stringify(body));
    const output = 2 * count("abcdabcd");
    // gpt-4o-mini: $0.15/M in, $0.60/M out; the router's rate 20 % off.
    assert.equal(usage.market_cost, (prompt * 150 + output * 600) / 1e9);
    assert.equal(usage.cost, (prompt * 120 + output * 480) / 1e9);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, String((prompt * 120 + output * 480) / 1e9));
    await t.router.flush();
    const id = res.headers.get("x-request-id")!;
    const row = await json(await t.call(mgmt, "GET", `/v1/audit/${id}`), 200);
    assert.equal(row.error_code, "usage_missing");
    assert.deepEqual([row.prompt_tokens, row.completion_tokens], [prompt, output]);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("usage with the choices and no usage chunk of its own (Mistral style): billed on the finishing chunk", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { usage: USAGE, chunks: 5, cumulativeUsage: true, omitUsage: true };
    const ids: string[] = [];
    for (const include_usage of [true, false]) {
      const res = await t.call(key, "POST", "/v1/chat/completions", {
        model: "gpt-4o-mini",
        ...padding(),
        messages: [{ role: "user", content: "stream me" }],
        stream: true,
        stream_options: { include_usage },
      });
      assert.equal(res.status, 200);
      ids.push(res.headers.get("x-request-id")!);
      const chunks = sseData(await res.text());
      assert.ok(chunks.every((c) => (c.choices as unknown[]).length > 0));
      const last = chunks.at(-1)!.usage as Record<string, number> | undefined;
      if (include_usage) {
        assert.equal(last?.completion_tokens, 200, "the provider's count, as sent");
        assert.equal(last?.cost, 0.000192, "with its cost");
      } else assert.ok(chunks.every((c) => !c.usage));
    }
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.000384", "the provider's last count, not the first");
    assert.equal(credits.reserved, "0");
    await t.router.flush();
    for (const id of ids) {
      const row = await json(await t.call(mgmt, "GET", `/v1/audit/${id}`), 200);
      assert.equal(row.error_code, null, "the provider reported the usage");
      assert.equal(row.prompt_tokens, 1000);
      assert.equal(row.cached_tokens, 400);
      assert.equal(row.completion_tokens, 200);
      assert.equal(row.reasoning_tokens, 50);
      assert.equal(row.cost, "0.000192");
    }
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("usage on every chunk and a stream cut before its end: the last running count is billed", async () => {
  const t = await startRouter({ env: { UPSTREAM_TIMEOUT_MS: "200" } });
  try {
    const { key, mgmt } = await t.account("1");
    // Events: the role chunk (0 out), then parts 1 and 2 (40, 80 out); the upstream then stalls.
    t.openai.scenario = { usage: USAGE, chunks: 5, cumulativeUsage: true, stallAfter: 3 };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "gpt-4o-mini",
      ...padding(),
      messages: [{ role: "user", content: "stream me" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    assert.equal(res.status, 200);
    assert.match(await res.text(), /"code":"upstream_error"/);
    await t.router.flush();
    const row = await json(
      await t.call(mgmt, "GET", `/v1/audit/${res.headers.get("x-request-id")}`),
      200,
    );
    assert.equal(row.error_code, "upstream_stream_failed");
    assert.deepEqual([row.prompt_tokens, row.completion_tokens], [1000, 80]);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, row.cost);
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an OpenAI stream carrying an error chunk is audited as a failed stream, passed on as sent", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    // The role chunk, "abcdabcd" twice, then OpenAI's error chunk and the end (no usage).
    t.openai.scenario = {
      content: "abcd".repeat(4),
      chunks: 2,
      errorAfter: 3,
    };
    const body = {
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "x".repeat(40) }],
      stream: true,
    };
    const res = await t.call(key, "POST", "/v1/chat/completions", body);
    assert.equal(res.status, 200);
    const chunks = sseData(await res.text());
    assert.deepEqual(chunks.at(-1), {
      error: {
        message: "The server had an error while processing your request.",
        type: "server_error",
        param: null,
        code: null,
      },
    });
    await t.router.flush();
    const row = await json(
      await t.call(mgmt, "GET", `/v1/audit/${res.headers.get("x-request-id")}`),
      200,
    );
    assert.equal(row.error_code, "upstream_stream_failed");
    // Counted by the router with gpt-4o-mini's tokenizer: the body, and each delta streamed.
    const count = await encodingCounter("o200k_base");
    const prompt = count(JSON.stringify(body));
    const output = 2 * count("abcdabcd");
    assert.deepEqual([row.prompt_tokens, row.completion_tokens], [prompt, output]);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, String((prompt * 120 + output * 480) / 1e9));
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a stream answered 204 with no body: the hold released, the request audited as an upstream error", async () => {
  const upstream = serveLoopback(() => new Response(null, { status: 204 }));
  const t = await startRouter({ env: { OPENAI_BASE_URL: `${upstream.origin}/v1` } });
  try {
    const { key, mgmt } = await t.account("1");
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
      stream: true,
    });
    const body = await json(res, 502);
    assert.equal(body.error.code, "upstream_error");
    await t.router.flush();
    const row = await json(
      await t.call(mgmt, "GET", `/v1/audit/${res.headers.get("x-request-id")}`),
      200,
    );
    assert.deepEqual([row.status, row.error_code, row.cost], [502, "upstream_error", "0"]);
    assert.equal(t.router.svc.actors.liveHolds.size, 0, "no hold left to renew");
    await t.assertBooks();
  } finally {
    await t.close();
    await upstream.close();
  }
});

/**
 * The inference side of API.md as an OpenAI or Anthropic SDK user meets it: `x-request-id` on
 * every answer, the error table as each SDK surfaces it, and request shapes an SDK sends.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { json } from "../_helpers.ts";
import { encodingCounter } from "../../lib/tokenizer.ts";
import { sseData, startProviders } from "../_providers.ts";

const hi = [{ role: "user" as const, content: "hi" }];

Deno.test("every inference answer carries its own x-request-id, errors and streams included", async () => {
  const t = await startProviders({ env: { MAX_BODY_BYTES: "4096" } });
  try {
    const { key, mgmt } = await t.account("0.001");
    const ids: string[] = [];
    const seen = async (res: Response, status: number) => {
      const text = await res.text();
      assert.equal(res.status, status, `${res.url}: ${text}`);
      const id = res.headers.get("x-request-id");
      assert.match(id ?? "", /^req_\w+$/, `${res.url} ${status} has x-request-id`);
      ids.push(id!);
      return text;
    };
    const chat = (body: unknown, k = key) => t.call(k, "POST", "/v1/chat/completions", body);
    await seen(await chat({ model: "gpt-4o-mini", messages: hi, max_tokens: 10 }), 200);
    const streamed = await seen(
      await chat({ model: "gpt-4o-mini", messages: hi, max_tokens: 10, stream: true }),
      200,
    );
    assert.match(streamed, /\[DONE\]/);
    await seen(
      await t.call(key, "POST", "/v1/messages", {
        model: "claude-haiku-4-5",
        max_tokens: 10,
        messages: hi,
        stream: true,
      }, { authorization: "", "x-api-key": key }),
      200,
    );
    await seen(
      await t.call(key, "POST", "/v1/embeddings", { model: "text-embedding-3-small", input: "x" }),
      200,
    );
    await seen(
      await t.call(key, "POST", "/v1/responses", {
        model: "gpt-4o-mini",
        input: "x",
        max_output_tokens: 10,
      }),
      200,
    );
    await seen(await fetch(`${t.url}/v1/models`), 200);
    await seen(await t.call(key, "GET", "/v1/key"), 200);
    // Errors: malformed, schema, no key, wrong scope, unknown model, no route, too large,
    // unaffordable, upstream failure.
    await seen(await chat("{"), 400);
    await seen(await chat({ model: "gpt-4o-mini", messages: [] }), 400);
    await seen(
      await fetch(`${t.url}/v1/chat/completions`, { method: "POST", body: "{}" }),
      401,
    );
    await seen(await chat({ model: "gpt-4o-mini", messages: hi }, mgmt), 403);
    await seen(await chat({ model: "nope/nope", messages: hi }), 404);
    await seen(await t.call(key, "GET", "/v1/nothing-here"), 404);
    await seen(await chat({ model: "gpt-4o-mini", messages: hi, pad: "x".repeat(5000) }), 413);
    await seen(await chat({ model: "gpt-4o-mini", messages: hi, max_tokens: 1_000_000 }), 402);
    t.openai.scenario = { status: 500 };
    await seen(await chat({ model: "gpt-4o-mini", messages: hi, max_tokens: 10 }), 502);
    assert.equal(new Set(ids).size, ids.length, "each answer has its own id");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("the OpenAI SDK surfaces each error row: class, status, type, code, field, request id", async () => {
  const t = await startProviders({
    env: { MAX_BODY_BYTES: "4096" },
    providersFile: { retry: { max_retries: 0 } },
  });
  try {
    const { key, keyId, mgmt } = await t.account("0.001");
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 });
    const refused = async (
      call: Promise<unknown>,
      cls: new (...a: never[]) => InstanceType<typeof OpenAI.APIError>,
      status: number,
      code: string,
      message?: RegExp,
    ) => {
      const e = await call.then(() => null, (e) => e);
      assert.ok(e instanceof cls, `expected ${cls.name}, got ${e}`);
      assert.equal(e.status, status);
      assert.equal(e.code, code);
      assert.equal(typeof e.type, "string");
      if (message) assert.match(e.message, message);
      assert.match(e.requestID ?? "", /^req_/, "the SDK reads x-request-id");
      return e;
    };
    const create = (body: Record<string, unknown>) =>
      client.chat.completions.create(
        { model: "gpt-4o-mini", messages: hi, ...body } as never,
      );
    const bad = await refused(
      create({ temperature: "hot", max_tokens: "ten" }),
      OpenAI.BadRequestError,
      400,
      "invalid_request",
      /'max_tokens'/,
    );
    assert.equal(bad.type, "invalid_request_error");
    await refused(
      create({ messages: [{ role: "user", content: "x" }, { content: "no role" }] }),
      OpenAI.BadRequestError,
      400,
      "invalid_request",
      /'messages\.1\.role'/,
    );
    await refused(
      client.embeddings.create({ model: "text-embedding-3-small", input: [] }),
      OpenAI.BadRequestError,
      400,
      "invalid_request",
      /'input'/,
    );
    await refused(
      client.responses.create({ model: "gpt-4o-mini", input: "x", max_output_tokens: 0 }),
      OpenAI.BadRequestError,
      400,
      "invalid_request",
      /'max_output_tokens'/,
    );
    await refused(
      new OpenAI({ apiKey: "er-nope", baseURL: `${t.url}/v1`, maxRetries: 0 }).chat.completions
        .create({ model: "gpt-4o-mini", messages: hi }),
      OpenAI.AuthenticationError,
      401,
      "invalid_api_key",
    );
    await refused(
      new OpenAI({ apiKey: mgmt, baseURL: `${t.url}/v1`, maxRetries: 0 }).chat.completions
        .create({ model: "gpt-4o-mini", messages: hi }),
      OpenAI.PermissionDeniedError,
      403,
      "forbidden",
    );
    await refused(
      create({ model: "openai/no-such-model-xyz" }),
      OpenAI.NotFoundError,
      404,
      "model_not_priced",
    );
    await refused(create({ model: "nope/xyz" }), OpenAI.NotFoundError, 404, "model_not_found");
    await refused(
      create({ messages: [{ role: "user", content: "x".repeat(5000) }] }),
      OpenAI.APIError,
      413,
      "request_too_large",
    );
    const poor = await refused(
      create({ max_tokens: 1_000_000 }),
      OpenAI.APIError,
      402,
      "insufficient_credits",
      /max_tokens to \d+ or less/,
    );
    assert.equal(poor.type, "insufficient_quota");
    t.openai.scenario = { status: 429, retryAfter: "1" };
    const limited = await refused(
      create({ max_tokens: 10 }),
      OpenAI.RateLimitError,
      429,
      "upstream_rate_limited",
    );
    assert.equal(limited.headers?.get("retry-after"), "1", "the provider's Retry-After");
    t.openai.scenario = { status: 500 };
    await refused(create({ max_tokens: 10 }), OpenAI.InternalServerError, 502, "upstream_error");
    t.openai.scenario = {};
    assert.equal(t.openai.requests.length, 2, "only the two upstream failures were forwarded");
    // A key limit and a disabled key, last: they change the key.
    await json(
      await t.call(mgmt, "PATCH", `/v1/keys/${keyId}`, { credit_limit: "0.0000001" }),
      200,
    );
    await refused(create({ max_tokens: 100 }), OpenAI.APIError, 402, "key_limit_exceeded");
    await json(await t.call(mgmt, "PATCH", `/v1/keys/${keyId}`, { disabled: true }), 200);
    await refused(create({}), OpenAI.PermissionDeniedError, 403, "key_disabled");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("the Anthropic SDK gets usable errors from /v1/messages", async () => {
  const t = await startProviders({ providersFile: { retry: { max_retries: 0 } } });
  try {
    const { key } = await t.account("0.001");
    const client = new Anthropic({ apiKey: key, baseURL: t.url, maxRetries: 0 });
    const refused = async (
      call: Promise<unknown>,
      cls: new (...a: never[]) => InstanceType<typeof Anthropic.APIError>,
      status: number,
      type: string,
      message?: RegExp,
    ) => {
      const e = await call.then(() => null, (e) => e);
      assert.ok(e instanceof cls, `expected ${cls.name}, got ${e}`);
      assert.equal(e.status, status);
      assert.equal(e.type, type, "the SDK reads error.type");
      if (message) assert.match(String(e.apiMessage), message);
      return e;
    };
    const create = (body: Record<string, unknown>) =>
      client.messages.create({ model: "claude-haiku-4-5", max_tokens: 10, messages: hi, ...body });
    await refused(
      create({ max_tokens: "ten" }),
      Anthropic.BadRequestError,
      400,
      "invalid_request_error",
      /'max_tokens'/,
    );
    await refused(
      new Anthropic({ apiKey: "er-nope", baseURL: t.url, maxRetries: 0 }).messages.create({
        model: "claude-haiku-4-5",
        max_tokens: 10,
        messages: hi,
      }),
      Anthropic.AuthenticationError,
      401,
      "authentication_error",
    );
    await refused(
      create({ model: "anthropic/no-such-claude" }),
      Anthropic.NotFoundError,
      404,
      "not_found_error",
    );
    await refused(
      create({ max_tokens: 20_000 }),
      Anthropic.APIError,
      402,
      "insufficient_quota",
      /max_tokens/,
    );
    t.anthropic.scenario = { status: 500 };
    await refused(create({}), Anthropic.InternalServerError, 502, "api_error");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a stream the provider breaks mid-way throws in the client's SDK, in every format", async () => {
  const t = await startProviders({ env: { UPSTREAM_TIMEOUT_MS: "300" } });
  try {
    const { key, mgmt } = await t.account("1");
    const openai = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 });
    const anthropic = new Anthropic({ apiKey: key, baseURL: t.url, maxRetries: 0 });
    /** Drains an SDK stream; returns the text it delivered and the error it threw. */
    const drain = async (events: AsyncIterable<unknown>, text: (e: unknown) => string) => {
      let got = "";
      try {
        for await (const e of events) got += text(e);
      } catch (e) {
        return { got, error: e };
      }
      return { got, error: null };
    };
    const failed = (r: { got: string; error: unknown }, cls: new (...a: never[]) => Error) => {
      assert.ok(r.got.length > 0, "some output arrived before the break");
      assert.ok(r.error instanceof cls, `the SDK threw ${cls.name}, not ${r.error}`);
      assert.match(r.error.message, /stream failed/);
    };
    // deno-lint-ignore no-explicit-any
    const anthropicText = (e: any) => e.type === "content_block_delta" ? e.delta.text ?? "" : "";

    // OpenAI chat: the upstream stalls after two chunks.
    t.openai.scenario = { chunks: 6, stallAfter: 3, content: "one two three four five six" };
    failed(
      await drain(
        await openai.chat.completions.create({ model: "gpt-4o-mini", messages: hi, stream: true }),
        // deno-lint-ignore no-explicit-any
        (c: any) => c.choices[0]?.delta?.content ?? "",
      ),
      OpenAI.APIError,
    );
    // OpenAI Responses: the connection is lost after two events.
    t.openai.scenario = { chunks: 4, stallAfter: 3 };
    failed(
      await drain(
        await openai.responses.create({ model: "gpt-4o-mini", input: "stream me", stream: true }),
        // deno-lint-ignore no-explicit-any
        (e: any) => e.type === "response.output_text.delta" ? e.delta : "",
      ),
      OpenAI.APIError,
    );
    // Anthropic Messages, native: the connection is lost after two text deltas.
    t.anthropic.scenario = { chunks: 4, breakAfter: 5, content: "abcdefghijklmnop" };
    failed(
      await drain(
        await anthropic.messages.create({
          model: "claude-haiku-4-5",
          max_tokens: 100,
          messages: hi,
          stream: true,
        }),
        anthropicText,
      ),
      Anthropic.APIError,
    );
    // Anthropic Messages translated from an OpenAI model that stalls.
    t.openai.scenario = { chunks: 6, stallAfter: 3, content: "one two three four five six" };
    failed(
      await drain(
        await anthropic.messages.create({
          model: "openai/gpt-4o-mini",
          max_tokens: 100,
          messages: hi,
          stream: true,
        }),
        anthropicText,
      ),
      Anthropic.APIError,
    );
    // Each stream was billed for what it produced, and nothing stays held.
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    assert.notEqual(credits.total_used, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("chat request shapes an SDK sends: extra fields, explicit stream false, stream_options, n", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("0.0007");
    const chat = (body: Record<string, unknown>) =>
      t.call(key, "POST", "/v1/chat/completions", { model: "gpt-4o-mini", messages: hi, ...body });
    const tools = [{ type: "function", function: { name: "f", parameters: { type: "object" } } }];
    // Fields the router does not know reach the provider unchanged; `stream: false` is JSON.
    const extra = {
      seed: 7,
      user: "u-1",
      tools,
      tool_choice: "auto",
      response_format: { type: "json_object" },
      some_future_field: { a: [1, 2] },
    };
    const plain = await json(await chat({ ...extra, stream: false, max_tokens: 10 }), 200);
    assert.equal(plain.object, "chat.completion");
    assert.equal(typeof plain.usage.cost, "number");
    const sent = t.openai.requests[0];
    for (const [k, v] of Object.entries(extra)) assert.deepEqual(sent[k], v, k);
    assert.equal(sent.stream, false);
    assert.equal(sent.max_tokens, 10);
    assert.equal(sent.models, undefined, "the router's own field is not forwarded");

    // include_usage false or stream_options null: no usage chunk; the upstream is asked anyway.
    for (const stream_options of [{ include_usage: false }, null]) {
      const res = await chat({ stream: true, stream_options, max_tokens: 10 });
      assert.equal(res.status, 200);
      const chunks = sseData(await res.text());
      assert.ok(chunks.length > 0);
      assert.ok(chunks.every((c) => !c.usage), JSON.stringify(stream_options));
      assert.ok(chunks.every((c) => (c.choices as unknown[]).length > 0));
      const asked = t.openai.requests.at(-1)!.stream_options as Record<string, unknown>;
      assert.equal(asked.include_usage, true);
    }
    // With it: one final usage chunk, empty choices, with cost and market_cost.
    const res = await chat({
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: 10,
    });
    const chunks = sseData(await res.text());
    const usage = chunks.filter((c) => c.usage);
    assert.equal(usage.length, 1);
    assert.equal(usage[0], chunks.at(-1));
    assert.deepEqual(usage[0].choices, []);
    const u = usage[0].usage as Record<string, unknown>;
    assert.equal(typeof u.cost, "number");
    assert.equal(typeof u.market_cost, "number");

    // `n` choices may each run to max_tokens: the hold covers all of them. 1000 output tokens
    // at $0.48/M (your rate) fit $0.0007; twice that does not.
    const n2 = await chat({ n: 2, max_tokens: 1000 });
    assert.equal((await json(n2, 402)).error.code, "insufficient_credits");
    await json(await chat({ n: 1, max_tokens: 1000 }), 200);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a JSON reply without usage is counted by the router, as a stream's is, never free", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    const text = "a reply of some length ".repeat(20);
    // Each provider answers with an empty usage object (embeddings: no tokens).
    t.openai.scenario = { usage: {} as never, responsesUsage: {}, content: text };
    t.anthropic.scenario = { usage: {}, content: text };
    const calls: [string, Record<string, unknown>][] = [
      ["/v1/chat/completions", { model: "gpt-4o-mini", messages: hi, max_tokens: 500 }],
      ["/v1/messages", { model: "claude-haiku-4-5", messages: hi, max_tokens: 500 }],
      ["/v1/responses", { model: "gpt-4o-mini", input: "hi", max_output_tokens: 500 }],
      ["/v1/embeddings", { model: "text-embedding-3-small", input: "some words to embed" }],
    ];
    for (const [path, body] of calls) {
      // The fake derives embeddings usage unless told a count: it reports none.
      if (path === "/v1/embeddings") t.openai.scenario = { usage: { prompt_tokens: 0 } as never };
      const res = await t.call(key, "POST", path, body);
      const out = await json(res, 200);
      assert.ok(out.usage.cost > 0, `${path}: usage.cost ${out.usage.cost}`);
      assert.ok(out.usage.market_cost > out.usage.cost, path);
      await t.router.flush();
      const id = res.headers.get("x-request-id");
      const row = await json(await t.call(mgmt, "GET", `/v1/audit/${id}`), 200);
      assert.equal(row.error_code, "usage_missing", path);
      assert.ok(row.prompt_tokens > 0, path);
      // Counted with the model's tokenizer (OpenAI's), or at its UTF-8 length (Anthropic's).
      const output = path === "/v1/embeddings"
        ? 0
        : path === "/v1/messages"
        ? text.length
        : (await encodingCounter("o200k_base"))(text);
      assert.equal(row.completion_tokens, output, path);
      assert.notEqual(row.cost, "0", path);
    }
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.notEqual(credits.total_used, "0");
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("GET /v1/models/{id}: the OpenAI SDK's models.retrieve gets the list's entry; unknown ids are 404", async () => {
  const t = await startProviders();
  try {
    const { key } = await t.account("1");
    const list = await json(await fetch(`${t.url}/v1/models`), 200);
    const entry = (id: string) => list.data.find((m: { id: string }) => m.id === id);
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 });
    // The SDK sends the slash as %2F.
    for (
      const id of ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5", "google/gemini-2.5-flash"]
    ) {
      const model = await client.models.retrieve(id);
      assert.ok(entry(id), id);
      assert.deepEqual({ ...model }, entry(id), id);
      assert.match(model._request_id ?? "", /^req_/);
    }
    const embedding = await client.models.retrieve("openai/text-embedding-3-small");
    assert.equal((embedding as unknown as { type: string }).type, "embedding");
    // A bare catalog name resolves as it does in a chat request; a raw slash works too.
    assert.deepEqual(
      { ...await client.models.retrieve("gpt-4o-mini") },
      entry("openai/gpt-4o-mini"),
    );
    assert.deepEqual(
      await json(await fetch(`${t.url}/v1/models/openai/gpt-4o-mini`), 200),
      entry("openai/gpt-4o-mini"),
    );
    // Unknown and unpriced models: 404 in the router's error shape, with a request id.
    for (
      const [path, code] of [
        ["nope%2Fxyz", "model_not_found"],
        ["nope/xyz", "model_not_found"],
        ["no-such-model-anywhere", "model_not_found"],
        ["openai%2Fno-such-model-xyz", "model_not_priced"],
        ["openai/no-such-model-xyz", "model_not_priced"],
      ]
    ) {
      const res = await fetch(`${t.url}/v1/models/${path}`);
      assert.match(res.headers.get("x-request-id") ?? "", /^req_/);
      const body = await json(res, 404);
      assert.equal(body.error.code, code, path);
      assert.equal(typeof body.error.message, "string");
      assert.equal(typeof body.error.type, "string");
    }
    const e = await client.models.retrieve("openai/no-such-model-xyz").then(() => null, (e) => e);
    assert.ok(e instanceof OpenAI.NotFoundError, `expected NotFoundError, got ${e}`);
    assert.equal(e.code, "model_not_priced");
    assert.equal(t.openai.requests.length, 0, "nothing was forwarded");
  } finally {
    await t.close();
  }
});

Deno.test("the Anthropic SDK reads the request id (request-id) on /v1/messages: replies, streams and errors", async () => {
  const t = await startProviders({ providersFile: { retry: { max_retries: 0 } } });
  try {
    const { key } = await t.account("1");
    const client = new Anthropic({ apiKey: key, baseURL: t.url, maxRetries: 0 });
    const body = { model: "claude-haiku-4-5", max_tokens: 10, messages: hi };
    const message = await client.messages.create(body);
    assert.match(message._request_id ?? "", /^req_\w+$/, "message._request_id");
    const { response, request_id } = await client.messages.create(body).withResponse();
    assert.match(request_id ?? "", /^req_\w+$/);
    assert.equal(request_id, response.headers.get("x-request-id"), "the same id as x-request-id");
    const stream = client.messages.stream(body);
    await stream.finalMessage();
    assert.match(stream.request_id ?? "", /^req_\w+$/, "a stream's request_id");
    const counted = await client.messages.countTokens({ model: "claude-haiku-4-5", messages: hi });
    assert.match(counted._request_id ?? "", /^req_\w+$/);
    // An error: the SDK's requestID is the router's id.
    const e = await client.messages.create({ ...body, model: "anthropic/no-such-claude" }).then(
      () => null,
      (e) => e,
    );
    assert.ok(e instanceof Anthropic.NotFoundError, `expected NotFoundError, got ${e}`);
    assert.match(e.requestID ?? "", /^req_\w+$/, "error.requestID");
    assert.equal(e.requestID, e.headers.get("x-request-id"));
    // Other endpoints keep their own header only.
    const chat = await t.call(key, "POST", "/v1/chat/completions", {
      model: "gpt-4o-mini",
      messages: hi,
      max_tokens: 10,
    });
    await json(chat, 200);
    assert.equal(chat.headers.get("request-id"), null);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a refused streaming request is audited as streaming", async () => {
  const t = await startProviders();
  try {
    // Credit for no request at all: every reservation is refused.
    const { key, mgmt } = await t.account("0.000001");
    for (
      const [path, stream] of [["/v1/chat/completions", true], ["/v1/chat/completions", false]]
    ) {
      const res = await t.call(key, "POST", path as string, {
        model: "openai/gpt-4o-mini",
        messages: hi,
        max_tokens: 1000,
        stream,
      });
      assert.equal(res.status, 402);
      await res.body?.cancel();
    }
    const anthropic = await t.call(key, "POST", "/v1/messages", {
      model: "anthropic/claude-sonnet-4-5",
      max_tokens: 1000,
      messages: hi,
      stream: true,
    });
    assert.equal(anthropic.status, 402);
    await anthropic.body?.cancel();
    await t.router.flush();
    const rows = (await json(await t.call(mgmt, "GET", "/v1/audit"), 200)).data;
    // Newest first: the Messages stream, the chat call, the chat stream.
    assert.deepEqual(
      rows.map((r: { status: number; streaming: boolean }) => [r.status, r.streaming]),
      [[402, true], [402, false], [402, true]],
    );
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

/**
 * Billing that cannot be gamed or run away: incomplete replies counted as the provider would,
 * every charge within its hold (and so within the key's limit), usage clamped before it is
 * priced, echoed or stored, unpriced kinds refused, background responses refused.
 */
import assert from "node:assert/strict";
import { json, startRouter, type TestRouter } from "../../_helpers.ts";
import { lookupCatalog, priceUsage, priceWorstCase, ZERO_USAGE } from "../../../lib/pricing.ts";
import { encodingCounter, utf8Bytes } from "../../../lib/tokenizer.ts";
import { formatUsd, usdNumber } from "../../../lib/money.ts";
import { usageAnomalies } from "../../../lib/metrics.ts";
import { pngBase64 } from "../../_images.ts";
import { sseData, startProviders } from "../../_providers.ts";

const MINI = lookupCatalog("openai", "gpt-4o-mini", new Date())!.prices;

/** The audit row of a request, once recorded (a stream settles after its client has gone). */
async function rowOf(t: TestRouter, mgmt: string, res: Response) {
  const id = res.headers.get("x-request-id")!;
  for (let i = 0; i < 400; i++) {
    await t.router.flush();
    const r = await t.call(mgmt, "GET", `/v1/audit/${id}`);
    if (r.status === 200) return await r.json();
    await r.body?.cancel();
    await new Promise((ok) => setTimeout(ok, 10));
  }
  throw new Error(`no audit row for ${id}`);
}

/** Reads a stream until it has delivered some content, then goes away. */
async function cutAfterFirstContent(res: Response) {
  assert.equal(res.status, 200);
  const reader = res.body!.getReader();
  let got = "";
  while (!/"(content|text|delta)":"[^"]/.test(got)) {
    const r = await reader.read();
    if (r.done) break;
    got += new TextDecoder().decode(r.value);
  }
  await reader.cancel();
}

/**
 * A reply of `content` that is cut: the client leaves a chat or Messages stream after its first
 * content (the fake streams slowly); a Responses stream loses its connection after a delta.
 */
const cutScenario = (path: string, content: string) =>
  path === "/v1/responses" ? { stallAfter: 2, content } : { chunks: 50, chunkDelayMs: 20, content };

const CJK = "我们在这里测试一下中文的分词效果，看看路由器如何计算。".repeat(770).slice(0, 20_000);
const image = pngBase64(1024, 1024);
/** gpt-4o-mini, high detail: 1024 × 1024 → 768 × 768, 4 tiles: 2833 + 4 × 5667. */
const IMAGE_TOKENS = 25_501;

/** The same prompt in each inbound format, for gpt-4o-mini, as a stream. */
const formats = (content: "cjk" | "images") => {
  const chatParts = content === "cjk" ? CJK : Array.from({ length: 20 }, () => ({
    type: "image_url",
    image_url: { url: `data:image/png;base64,${image}`, detail: "high" },
  }));
  const messagesParts = content === "cjk" ? CJK : Array.from({ length: 20 }, () => ({
    type: "image",
    source: { type: "base64", media_type: "image/png", data: image },
  }));
  const responsesInput = content === "cjk" ? CJK : [{
    role: "user",
    content: Array.from({ length: 20 }, () => ({
      type: "input_image",
      image_url: `data:image/png;base64,${image}`,
      detail: "high",
    })),
  }];
  return [
    ["/v1/chat/completions", {
      model: "openai/gpt-4o-mini",
      messages: [{ role: "user", content: chatParts }],
      max_tokens: 200,
      stream: true,
    }],
    ["/v1/messages", {
      model: "openai/gpt-4o-mini",
      messages: [{ role: "user", content: messagesParts }],
      max_tokens: 200,
      stream: true,
    }],
    ["/v1/responses", {
      model: "openai/gpt-4o-mini",
      input: responsesInput,
      max_output_tokens: 200,
      stream: true,
    }],
  ] as const;
};

Deno.test("a cut stream bills a CJK prompt as the tokenizer counts it, in every inbound format", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("10");
    const count = await encodingCounter("o200k_base");
    const textTokens = count(CJK);
    // Characters ÷ 4 (what was billed before) is far below what OpenAI counts.
    assert.ok(textTokens > 2 * (CJK.length / 4), `${textTokens}`);
    for (const [path, body] of formats("cjk")) {
      t.openai.scenario = cutScenario(path, "答".repeat(50));
      const res = await t.call(key, "POST", path, body);
      await cutAfterFirstContent(res);
      const row = await rowOf(t, mgmt, res);
      assert.notEqual(row.error_code, null, path);
      // The prompt: gpt-4o-mini's tokenizer over the body as sent (its text and its structure).
      const prompt = count(JSON.stringify(body));
      assert.equal(row.prompt_tokens, prompt, path);
      assert.ok(row.prompt_tokens >= textTokens, path);
      assert.ok(row.completion_tokens >= 1, path);
      const cost = priceUsage(
        { ...ZERO_USAGE, prompt: row.prompt_tokens, completion: row.completion_tokens },
        MINI,
        2000,
      );
      assert.equal(row.cost, formatUsd(cost.cost), path);
    }
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a cut stream bills 20 high-detail images by OpenAI's image rules, in every inbound format", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("10");
    for (const [path, body] of formats("images")) {
      t.openai.scenario = cutScenario(path, "a cat ".repeat(20));
      const res = await t.call(key, "POST", path, body);
      await cutAfterFirstContent(res);
      const row = await rowOf(t, mgmt, res);
      // 20 images of 25 501 tokens each, and the text around them (far less than its bytes).
      const images = 20 * IMAGE_TOKENS;
      assert.ok(row.prompt_tokens >= images, `${path}: ${row.prompt_tokens}`);
      assert.ok(row.prompt_tokens < images + 2000, `${path}: ${row.prompt_tokens}`);
    }
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("absurd upstream usage is clamped to the hold before it is priced, echoed or stored", async () => {
  const logs: Record<string, unknown>[] = [];
  const t = await startRouter({ log: (_l, msg, f) => logs.push({ msg, ...f }) });
  try {
    const { key, mgmt } = await t.account("100");
    const labels = { provider: "openai", kind: "prompt" };
    const before = await usageAnomalies.get(labels);
    t.openai.scenario = {
      usage: {
        prompt_tokens: 1e15,
        completion_tokens: 1e15,
        prompt_tokens_details: { cached_tokens: "NaN" as unknown as number, audio_tokens: -5 },
        completion_tokens_details: { reasoning_tokens: 1e15 },
        total_tokens: 2e15,
      },
    };
    const body = {
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 100,
    };
    for (const stream of [false, true]) {
      const request = {
        ...body,
        ...(stream ? { stream, stream_options: { include_usage: true } } : {}),
      };
      const bytes = utf8Bytes(JSON.stringify(request));
      const hold = priceWorstCase(bytes, 100, MINI, 2000);
      const res = await t.call(key, "POST", "/v1/chat/completions", request);
      const text = await res.text();
      assert.equal(res.status, 200, text);
      assert.doesNotMatch(text, /1e\+?15|1000000000000000|NaN|100000000[,}]/);
      const usage = stream
        ? JSON.parse(text.split("\n\n").filter((e) => e.includes('"usage"')).at(-1)!.slice(6))
          .usage
        : JSON.parse(text).usage;
      // Billed as the hold's bounds: the body's bytes in, max_tokens out (all reasoning).
      assert.equal(usage.prompt_tokens, bytes);
      assert.equal(usage.completion_tokens, 100);
      assert.equal(usage.total_tokens, bytes + 100);
      assert.deepEqual(usage.prompt_tokens_details, { cached_tokens: 0, audio_tokens: 0 });
      assert.deepEqual(usage.completion_tokens_details, { reasoning_tokens: 100 });
      const cost = priceUsage({ ...ZERO_USAGE, prompt: bytes, completion: 100 }, MINI, 2000);
      assert.equal(usage.cost, usdNumber(cost.cost));
      assert.ok(cost.cost <= hold.cost);
      const row = await rowOf(t, mgmt, res);
      assert.deepEqual(
        [row.prompt_tokens, row.completion_tokens, row.reasoning_tokens, row.cached_tokens],
        [bytes, 100, 100, 0],
      );
      assert.equal(row.cost, formatUsd(cost.cost));
    }
    // Each clamp is logged with the request id and figures only, and counted.
    const clamps = logs.filter((l) => l.msg === "usage beyond the hold's bounds; clamped");
    assert.equal(clamps.length, 2);
    assert.ok(clamps.every((l) => typeof l.request_id === "string"));
    assert.deepEqual(clamps[0].kinds, ["prompt", "output", "reasoning"]);
    assert.doesNotMatch(JSON.stringify(logs), /NaN/);
    assert.equal(await usageAnomalies.get(labels), before + 2);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("absurd usage is clamped in every format's reply, streamed or not, and counted for each provider", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("100");
    const huge = 1e15;
    t.anthropic.scenario = {
      usage: {
        input_tokens: huge,
        output_tokens: huge,
        cache_read_input_tokens: "NaN",
        cache_creation_input_tokens: -3,
      },
    };
    t.gemini.scenario = {
      usage: { promptTokenCount: huge, candidatesTokenCount: huge, totalTokenCount: 2 * huge },
    };
    t.openai.scenario = {
      usage: { prompt_tokens: huge, completion_tokens: huge },
      responsesUsage: {
        input_tokens: huge,
        output_tokens: huge,
        input_tokens_details: { cached_tokens: "NaN" },
        output_tokens_details: { reasoning_tokens: huge },
      },
    };
    const kinds = ["prompt", "output"];
    const providers = ["openai", "anthropic", "google"];
    const counted = async () =>
      await Promise.all(
        providers.flatMap((provider) =>
          kinds.map((kind) => usageAnomalies.get({ provider, kind }))
        ),
      );
    const before = await counted();
    const messages = [{ role: "user", content: "hi" }];
    const cases: [string, Record<string, unknown>][] = [
      ["/v1/messages", { model: "claude-haiku-4-5", max_tokens: 100, messages }],
      ["/v1/chat/completions", { model: "claude-haiku-4-5", max_tokens: 100, messages }],
      ["/v1/chat/completions", { model: "gemini-2.5-flash", max_tokens: 100, messages }],
      ["/v1/responses", { model: "gpt-4o-mini", max_output_tokens: 100, input: "hi" }],
      ["/v1/messages", { model: "gpt-4o-mini", max_tokens: 100, messages }],
    ];
    for (const [path, body] of cases) {
      for (const stream of [false, true]) {
        const request = {
          ...body,
          ...(stream ? { stream, stream_options: { include_usage: true } } : {}),
        };
        if (path !== "/v1/chat/completions") delete request.stream_options;
        const res = await t.call(key, "POST", path, request);
        const text = await res.text();
        const what = `${path} ${body.model}${stream ? " streamed" : ""}`;
        assert.equal(res.status, 200, `${what}: ${text}`);
        assert.match(text, /"(prompt|input)_tokens"/, `${what} shows its usage`);
        assert.doesNotMatch(text, /1e\+?15|1000000000000000|NaN|":-3\b/, what);
        const row = await rowOf(t, mgmt, res);
        const bytes = utf8Bytes(JSON.stringify(request));
        assert.ok(row.prompt_tokens <= bytes, `${what}: ${row.prompt_tokens} prompt tokens`);
        assert.ok(row.completion_tokens <= 100, `${what}: ${row.completion_tokens} output tokens`);
      }
    }
    // Each provider's prompt and output clamps were counted, once a request.
    const after = await counted();
    assert.deepEqual(after.map((n, i) => n - before[i]), [4, 4, 4, 4, 2, 2]);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a key with a $0.01 limit is never charged beyond it, however much usage is reported", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt, keyId } = await t.account("100", { credit_limit: "0.01" });
    t.openai.scenario = { usage: { prompt_tokens: 9e7, completion_tokens: 9e7 } };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 1000,
    });
    const out = await json(res, 200);
    assert.ok(out.usage.cost <= 0.01, `${out.usage.cost}`);
    const keys = await json(await t.call(mgmt, "GET", "/v1/keys"), 200);
    const spend = keys.data.find((k: { id: string }) => k.id === keyId).spend;
    assert.ok(Number(spend) <= 0.01, spend);
    assert.equal(spend, String(out.usage.cost));
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a never-ending stream without usage is billed at most max_tokens of output", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("10");
    // 2000 deltas and no usage: the router counts far more than the 50 tokens allowed.
    t.openai.scenario = { omitUsage: true, chunks: 2000, content: "word ".repeat(2000) };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "go on forever" }],
      max_tokens: 50,
      stream: true,
    });
    assert.equal(res.status, 200);
    await res.text();
    const row = await rowOf(t, mgmt, res);
    assert.equal(row.error_code, "usage_missing");
    assert.equal(row.completion_tokens, 50);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a hold exactly equal to a key's remaining limit is served; one nano-dollar more is refused", async () => {
  const t = await startRouter();
  try {
    const body = {
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 100,
    };
    const hold = priceWorstCase(utf8Bytes(JSON.stringify(body)), 100, MINI, 2000).cost;
    t.openai.scenario = { usage: { prompt_tokens: 1, completion_tokens: 1 } };
    const exact = await t.account("10", { credit_limit: formatUsd(hold) });
    await json(await t.call(exact.key, "POST", "/v1/chat/completions", body), 200);
    const short = await t.account("10", { credit_limit: formatUsd(hold - 1n) });
    const refused = await json(await t.call(short.key, "POST", "/v1/chat/completions", body), 402);
    assert.equal(refused.error.code, "key_limit_exceeded");
    assert.equal(t.openai.requests.length, 1, "the refused request never reached the provider");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("background responses are refused, naming the field; nothing is forwarded or billed", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    const res = await t.call(key, "POST", "/v1/responses", {
      model: "gpt-4o-mini",
      input: "write a novel",
      background: true,
    });
    const out = await json(res, 400);
    assert.equal(out.error.code, "invalid_request");
    assert.match(out.error.message, /'background'/);
    assert.equal(t.openai.requests.length, 0);
    // background: false is the default and is served.
    await json(
      await t.call(key, "POST", "/v1/responses", {
        model: "gpt-4o-mini",
        input: "hi",
        background: false,
      }),
      200,
    );
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("audio on a model the catalog prices without audio rates: refused where asked, billed at the hold otherwise", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("10");
    const model = "openai/gpt-4o-audio-preview";
    const asks: [Record<string, unknown>, RegExp][] = [
      [{ modalities: ["text", "audio"], audio: { voice: "alloy", format: "wav" } }, /audio output/],
      [{
        messages: [{
          role: "user",
          content: [{ type: "input_audio", input_audio: { data: "UklGRg==", format: "wav" } }],
        }],
      }, /audio input/],
    ];
    for (const [extra, kind] of asks) {
      const res = await t.call(key, "POST", "/v1/chat/completions", {
        model,
        messages: [{ role: "user", content: "say hi" }],
        ...extra,
      });
      const out = await json(res, 404);
      assert.equal(out.error.code, "model_not_priced");
      assert.match(out.error.message, kind);
      assert.match(out.error.message, /gpt-4o-audio-preview/);
    }
    assert.equal(t.openai.requests.length, 0, "nothing was forwarded");

    // A text request whose reply reports audio tokens anyway: billed at the hold.
    t.openai.scenario = {
      usage: {
        prompt_tokens: 10,
        completion_tokens: 20,
        completion_tokens_details: { audio_tokens: 20 },
      },
    };
    const body = { model, messages: [{ role: "user", content: "say hi" }], max_tokens: 30 };
    const prices = lookupCatalog("openai", "gpt-4o-audio-preview", new Date())!.prices;
    const hold = priceWorstCase(utf8Bytes(JSON.stringify(body)), 30, prices, 2000);
    const out = await json(await t.call(key, "POST", "/v1/chat/completions", body), 200);
    assert.equal(out.usage.cost, usdNumber(hold.cost));
    assert.equal(out.usage.market_cost, usdNumber(hold.market));
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, formatUsd(hold.cost));
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("web search without a catalog fee is refused; with the operator's fee each search is billed", async () => {
  const t = await startRouter();
  try {
    const { key } = await t.account("10");
    // The catalog prices gpt-4o-search-preview by its tokens only: its searches have no fee.
    const search = await json(
      await t.call(key, "POST", "/v1/chat/completions", {
        model: "openai/gpt-4o-search-preview",
        messages: [{ role: "user", content: "news?" }],
      }),
      404,
    );
    assert.equal(search.error.code, "model_not_priced");
    assert.match(search.error.message, /web search/);
    // gpt-4.1-nano has no web search fee either: the Responses web_search tool is refused on it.
    const nano = await json(
      await t.call(key, "POST", "/v1/responses", {
        model: "openai/gpt-4.1-nano",
        input: "news?",
        tools: [{ type: "web_search" }],
      }),
      404,
    );
    assert.match(nano.error.message, /web search/);
    assert.equal(t.openai.requests.length, 0);
  } finally {
    await t.close();
  }

  // With the operator's price, each request to a search model is billed one search.
  const priced = await startRouter({
    providersFile: {
      models: {
        "openai/gpt-4o-search-preview": {
          prices: { input_mtok: 2.5, output_mtok: 10, web_searches_kcount: 30 },
        },
      },
    },
  });
  try {
    const { key } = await priced.account("10");
    priced.openai.scenario = { usage: { prompt_tokens: 10, completion_tokens: 10 } };
    const out = await json(
      await priced.call(key, "POST", "/v1/chat/completions", {
        model: "openai/gpt-4o-search-preview",
        messages: [{ role: "user", content: "news?" }],
        max_tokens: 100,
      }),
      200,
    );
    // 10 × $2.50/M + 10 × $10/M + 1 × $30/1000 = $0.030125; 20 % off = $0.0241.
    assert.equal(out.usage.market_cost, 0.030125);
    assert.equal(out.usage.cost, 0.0241);
    await priced.assertBooks();
  } finally {
    await priced.close();
  }
});

Deno.test("a stream's early usage (Anthropic's message_start) is shown clamped when beyond the hold", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("10");
    t.anthropic.scenario = { usage: { input_tokens: 1e12, output_tokens: 5 } };
    const body = {
      model: "anthropic/claude-haiku-4-5",
      max_tokens: 50,
      messages: [{ role: "user", content: "hi" }],
      stream: true,
    };
    const bytes = utf8Bytes(JSON.stringify(body));
    const res = await t.call(key, "POST", "/v1/messages", body);
    const text = await res.text();
    assert.doesNotMatch(text, /1000000000000|1e\+?12/);
    const start = sseData(text).find((e) => e.type === "message_start")!;
    assert.equal((start.message as { usage: { input_tokens: number } }).usage.input_tokens, bytes);
    const row = await rowOf(t, mgmt, res);
    assert.deepEqual([row.prompt_tokens, row.completion_tokens], [bytes, 5]);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

import assert from "node:assert/strict";
import OpenAI from "openai";
import { json, padding, startRouter } from "../../_helpers.ts";
import { sseData, startProviders } from "../../_providers.ts";

Deno.test("embeddings are priced exactly and debited once", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { usage: { prompt_tokens: 1234, completion_tokens: 0 } };
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1` });
    const res = await client.embeddings.create({
      model: "openai/text-embedding-3-small",
      input: ["one", "two"],
      ...padding(),
    } as OpenAI.EmbeddingCreateParams);
    assert.equal(res.data.length, 2);
    // 1234 × $0.02/M = $0.00002468 market; 20 % off = $0.000019744.
    const usage = res.usage as unknown as Record<string, number>;
    assert.equal(usage.market_cost, 0.00002468);
    assert.equal(usage.cost, 0.000019744);
    assert.equal(t.openai.requests[0].model, "text-embedding-3-small");
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.balance, "0.999980256");
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
    const tx = await json(await t.call(mgmt, "GET", "/v1/transactions?type=usage_debit"), 200);
    assert.deepEqual(tx.data.map((e: { amount: string }) => e.amount), ["-0.000019744"]);
  } finally {
    await t.close();
  }
});

Deno.test("PROVIDERS_FILE prices and discounts override the catalog, exactly", async () => {
  const t = await startRouter({
    providersFile: {
      providers: { openai: { discount_percent: 50 } },
      models: {
        // Decimal-string prices with fractions of a nano-dollar per token.
        "openai/gpt-4o-mini": {
          prices: { input_mtok: "0.333333333", output_mtok: "1.1", cache_read_mtok: "0.01" },
          discount_percent: 12.5,
        },
        "openai/house-model": { prices: { input_mtok: 3, output_mtok: 9 } },
      },
    },
  });
  try {
    const { key, mgmt } = await t.account("1");
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1` });
    t.openai.scenario = {
      usage: {
        prompt_tokens: 7,
        completion_tokens: 3,
        prompt_tokens_details: { cached_tokens: 2 },
      },
    };
    const a = await client.chat.completions.create({
      model: "openai/gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
    });
    // 5 × 333333333 + 2 × 10000000 + 3 × 1100000000 = 4986666665 nano·tokens per million
    // → market round(4986.666665) = 4987 nano; cost round(4986.666665 × 0.875) = 4363 nano.
    const ua = a.usage as unknown as Record<string, number>;
    assert.equal(ua.market_cost, 0.000004987);
    assert.equal(ua.cost, 0.000004363);

    // The provider's 50 % applies to a model without its own discount.
    t.openai.scenario = { usage: { prompt_tokens: 1000, completion_tokens: 100 } };
    const b = await client.chat.completions.create({
      model: "openai/house-model",
      ...padding(),
      messages: [{ role: "user", content: "hi" }],
    });
    // 1000 × $3/M + 100 × $9/M = $0.0039; half = $0.00195.
    const ub = b.usage as unknown as Record<string, number>;
    assert.equal(ub.market_cost, 0.0039);
    assert.equal(ub.cost, 0.00195);

    const models = await json(await t.call(key, "GET", "/v1/models"), 200);
    const house = models.data.find((m: { id: string }) => m.id === "openai/house-model");
    assert.equal(house.pricing.market.input, "3");
    assert.equal(house.pricing.your_rate.input, "1.5");
    assert.equal(house.pricing.discount_percent, 50);

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.001954363");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a model without a price is refused and never billed at zero", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "openai/surely-not-a-catalog-model",
      messages: [{ role: "user", content: "hi" }],
    });
    const body = await json(res, 404);
    assert.equal(body.error.code, "model_not_priced");
    assert.equal(t.openai.requests.length, 0, "nothing was forwarded");
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.balance, "1");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("the hold covers a prompt written to the one-hour cache: never charged beyond it", async () => {
  const t = await startProviders();
  try {
    const body = JSON.stringify({
      model: "anthropic/claude-haiku-4-5",
      max_tokens: 1,
      messages: [{ role: "user", content: "🀄".repeat(50) }],
    });
    const bound = new TextEncoder().encode(body).length;
    // Credit for the hold at the input rate ($1/M) alone: (bound × 1 + 1 × 5) µ$, 20 % off.
    const credit = BigInt(bound) * 800n + 4000n;
    const { key, mgmt } = await t.account(`0.${credit.toString().padStart(9, "0")}`);
    // Every prompt token (as many as the body's bytes) written to the one-hour cache ($2/M).
    t.anthropic.scenario = {
      usage: {
        input_tokens: 0,
        cache_creation_input_tokens: bound,
        cache_creation: { ephemeral_5m_input_tokens: 0, ephemeral_1h_input_tokens: bound },
        output_tokens: 1,
      },
    };
    const res = await t.call(key, "POST", "/v1/messages", body);
    const out = await json(res, 402);
    assert.equal(out.error.code, "insufficient_credits");
    assert.equal(t.anthropic.requests.length, 0, "refused before the provider is called");
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("Gemini audio input is billed at the audio rate, streamed or not", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    // gemini-2.5-flash: 1000 audio prompt tokens × $1/M + 100 output × $2.50/M = $0.00125
    // (at the text rate, $0.30/M, it would be $0.00055); 20 % off = $0.001.
    t.gemini.scenario = {
      usage: {
        promptTokenCount: 1000,
        candidatesTokenCount: 100,
        promptTokensDetails: [{ modality: "AUDIO", tokenCount: 1000 }],
      },
    };
    const request = {
      model: "google/gemini-2.5-flash",
      messages: [{
        role: "user",
        // A second of audio is some thousands of bytes: the hold's bound covers its tokens.
        content: [{
          type: "image_url",
          image_url: { url: `data:audio/wav;base64,${"UklGRgAA".repeat(200)}` },
        }],
      }],
    };
    const plain = await json(await t.call(key, "POST", "/v1/chat/completions", request), 200);
    assert.equal(plain.usage.market_cost, 0.00125);
    assert.equal(plain.usage.cost, 0.001);
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      ...request,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = sseData(await res.text());
    const usage = chunks.at(-1)!.usage as Record<string, number>;
    assert.equal(usage.market_cost, 0.00125);
    assert.equal(usage.cost, 0.001);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.002");
    const models = await json(await t.call(key, "GET", "/v1/models"), 200);
    const flash = models.data.find((m: { id: string }) => m.id === "google/gemini-2.5-flash");
    assert.equal(flash.pricing.market.input_audio, "1");
    assert.equal(flash.pricing.your_rate.input_audio, "0.8");
    assert.equal(flash.pricing.market.cache_audio_read, "0.1");
    assert.ok(!models.data.some((m: { id: string }) => m.id === "google/gemini-2.5-flash-image"));
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a request setting both max_tokens and max_completion_tokens is held for the larger: a host that honours max_tokens is billed in full", async () => {
  // Both go upstream as sent; an OpenAI-compatible host may read either, so the hold (and the
  // bound the output is clamped to) is the larger, not the one the router reads first.
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    t.openai.scenario = { usage: { prompt_tokens: 10, completion_tokens: 500 } };
    const res = await t.call(key, "POST", "/v1/chat/completions", {
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
      max_completion_tokens: 1,
      max_tokens: 1000,
    });
    const body = await json(res, 200);
    assert.equal(body.usage.completion_tokens, 500);
    await t.router.flush();
    const row = await json(
      await t.call(mgmt, "GET", `/v1/audit/${res.headers.get("x-request-id")}`),
      200,
    );
    assert.equal(row.completion_tokens, 500);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

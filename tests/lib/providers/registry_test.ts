import assert from "node:assert/strict";
import OpenAI from "openai";
import { json, padding, startRouter } from "../../_helpers.ts";
import { startProviders } from "../../_providers.ts";
import { startFakeOpenAI } from "../../_fakes/openai.ts";
import { startFakeAnthropic } from "../../_fakes/anthropic.ts";
import { Providers } from "../../../lib/providers/registry.ts";
import { loadConfig } from "../../../lib/config.ts";
import { ConfigError } from "../../../lib/errors.ts";

type Row = Record<string, unknown>;

Deno.test("a provider with no key is not offered", async () => {
  const t = await startRouter({
    providersFile: {
      providers: { groq: { base_url: "https://api.groq.com/openai/v1", api_key_env: "GROQ_KEY" } },
      models: { "groq/llama-3.3-70b": { prices: { input_mtok: 0.59, output_mtok: 0.79 } } },
    },
  });
  try {
    const { key } = await t.account("1");
    const models = await json(await t.call(key, "GET", "/v1/models"), 200);
    const ids = (models.data as Row[]).map((m) => String(m.id));
    assert.ok(ids.includes("openai/gpt-4o-mini"));
    assert.ok(!ids.some((id) => /^(anthropic|google|groq)\//.test(id)), ids.join(","));
    for (const model of ["anthropic/claude-haiku-4-5", "claude-haiku-4-5", "groq/llama-3.3-70b"]) {
      const res = await t.call(key, "POST", "/v1/chat/completions", {
        model,
        ...padding(2000),
        messages: [{ role: "user", content: "hi" }],
      });
      assert.equal((await json(res, 404)).error.code, "model_not_found", model);
    }
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an OpenAI-compatible host from PROVIDERS_FILE is offered, priced and sent its own key", async () => {
  const host = startFakeOpenAI();
  const t = await startRouter({
    env: { LOCAL_LLM_KEY: "local-secret" },
    providersFile: {
      providers: { local: { base_url: host.url, api_key_env: "LOCAL_LLM_KEY" } },
      models: {
        "local/llama-3.1-8b": { prices: { input_mtok: "0.2", output_mtok: "0.4" } },
        "local/unpriced-model": { max_output_tokens: 100 },
      },
    },
  });
  try {
    const { key, mgmt } = await t.account("1");
    // 1000 input × 0.2 + 500 output × 0.4 = 400 µ$ market; 20 % off = $0.00032.
    host.scenario = { usage: { prompt_tokens: 1000, completion_tokens: 500 } };
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1` });
    const res = await client.chat.completions.create({
      model: "local/llama-3.1-8b",
      ...padding(2000),
      messages: [{ role: "user", content: "hello" }],
    });
    assert.equal(res.choices[0].message.content, "Echo: hello");
    assert.equal((res.usage as unknown as Row).cost, 0.00032);
    assert.equal(host.auth[0], "Bearer local-secret");
    assert.equal(host.requests[0].model, "llama-3.1-8b");
    assert.equal(t.openai.requests.length, 0);

    const models = await json(await t.call(key, "GET", "/v1/models"), 200);
    const ids = (models.data as Row[]).map((m) => m.id);
    assert.ok(ids.includes("local/llama-3.1-8b"));
    assert.ok(!ids.includes("local/unpriced-model"), "no price, not offered");
    const unpriced = await t.call(key, "POST", "/v1/chat/completions", {
      model: "local/unpriced-model",
      ...padding(2000),
      messages: [{ role: "user", content: "hi" }],
    });
    assert.equal((await json(unpriced, 404)).error.code, "model_not_priced");

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.00032");
    await t.assertBooks();
  } finally {
    await t.close();
    await host.close();
  }
});

Deno.test("/v1/models lists every offered provider's models with market price and your rate", async () => {
  const t = await startProviders();
  try {
    const { key } = await t.account("1");
    const models = await json(await t.call(key, "GET", "/v1/models"), 200);
    const byId = new Map((models.data as Row[]).map((m) => [m.id, m]));
    const sonnet = byId.get("anthropic/claude-sonnet-4-5") as Row;
    assert.equal(sonnet.owned_by, "anthropic");
    const pricing = sonnet.pricing as Record<string, Record<string, string>>;
    assert.equal(pricing.market.input, "3");
    assert.equal(pricing.your_rate.input, "2.4");
    assert.equal(pricing.market.cache_read, "0.3");
    assert.equal(pricing.market.cache_write, "3.75");
    assert.equal(pricing.market.cache_write_1h, "6");
    assert.ok(byId.has("google/gemini-2.5-flash"));
    // Google's catalog also prices Vertex AI's Claude models, which the Gemini API does not serve.
    assert.ok(![...byId.keys()].some((id) => String(id).startsWith("google/claude")));
    assert.ok(![...byId.keys()].some((id) => String(id).startsWith("google/gemini-embedding")));
    assert.ok(byId.has("openai/gpt-4o-mini"));
  } finally {
    await t.close();
  }
});

Deno.test("provider base URLs must be https, or http on loopback", () => {
  const config = loadConfig({ ADMIN_TOKEN: "x".repeat(20) });
  const file = (base_url: string) => ({
    providers: { vllm: { base_url, api_key_env: "VLLM_KEY" } },
  });
  const env = { VLLM_KEY: "k" };
  assert.throws(() => new Providers(config, file("http://10.0.0.5:8000/v1"), env), ConfigError);
  assert.throws(() => new Providers(config, file("ftp://example.com"), env), ConfigError);
  assert.deepEqual(new Providers(config, file("http://127.0.0.1:8000/v1"), env).names(), [
    "vllm",
  ]);
  assert.deepEqual(new Providers(config, file("https://vllm.example.com/v1"), env).names(), [
    "vllm",
  ]);
  assert.throws(
    () => new Providers(config, { fallbacks: { "gpt-4o": ["openai/gpt-4o-mini"] } }, env),
    /PROVIDERS_FILE: fallbacks\.gpt-4o/,
  );
  assert.throws(
    () =>
      new Providers(
        loadConfig({ ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: "http://evil.example" }),
        null,
        {},
      ),
    /ANTHROPIC_BASE_URL/,
  );
});

Deno.test("a PROVIDERS_FILE host of kind anthropic serves chat and native Messages", async () => {
  const host = startFakeAnthropic();
  const t = await startRouter({
    env: { CLAUDE_EU_KEY: "eu-secret" },
    providersFile: {
      providers: {
        "claude-eu": { kind: "anthropic", base_url: host.url, api_key_env: "CLAUDE_EU_KEY" },
      },
    },
  });
  try {
    const { key, mgmt } = await t.account("1");
    // claude-haiku-4-5 list prices ($/M): input 1, output 5. 1000 input + 200 output tokens:
    // market = 1000×1 + 200×5 = 2000 µ$ = $0.002; 20 % off = $0.0016.
    host.scenario = { usage: { input_tokens: 1000, output_tokens: 200 } };
    const chat = await json(
      await t.call(key, "POST", "/v1/chat/completions", {
        model: "claude-eu/claude-haiku-4-5",
        ...padding(2000),
        messages: [{ role: "user", content: "hi" }],
      }),
      200,
    );
    assert.equal(chat.choices[0].message.content, "Echo: hi");
    assert.equal(chat.usage.cost, 0.0016, "priced from the anthropic catalog");
    const native = await json(
      await t.call(key, "POST", "/v1/messages", {
        model: "claude-eu/claude-haiku-4-5",
        max_tokens: 1000,
        ...padding(2000),
        messages: [{ role: "user", content: "hey" }],
      }),
      200,
    );
    assert.equal(native.usage.cost, 0.0016);
    assert.deepEqual(host.headers.map((h) => h.get("x-api-key")), ["eu-secret", "eu-secret"]);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.0032");
    await t.assertBooks();
  } finally {
    await t.close();
    await host.close();
  }
});

import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { json } from "../_helpers.ts";
import { startProviders } from "../providers/_setup.ts";
import { lookupCatalog, priceWorstCase } from "../../lib/pricing.ts";
import { DEFAULT_WEB_SEARCH_BOUND } from "../../lib/proxy/tokens.ts";

const WEB_SEARCH = { type: "web_search_20250305", name: "web_search" } as const;
const hi = [{ role: "user" as const, content: "what is new?" }];

/** An amount of nano-USD as the API's USD string. */
const usd = (n: bigint) => {
  const s = n.toString().padStart(10, "0");
  return `${s.slice(0, -9)}.${s.slice(-9)}`.replace(/\.?0+$/, "");
};

Deno.test("Anthropic web searches are billed at the catalog fee, streamed or not", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    // claude-haiku-4-5: 1000 input × $1/M + 200 output × $5/M + 3 searches × $10/1000
    // = $0.002 + $0.03 = $0.032 market; 20 % off = $0.0256.
    t.anthropic.scenario = {
      usage: {
        input_tokens: 1000,
        output_tokens: 200,
        cache_read_input_tokens: 0,
        cache_creation_input_tokens: 0,
        server_tool_use: { web_search_requests: 3, web_fetch_requests: 0 },
      },
    };
    const client = new Anthropic({ apiKey: key, baseURL: t.url, maxRetries: 0 });
    const request = {
      model: "anthropic/claude-haiku-4-5",
      max_tokens: 300,
      messages: hi,
      tools: [{ ...WEB_SEARCH, max_uses: 5 }],
    };
    const plain = await client.messages.create(request);
    const usage = plain.usage as unknown as Record<string, unknown>;
    assert.deepEqual(usage.server_tool_use, { web_search_requests: 3, web_fetch_requests: 0 });
    assert.equal(usage.market_cost, 0.032);
    assert.equal(usage.cost, 0.0256);
    assert.deepEqual(t.anthropic.requests[0].tools, [{ ...WEB_SEARCH, max_uses: 5 }]);

    const stream = await client.messages.create({ ...request, stream: true });
    let delta: Record<string, unknown> | null = null;
    for await (const event of stream) {
      if (event.type === "message_delta") delta = event.usage as unknown as Record<string, unknown>;
    }
    assert.deepEqual(delta!.server_tool_use, { web_search_requests: 3, web_fetch_requests: 0 });
    assert.equal(delta!.market_cost, 0.032);
    assert.equal(delta!.cost, 0.0256);

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.0512");
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
    const tx = await json(await t.call(mgmt, "GET", "/v1/transactions?type=usage_debit"), 200);
    assert.deepEqual(tx.data.map((e: { amount: string }) => e.amount), ["-0.0256", "-0.0256"]);
  } finally {
    await t.close();
  }
});

Deno.test("OpenAI Responses web_search_call items are billed one search each", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    // gpt-4o-mini: 1000 input × $0.15/M + 100 output × $0.60/M + 4 searches × $10/1000
    // = $0.00021 + $0.04 = $0.04021 market; 20 % off = $0.032168.
    t.openai.scenario = {
      webSearchCalls: 4,
      responsesUsage: {
        input_tokens: 1000,
        input_tokens_details: { cached_tokens: 0 },
        output_tokens: 100,
        output_tokens_details: { reasoning_tokens: 0 },
      },
    };
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 });
    const request = {
      model: "openai/gpt-4o-mini",
      input: "what is new?",
      tools: [{ type: "web_search" as const }],
    };
    const plain = await client.responses.create(request);
    assert.equal(plain.output.filter((o) => o.type === "web_search_call").length, 4);
    const usage = plain.usage as unknown as Record<string, unknown>;
    assert.equal(usage.market_cost, 0.04021);
    assert.equal(usage.cost, 0.032168);

    const stream = await client.responses.create({ ...request, stream: true });
    let final: Record<string, unknown> | null = null;
    for await (const event of stream) {
      if (event.type === "response.completed") {
        final = event.response.usage as unknown as Record<string, unknown>;
      }
    }
    assert.equal(final!.market_cost, 0.04021);
    assert.equal(final!.cost, 0.032168);

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.064336");
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("the hold covers max_uses searches; more than held is capped at the balance", async () => {
  const t = await startProviders();
  try {
    const prices = lookupCatalog("anthropic", "claude-haiku-4-5", new Date())!.prices;
    const body = (maxUses: number) =>
      JSON.stringify({
        model: "anthropic/claude-haiku-4-5",
        max_tokens: 10,
        messages: hi,
        tools: [{ ...WEB_SEARCH, max_uses: maxUses }],
      });
    const bound = new TextEncoder().encode(body(5)).length;
    const hold = priceWorstCase(bound, 10, prices, 2000, 5).cost;
    // 5 searches at $10/1000, 20 % off: $0.04 of the hold.
    assert.equal(hold - priceWorstCase(bound, 10, prices, 2000).cost, 40_000_000n);

    // A nano-dollar short of the hold: refused before the provider is called.
    const short = await t.account(usd(hold - 1n));
    const refused = await json(await t.call(short.key, "POST", "/v1/messages", body(5)), 402);
    assert.equal(refused.error.code, "insufficient_credits");
    assert.match(refused.error.message, /5 web searches/);
    assert.equal(t.anthropic.requests.length, 0);

    // Exactly the hold: served. The provider reports 7 searches, more than max_uses allows
    // (and more than held): the charge stops at the balance left, never below zero.
    t.anthropic.scenario = {
      usage: {
        input_tokens: 20,
        output_tokens: 10,
        server_tool_use: { web_search_requests: 7 },
      },
    };
    const exact = await t.account(usd(hold));
    const served = await json(await t.call(exact.key, "POST", "/v1/messages", body(5)), 200);
    assert.equal(served.usage.server_tool_use.web_search_requests, 7);
    const credits = await json(await t.call(exact.mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.balance, "0");
    assert.equal(credits.reserved, "0");

    // Without max_uses the default bound is held.
    const none = JSON.stringify({
      model: "anthropic/claude-haiku-4-5",
      max_tokens: 10,
      messages: hi,
      tools: [WEB_SEARCH],
    });
    const holdNone = priceWorstCase(
      new TextEncoder().encode(none).length,
      10,
      prices,
      2000,
      DEFAULT_WEB_SEARCH_BOUND,
    ).cost;
    const low = await t.account(usd(holdNone - 1n));
    await json(await t.call(low.key, "POST", "/v1/messages", none), 402);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

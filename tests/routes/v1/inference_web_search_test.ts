import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { json, padding } from "../../_helpers.ts";
import { startProviders } from "../../_providers.ts";
import { lookupCatalog, priceUsage, priceWorstCase, ZERO_USAGE } from "../../../lib/pricing.ts";
import { anthropic } from "../../../lib/providers/anthropic/mod.ts";
import { DEFAULT_WEB_SEARCH_BOUND, Prompt } from "../../../lib/proxy/tokens.ts";

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
    // The hold covers each search's results as input, up to a context window each.
    const { key, mgmt } = await t.account("10");
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
      ...(padding() as object),
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
      ...padding(),
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

type Row = Record<string, unknown>;

/** The audit rows of an account, newest first, once the usage events are recorded. */
async function auditRows(t: Awaited<ReturnType<typeof startProviders>>, mgmt: string) {
  await t.router.flush();
  return (await json(await t.call(mgmt, "GET", "/v1/audit"), 200)).data as Row[];
}

/** What a row's tokens plus `searches` web searches cost on `provider/model`, 20 % off. */
function priced(row: Row, provider: string, model: string, searches: number) {
  const prices = lookupCatalog(provider, model, new Date())!.prices;
  const u = {
    ...ZERO_USAGE,
    prompt: Number(row.prompt_tokens),
    completion: Number(row.completion_tokens),
    webSearches: searches,
  };
  const { cost, market } = priceUsage(u, prices, 2000);
  return { cost: usd(cost), market: usd(market) };
}

Deno.test("a Responses stream cut after two completed web searches bills both searches", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("1");
    // Events: response.created, then per search output_item.added, web_search_call.completed and
    // output_item.done (6), then the text deltas. The connection is lost after the first delta,
    // then (second request) before any text at all.
    for (const stallAfter of [8, 7]) {
      t.openai.scenario = { webSearchCalls: 2, content: "abcdefghijkl", stallAfter };
      const res = await t.call(key, "POST", "/v1/responses", {
        model: "openai/gpt-4o-mini",
        input: "what is new?",
        tools: [{ type: "web_search" }],
        stream: true,
      });
      const text = await res.text();
      assert.equal((text.match(/"type":"response\.output_item\.done"/g) ?? []).length, 2);
      assert.match(text, /upstream_error/, "the stream ends with the router's error");

      const [row] = await auditRows(t, mgmt);
      assert.equal(row.error_code, "upstream_stream_failed");
      assert.ok(Number(row.prompt_tokens) > 0, "the input counted");
      assert.equal(Number(row.completion_tokens) > 0, stallAfter === 8, "the output streamed");
      const want = priced(row, "openai", "gpt-4o-mini", 2);
      assert.equal(row.cost, want.cost, `stallAfter ${stallAfter}`);
      assert.equal(row.market_cost, want.market);
      // Two searches at $10/1000 are $0.02 of the market cost.
      assert.ok(Number(row.market_cost) > 0.02);
    }
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("an Anthropic stream cut before message_delta bills the searches whose results came", async () => {
  const t = await startProviders();
  try {
    const { key, mgmt } = await t.account("10");
    // message_start, then 5 events per search: the connection is lost after the second result.
    t.anthropic.scenario = {
      webSearches: 2,
      breakAfter: 11,
      usage: {
        input_tokens: 1000,
        output_tokens: 200,
        server_tool_use: { web_search_requests: 2 },
      },
    };
    const res = await t.call(key, "POST", "/v1/messages", {
      model: "anthropic/claude-haiku-4-5",
      max_tokens: 300,
      ...padding(),
      messages: hi,
      tools: [{ ...WEB_SEARCH, max_uses: 5 }],
      stream: true,
    });
    const text = await res.text();
    assert.equal((text.match(/"type":"web_search_tool_result"/g) ?? []).length, 2);
    assert.match(text, /event: error\n/);

    const [row] = await auditRows(t, mgmt);
    assert.equal(row.error_code, "upstream_stream_failed");
    // The input message_start reported, and each search's results (which came after it) at
    // most a context window (200 000 tokens) each: no honest count of them is possible.
    assert.equal(row.prompt_tokens, 1000 + 2 * 200_000);
    const want = priced(row, "anthropic", "claude-haiku-4-5", 2);
    assert.equal(row.cost, want.cost);
    assert.equal(row.market_cost, want.market);
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("the hold covers max_uses searches and their results; more searches are billed as held", async () => {
  const t = await startProviders();
  try {
    const catalog = lookupCatalog("anthropic", "claude-haiku-4-5", new Date())!;
    const prices = catalog.prices;
    const haiku = {
      adapter: anthropic,
      catalogId: catalog.id,
      contextWindow: catalog.contextWindow,
    };
    const body = (maxUses: number) =>
      JSON.stringify({
        model: "anthropic/claude-haiku-4-5",
        max_tokens: 10,
        messages: hi,
        tools: [{ ...WEB_SEARCH, max_uses: maxUses }],
      });
    /** The hold's prompt bound: the body's bytes, the tool prompts, a context window a search. */
    const bound = (raw: string, searches: number) =>
      new Prompt(raw, JSON.parse(raw)).bound([haiku], searches);
    assert.ok(bound(body(5), 5) > 5 * 200_000);
    const hold = priceWorstCase(bound(body(5), 5), 10, prices, 2000, 5).cost;
    // 5 searches at $10/1000, 20 % off: $0.04 of the hold.
    assert.equal(hold - priceWorstCase(bound(body(5), 5), 10, prices, 2000).cost, 40_000_000n);

    // A nano-dollar short of the hold: refused before the provider is called.
    const short = await t.account(usd(hold - 1n));
    const refused = await json(await t.call(short.key, "POST", "/v1/messages", body(5)), 402);
    assert.equal(refused.error.code, "insufficient_credits");
    assert.match(refused.error.message, /5 web searches/);
    assert.equal(t.anthropic.requests.length, 0);

    // Exactly the hold: served. The provider reports 7 searches, more than max_uses allows
    // (and more than held): 5 are billed and shown, the figure the hold was priced at.
    t.anthropic.scenario = {
      usage: {
        input_tokens: 20,
        output_tokens: 10,
        server_tool_use: { web_search_requests: 7 },
      },
    };
    const exact = await t.account(usd(hold));
    const served = await json(await t.call(exact.key, "POST", "/v1/messages", body(5)), 200);
    assert.equal(served.usage.server_tool_use.web_search_requests, 5);
    const charged = priceUsage(
      { ...ZERO_USAGE, prompt: 20, completion: 10, webSearches: 5 },
      prices,
      2000,
    );
    assert.equal(served.usage.cost, Number(charged.cost) / 1e9);
    const credits = await json(await t.call(exact.mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.balance, usd(hold - charged.cost));
    assert.equal(credits.reserved, "0");

    // Without max_uses the default bound is held.
    const none = JSON.stringify({
      model: "anthropic/claude-haiku-4-5",
      max_tokens: 10,
      messages: hi,
      tools: [WEB_SEARCH],
    });
    const holdNone = priceWorstCase(
      bound(none, DEFAULT_WEB_SEARCH_BOUND),
      10,
      prices,
      2000,
      DEFAULT_WEB_SEARCH_BOUND,
    ).cost;
    const low = await t.account(usd(holdNone - 1n));
    await json(await t.call(low.key, "POST", "/v1/messages", none), 402);
    const enough = await t.account(usd(holdNone));
    await json(await t.call(enough.key, "POST", "/v1/messages", none), 200);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("a Messages request whose native Anthropic fallback answers holds and bills that model's searches, streamed or not", async () => {
  // The primary (an OpenAI model, reached by translation) runs no web search; its operator
  // fallback, an Anthropic model reached natively, runs the request's web search tool.
  const t = await startProviders({
    providersFile: {
      retry: { max_retries: 0, backoff_ms: 1 },
      fallbacks: { "openai/gpt-4o-mini": ["anthropic/claude-haiku-4-5"] },
    },
  });
  try {
    const { key, mgmt } = await t.account("10");
    t.openai.scenario = { status: 500 };
    t.anthropic.scenario = {
      usage: {
        input_tokens: 1000,
        output_tokens: 200,
        server_tool_use: { web_search_requests: 3 },
      },
    };
    const client = new Anthropic({ apiKey: key, baseURL: t.url, maxRetries: 0 });
    const request = {
      model: "openai/gpt-4o-mini",
      max_tokens: 300,
      ...(padding() as object),
      messages: hi,
      tools: [{ ...WEB_SEARCH, max_uses: 5 }],
    };
    // claude-haiku-4-5: 1000 input × $1/M + 200 output × $5/M + 3 searches × $10/1000
    // = $0.032 market; 20 % off = $0.0256.
    const plain = await client.messages.create(request);
    const usage = plain.usage as unknown as Record<string, unknown>;
    assert.deepEqual(usage.server_tool_use, { web_search_requests: 3 });
    assert.equal(usage.market_cost, 0.032);
    assert.equal(usage.cost, 0.0256);
    assert.deepEqual(t.anthropic.requests[0].tools, [{ ...WEB_SEARCH, max_uses: 5 }]);

    const stream = await client.messages.create({ ...request, stream: true });
    let delta: Record<string, unknown> | null = null;
    for await (const event of stream) {
      if (event.type === "message_delta") delta = event.usage as unknown as Record<string, unknown>;
    }
    assert.deepEqual(delta!.server_tool_use, { web_search_requests: 3 });
    assert.equal(delta!.cost, 0.0256);

    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.total_used, "0.0512");
    assert.equal(credits.reserved, "0");
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

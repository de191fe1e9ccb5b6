import assert from "node:assert/strict";
import { calcPrice } from "@pydantic/genai-prices";
import {
  lookupCatalog,
  mtokToNanos,
  type NormalizedUsage,
  priceTableFrom,
  priceUsage,
  priceWorstCase,
  ZERO_USAGE,
} from "../../lib/pricing.ts";

const usage = (u: Partial<NormalizedUsage>): NormalizedUsage => ({ ...ZERO_USAGE, ...u });
const NANO = 1_000_000_000;

Deno.test("gpt-4o-mini: cached tokens at the cached rate, reasoning inside output", () => {
  const p = lookupCatalog("openai", "gpt-4o-mini", new Date())!.prices;
  // 600 × $0.15/M + 400 × $0.075/M + 200 × $0.60/M = $0.00024; 20 % off = $0.000192.
  const c = priceUsage(
    usage({ prompt: 1000, cached: 400, completion: 200, reasoning: 50 }),
    p,
    2000,
  );
  assert.deepEqual(c, { market: 240_000n, cost: 192_000n });
});

Deno.test("claude-sonnet-4-5 tiers switch above 200k input tokens, every token class with them", () => {
  const p = lookupCatalog("anthropic", "claude-sonnet-4-5", new Date())!.prices;
  // At the threshold the base rates apply: 200000 × $3/M + 1000 × $15/M.
  assert.equal(priceUsage(usage({ prompt: 200_000, completion: 1000 }), p, 0).market, 615_000_000n);
  // One token more and the whole request is at the higher tier: 200001 × $6/M + 1000 × $22.5/M.
  assert.equal(
    priceUsage(usage({ prompt: 200_001, completion: 1000 }), p, 0).market,
    1_222_506_000n,
  );
  // 180000 uncached × $6 + 50000 cache reads × $0.6 + 15000 5-minute writes × $7.5
  // + 5000 one-hour writes × $12 + 1000 output × $22.5 (per M) = $1.305; 20 % off = $1.044.
  const u = usage({
    prompt: 250_000,
    cached: 50_000,
    cacheWrite: 20_000,
    cacheWrite1h: 5_000,
    completion: 1000,
  });
  assert.deepEqual(priceUsage(u, p, 2000), { market: 1_305_000_000n, cost: 1_044_000_000n });
});

Deno.test("gemini-2.5-pro tiered prices agree with the catalog's own calculation", () => {
  const when = new Date();
  const p = lookupCatalog("google", "gemini-2.5-pro", when)!.prices;
  for (
    const [prompt, cached, completion] of [
      [1000, 0, 500],
      [199_999, 100_000, 7],
      [200_000, 0, 1],
      [200_001, 3, 65_536],
      [1_000_000, 999_999, 12_345],
    ]
  ) {
    const ours = priceUsage(usage({ prompt, cached, completion }), p, 0).market;
    const theirs = calcPrice(
      { input_tokens: prompt, cache_read_tokens: cached, output_tokens: completion },
      "gemini-2.5-pro",
      { providerId: "google", timestamp: when },
    )!.total_price;
    // The catalog computes in floating point; ours is exact and within a nano-dollar of it.
    assert.ok(
      Math.abs(Number(ours) - theirs * NANO) <= 1,
      `${prompt}/${cached}/${completion}: ${ours} vs ${theirs}`,
    );
  }
});

Deno.test("fractional nano-dollar prices are summed first and rounded once, half away from zero", () => {
  // $0.0015 per million tokens = 1.5 nano-USD per token.
  const p = priceTableFrom({ input_mtok: "0.0015", output_mtok: "0.0025" })!;
  assert.deepEqual(priceUsage(usage({ prompt: 1 }), p, 0), { market: 2n, cost: 2n });
  assert.deepEqual(priceUsage(usage({ prompt: 3 }), p, 0), { market: 5n, cost: 5n });
  // 1 × 1.5 + 1 × 2.5 = 4 exactly: no per-class rounding (which would give 2 + 3 = 5).
  assert.deepEqual(priceUsage(usage({ prompt: 1, completion: 1 }), p, 0), { market: 4n, cost: 4n });
  // The discount applies to the exact sum: 4 × 0.8 = 3.2 → 3, not round(4) × 0.8.
  assert.deepEqual(priceUsage(usage({ prompt: 1, completion: 1 }), p, 2000), {
    market: 4n,
    cost: 3n,
  });
  // 1.5 × 0.75 = 1.125 → 1.
  assert.deepEqual(priceUsage(usage({ prompt: 1 }), p, 2500), { market: 2n, cost: 1n });
  assert.deepEqual(priceUsage(ZERO_USAGE, p, 2000), { market: 0n, cost: 0n });
});

Deno.test("operator prices given as decimal strings convert exactly", () => {
  assert.equal(mtokToNanos("0.075"), 75_000_000n);
  assert.equal(mtokToNanos(0.075), 75_000_000n);
  assert.equal(mtokToNanos("0.000000001"), 1n);
  // Sixteen significant digits do not survive a float; a string price must stay exact.
  assert.equal(mtokToNanos("1234567.123456789"), 1_234_567_123_456_789n);
  assert.throws(() => mtokToNanos("-1"), RangeError);
  assert.throws(() => mtokToNanos("abc"), RangeError);
});

Deno.test("a missing cache rate falls back to the input rate; an embedding model has no output rate", () => {
  const p = priceTableFrom({ input_mtok: 2, output_mtok: 8 })!;
  // 100 cache reads billed as input: 100 × $2/M + 10 × $8/M.
  assert.equal(
    priceUsage(usage({ prompt: 100, cached: 100, completion: 10 }), p, 0).market,
    280_000n,
  );
  const e = lookupCatalog("openai", "text-embedding-3-small", new Date())!.prices;
  assert.equal(e.output.base, 0n);
  assert.equal(priceUsage(usage({ prompt: 1_000_000 }), e, 0).market, 20_000_000n);
  assert.equal(priceTableFrom({ output_mtok: 1 }), null, "no input price means no price");
});

Deno.test("the worst case covers every split of the prompt: one-hour cache writes cost most", () => {
  const when = new Date("2026-01-15T12:00:00Z");
  const haiku = lookupCatalog("anthropic", "claude-haiku-4-5", when)!.prices;
  // 10000 prompt tokens at the one-hour write rate $2/M + 100 output × $5/M = $0.0205; 20 % off.
  assert.deepEqual(priceWorstCase(10_000, 100, haiku, 2000), {
    market: 20_500_000n,
    cost: 16_400_000n,
  });
  const split = usage({
    prompt: 10_000,
    cacheWrite: 10_000,
    cacheWrite1h: 10_000,
    completion: 100,
  });
  assert.deepEqual(priceUsage(split, haiku, 2000), priceWorstCase(10_000, 100, haiku, 2000));
  // A tiered model: a prompt bound above 200k holds at the upper tier, one-hour writes $12/M and
  // output $22.5/M: 200001 × 12 + 1000 × 22.5 = 2422512 µ$ = $2.422512.
  const sonnet = lookupCatalog("anthropic", "claude-sonnet-4-5", when)!.prices;
  assert.equal(priceWorstCase(200_001, 1000, sonnet, 0).market, 2_422_512_000n);
  assert.equal(priceWorstCase(200_000, 1000, sonnet, 0).market, 1_215_000_000n);
  // Without cache write prices (OpenAI) the input rate is the dearest: 1000 × $0.15 + 10 × $0.6.
  const mini = lookupCatalog("openai", "gpt-4o-mini", when)!.prices;
  assert.equal(priceWorstCase(1000, 10, mini, 0).market, 156_000n);
  for (
    const [prompt, cached, write, write1h, completion] of [
      [200_000, 0, 200_000, 200_000, 64_000],
      [200_001, 100_000, 100_001, 50_000, 1],
      [250_000, 250_000, 0, 0, 0],
    ]
  ) {
    const u = usage({ prompt, cached, cacheWrite: write, cacheWrite1h: write1h, completion });
    assert.ok(
      priceUsage(u, sonnet, 2000).cost <= priceWorstCase(prompt, completion, sonnet, 2000).cost,
    );
  }
});

Deno.test("audio tokens at the catalog's audio rates, cached audio at the cached audio rate", () => {
  const when = new Date("2026-01-15T12:00:00Z");
  const flash = lookupCatalog("google", "gemini-2.5-flash", when)!.prices;
  // gemini-2.5-flash ($/M): input 0.30, cache read 0.03, output 2.50, audio input 1.00, audio
  // cache read 0.10. A prompt of 10000 (6000 audio), 2000 cache reads (500 of them audio):
  // 500 × 0.10 + 1500 × 0.03 + 5500 × 1.00 + 2500 × 0.30 + 1500 × 2.50 = 10095 µ$.
  const u = usage({
    prompt: 10_000,
    cached: 2000,
    audioIn: 6000,
    audioCached: 500,
    completion: 1500,
    reasoning: 1000,
  });
  assert.deepEqual(priceUsage(u, flash, 2000), { market: 10_095_000n, cost: 8_076_000n });
  const theirs = calcPrice(
    {
      input_tokens: 10_000,
      cache_read_tokens: 2000,
      input_audio_tokens: 6000,
      cache_audio_read_tokens: 500,
      output_tokens: 1500,
    },
    "gemini-2.5-flash",
    { providerId: "google", timestamp: when },
  )!.total_price;
  assert.ok(Math.abs(10_095_000 - theirs * NANO) <= 1);

  // gpt-audio ($/M): input 2.5, output 10, audio input 32, audio output 64:
  // 200 × 2.5 + 800 × 32 + 100 × 10 + 400 × 64 = 52700 µ$.
  const audio = lookupCatalog("openai", "gpt-audio", when)!.prices;
  const a = usage({ prompt: 1000, audioIn: 800, completion: 500, audioOut: 400 });
  assert.equal(priceUsage(a, audio, 0).market, 52_700_000n);
  // The hold prices a prompt and output that may be all audio at the audio rates.
  assert.equal(priceWorstCase(1000, 500, audio, 0).market, 64_000_000n);
  // A model without audio prices bills audio as text, as the catalog does.
  const mini = lookupCatalog("openai", "gpt-4o-mini", when)!.prices;
  assert.equal(priceUsage(usage({ prompt: 1000, audioIn: 1000 }), mini, 0).market, 150_000n);
});

Deno.test("a model the catalog prices by units the router does not bill is refused", () => {
  const when = new Date("2026-01-15T12:00:00Z");
  // Image output ($30/M against $2.50/M text) and image tokens would be under-billed as text.
  assert.equal(lookupCatalog("google", "gemini-2.5-flash-image", when), null);
  assert.equal(lookupCatalog("openai", "gpt-image-1", when), null);
  assert.equal(lookupCatalog("openai", "whisper-1", when), null);
  // Tool fees alone do not refuse a chat model.
  assert.ok(lookupCatalog("openai", "gpt-4.1", when));
  assert.ok(lookupCatalog("anthropic", "claude-haiku-4-5", when));
});

Deno.test("web searches are billed at the catalog's fee per thousand, after the discount", () => {
  const p = lookupCatalog("anthropic", "claude-haiku-4-5", new Date())!.prices;
  assert.equal(p.webSearchK, 10_000_000_000n, "$10 per 1000 searches");
  // 1000 × $1/M + 3 searches × $0.01 = $0.031; 20 % off = $0.0248.
  assert.deepEqual(priceUsage(usage({ prompt: 1000, webSearches: 3 }), p, 2000), {
    market: 31_000_000n,
    cost: 24_800_000n,
  });
  // A fee of a fraction of a nano-dollar per search is summed before the one division.
  const odd = priceTableFrom({ input_mtok: 1, web_searches_kcount: "0.000000001" })!;
  assert.equal(priceUsage(usage({ webSearches: 1499 }), odd, 0).market, 1n);
  assert.equal(priceUsage(usage({ webSearches: 1500 }), odd, 0).market, 2n);
  // The worst case holds every search allowed at the same fee.
  assert.equal(
    priceWorstCase(0, 0, p, 2000, 5).cost - priceWorstCase(0, 0, p, 2000).cost,
    40_000_000n,
  );
  // A model whose catalog entry lists no search fee keeps billing searches at nothing.
  const none = lookupCatalog("anthropic", "claude-3-haiku", new Date())!;
  assert.equal(none.prices.webSearchK, undefined);
  assert.equal(priceUsage(usage({ webSearches: 3 }), none.prices, 0).market, 0n);
});

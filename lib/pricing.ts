import { calcPrice, findProvider, type ModelPrice } from "@pydantic/genai-prices";
import { divRound, parseUsd } from "./money.ts";

/** A price per million tokens in nano-USD, possibly tiered by the request's total input tokens. */
export interface Rate {
  base: bigint;
  /** Ascending; a tier applies when the request's input tokens exceed `start`. */
  tiers: { start: number; price: bigint }[];
}

/** Market prices of one model, nano-USD per million tokens. Missing cache rates fall back to input. */
export interface PriceTable {
  input: Rate;
  output: Rate;
  cacheRead?: Rate;
  cacheWrite?: Rate;
  cacheWrite1h?: Rate;
  /** Audio input, audio cache reads and audio output, where the catalog prices them apart. */
  inputAudio?: Rate;
  cacheAudioRead?: Rate;
  outputAudio?: Rate;
  /**
   * The provider's server-side web search fee, nano-USD per thousand searches (the catalog's
   * `web_searches_kcount`). Absent where the catalog lists none: searches are then not billed.
   */
  webSearchK?: bigint;
}

/**
 * Token counts with one meaning for every provider: `prompt` is all input (uncached, cache reads
 * and cache writes); `cached` the cache reads; `cacheWrite` all cache writes, `cacheWrite1h` the
 * part of them written for one hour; `completion` all output, reasoning included.
 */
export interface NormalizedUsage {
  prompt: number;
  completion: number;
  cached: number;
  cacheWrite: number;
  cacheWrite1h: number;
  reasoning: number;
  /**
   * The audio parts, where the provider reports them: `audioIn` of the prompt (cache reads
   * included), `audioCached` of the cache reads, `audioOut` of the completion.
   */
  audioIn?: number;
  audioCached?: number;
  audioOut?: number;
  /**
   * Server-side web searches the provider ran for the request (Anthropic's
   * `server_tool_use.web_search_requests`, OpenAI Responses' `web_search_call` items), billed at
   * the model's per-search fee on top of the tokens.
   */
  webSearches?: number;
}

export const ZERO_USAGE: NormalizedUsage = {
  prompt: 0,
  completion: 0,
  cached: 0,
  cacheWrite: 0,
  cacheWrite1h: 0,
  reasoning: 0,
};

export interface Cost {
  /** What the customer pays: market less the discount. */
  cost: bigint;
  /** What the provider's list price charges. */
  market: bigint;
}

const MILLION = 1_000_000n;
const BPS = 10_000n;
/** A fee per thousand searches, scaled to the per-million sum priceUsage divides once. */
const PER_K_TO_PER_M = 1_000n;

/** The web search fee of `searches`, in the same nano-USD per million units as token sums. */
const searchSum = (searches: number, p: PriceTable) =>
  BigInt(Math.max(0, Math.floor(searches))) * (p.webSearchK ?? 0n) * PER_K_TO_PER_M;

function rateAt(rate: Rate, inputTokens: number): bigint {
  let price = rate.base;
  for (const t of rate.tiers) if (inputTokens > t.start) price = t.price;
  return price;
}

/**
 * The kinds of usage in `u` that `p` has no rate for (`audio input`, `audio output`, `web
 * search`): such usage is never priced at another kind's rate (the router bills the hold for it,
 * and refuses requests that ask for it up front). Cache rates are not among them: a missing cache
 * rate is the input rate, which a cache read never exceeds.
 */
export function unpricedKinds(u: NormalizedUsage, p: PriceTable): string[] {
  const out: string[] = [];
  if ((u.audioIn ?? 0) > 0 && !p.inputAudio) out.push("audio input");
  if ((u.audioOut ?? 0) > 0 && !p.outputAudio) out.push("audio output");
  if ((u.webSearches ?? 0) > 0 && p.webSearchK === undefined) out.push("web search");
  return out;
}

/**
 * Prices a request exactly: Σ tokens × rate (and web searches × their fee) is summed in
 * nano-USD·units per million first and divided once, so no per-class rounding accumulates; the
 * discount is applied to that sum. Usage of a kind `unpricedKinds` names must not come here.
 */
export function priceUsage(u: NormalizedUsage, p: PriceTable, discountBps: number): Cost {
  const cacheWrite1h = Math.min(u.cacheWrite1h, u.cacheWrite);
  const cacheWrite5m = u.cacheWrite - cacheWrite1h;
  // Audio is a part of the prompt (its cache reads a part of both) and of the completion.
  const audioCached = Math.min(u.audioCached ?? 0, u.cached, u.audioIn ?? 0);
  const audioIn = Math.min((u.audioIn ?? 0) - audioCached, u.prompt - u.cached - u.cacheWrite);
  const audioOut = Math.min(u.audioOut ?? 0, u.completion);
  const uncached = Math.max(0, u.prompt - u.cached - u.cacheWrite - Math.max(0, audioIn));
  const at = (r: Rate | undefined) => rateAt(r ?? p.input, u.prompt);
  const sum = BigInt(uncached) * at(p.input) +
    BigInt(Math.max(0, audioIn)) * at(p.inputAudio) +
    BigInt(u.cached - audioCached) * at(p.cacheRead) +
    // Cached audio without a rate of its own costs what uncached audio does, never a text rate.
    BigInt(audioCached) * at(p.cacheAudioRead ?? p.inputAudio) +
    BigInt(cacheWrite5m) * at(p.cacheWrite) +
    BigInt(cacheWrite1h) * at(p.cacheWrite1h ?? p.cacheWrite) +
    BigInt(u.completion - audioOut) * rateAt(p.output, u.prompt) +
    BigInt(audioOut) * rateAt(p.outputAudio ?? p.output, u.prompt) +
    searchSum(u.webSearches ?? 0, p);
  const market = divRound(sum, MILLION);
  const cost = divRound(sum * (BPS - BigInt(discountBps)), MILLION * BPS);
  return { cost, market };
}

/**
 * The most a request of at most `prompt` input and `completion` output tokens can cost: every
 * input token at the dearest input-side rate (a cache write, above all a one-hour one, costs more
 * than plain input), every output token at the dearest output rate, in the tier of `prompt`. The
 * worst-case hold, so that no split of the prompt the provider reports is charged more than held.
 * `searches` is the most server-side web searches the request may run, at the model's fee.
 */
export function priceWorstCase(
  prompt: number,
  completion: number,
  p: PriceTable,
  discountBps: number,
  searches = 0,
): Cost {
  const max = (rates: (Rate | undefined)[]) =>
    rates.reduce((m, r) => {
      const v = r ? rateAt(r, prompt) : 0n;
      return v > m ? v : m;
    }, 0n);
  const sum = BigInt(prompt) *
      max([p.input, p.cacheRead, p.cacheWrite, p.cacheWrite1h, p.inputAudio, p.cacheAudioRead]) +
    BigInt(completion) * max([p.output, p.outputAudio]) + searchSum(searches, p);
  return {
    market: divRound(sum, MILLION),
    cost: divRound(sum * (BPS - BigInt(discountBps)), MILLION * BPS),
  };
}

/** USD per million tokens (a catalog number or a decimal string) → nano-USD per million tokens. */
export function mtokToNanos(usd: number | string): bigint {
  if (typeof usd === "string") {
    // A decimal string (PROVIDERS_FILE) converts exactly, without passing through a float.
    const exact = parseUsd(usd);
    if (exact === null || exact < 0n) throw new RangeError(`invalid price ${usd}`);
    return exact;
  }
  const n = usd;
  if (!Number.isFinite(n) || n < 0) throw new RangeError(`invalid price ${usd}`);
  return BigInt(Math.round(n * 1e9));
}

function toRate(v: unknown): Rate | undefined {
  if (typeof v === "number" || typeof v === "string") return { base: mtokToNanos(v), tiers: [] };
  if (v && typeof v === "object" && "base" in v && "tiers" in v) {
    const t = v as { base: number; tiers: { start: number; price: number }[] };
    return {
      base: mtokToNanos(t.base),
      tiers: [...t.tiers].sort((a, b) => a.start - b.start).map((x) => ({
        start: x.start,
        price: mtokToNanos(x.price),
      })),
    };
  }
  return undefined;
}

/** Converts a catalog (or operator) price record in USD per million tokens to a `PriceTable`. */
export function priceTableFrom(mp: ModelPrice | Record<string, unknown>): PriceTable | null {
  const input = toRate(mp.input_mtok);
  if (!input) return null;
  return {
    input,
    // Embedding models have no output price: output is never produced, so zero is exact.
    output: toRate(mp.output_mtok) ?? { base: 0n, tiers: [] },
    cacheRead: toRate(mp.cache_read_mtok),
    cacheWrite: toRate(mp.cache_write_mtok),
    cacheWrite1h: toRate(mp.cache_write_1h_mtok),
    inputAudio: toRate(mp.input_audio_mtok),
    cacheAudioRead: toRate(mp.cache_audio_read_mtok),
    outputAudio: toRate(mp.output_audio_mtok),
    webSearchK: toFee(mp.web_searches_kcount),
  };
}

/** A flat fee (USD per thousand, a catalog number or a decimal string) → nano-USD per thousand. */
function toFee(v: unknown): bigint | undefined {
  return typeof v === "number" || typeof v === "string" ? mtokToNanos(v) : undefined;
}

/**
 * The catalog's price keys a model may carry and still be served. A model priced by anything
 * else (image or video tokens, audio by the hour, pages, messages) would be under-billed at its
 * text rates, so it is refused instead. Web searches per thousand (which most OpenAI and
 * Anthropic chat models list) are billed per search the provider reports; file (storage)
 * searches are not: the router does not count them.
 */
const SERVED_PRICE_KEYS = new Set([
  "input_mtok",
  "output_mtok",
  "cache_read_mtok",
  "cache_write_mtok",
  "cache_write_1h_mtok",
  "input_audio_mtok",
  "cache_audio_read_mtok",
  "output_audio_mtok",
  "web_searches_kcount",
  "storage_searches_kcount",
]);

export interface CatalogModel {
  /** The catalog's model id (the canonical name, e.g. `gpt-4o-mini`). */
  id: string;
  contextWindow: number | undefined;
  prices: PriceTable;
}

/**
 * Looks a model up in the maintained catalog (`@pydantic/genai-prices`), with the prices in force
 * at `when` (some models change price by date or time of day). `null` if the catalog has no text
 * token price for it.
 */
export function lookupCatalog(
  catalogProvider: string,
  model: string,
  when: Date,
): CatalogModel | null {
  // Matching a model against the catalog costs more than the rest of pricing a request: keep the
  // answer for the same minute (time-dependent prices change on date or hour boundaries).
  const cacheKey = `${catalogProvider}\u0000${model}\u0000${Math.floor(when.getTime() / 60_000)}`;
  if (catalogCache.has(cacheKey)) return catalogCache.get(cacheKey)!;
  const found = lookupCatalogUncached(catalogProvider, model, when);
  if (catalogCache.size >= 1000) catalogCache.clear();
  catalogCache.set(cacheKey, found);
  return found;
}

const catalogCache = new Map<string, CatalogModel | null>();

function lookupCatalogUncached(
  catalogProvider: string,
  model: string,
  when: Date,
): CatalogModel | null {
  let r;
  try {
    r = calcPrice({ input_tokens: 1, output_tokens: 1 }, model, {
      providerId: catalogProvider,
      timestamp: when,
    });
  } catch {
    return null;
  }
  if (!r) return null;
  for (const [k, v] of Object.entries(r.model_price)) {
    if (v !== undefined && !SERVED_PRICE_KEYS.has(k)) return null;
  }
  const prices = priceTableFrom(r.model_price);
  if (!prices) return null;
  return { id: r.model.id, contextWindow: r.model.context_window, prices };
}

/** The catalog's model ids of one provider that carry a text token price (for `/v1/models`). */
export function catalogModelIds(catalogProvider: string): string[] {
  const p = findProvider({ providerId: catalogProvider });
  if (!p) return [];
  return p.models.filter((m) => !m.deprecated && !m.id.includes(":") && !m.id.endsWith("-"))
    .map((m) => m.id);
}

/** Price per million tokens of a rate at small inputs, as nano-USD (for listings). */
export function baseRate(r: Rate | undefined): bigint | undefined {
  return r?.base;
}

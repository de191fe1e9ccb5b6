import type { Context } from "hono";
import { newId } from "../ids.ts";
import { formatUsd } from "../money.ts";
import {
  type Cost,
  type NormalizedUsage,
  priceUsage,
  priceWorstCase,
  unpricedKinds,
  ZERO_USAGE,
} from "../pricing.ts";
import { usageAnomalies } from "../metrics.ts";
import { echoUsage, type UsageReader, type UsageShape } from "../providers/usage.ts";
import { MAX_NAME_CHARS, MAX_USER_AGENT_CHARS, type UsageEvent } from "../billing/types.ts";
import type { ReserveResult } from "../billing/ops.ts";
import type { ResolvedModel } from "../providers/types.ts";
import type { AppEnv } from "../services.ts";
import { ApiError } from "../http/errors.ts";
import { clip } from "../kv/util.ts";
import { holding, settling } from "../telemetry/inference.ts";

// Deno refuses to read a request's address or headers once it has closed, and a stream whose
// client went away is settled after that: both are read while the request is open, and kept.
const clients = new WeakMap<Context<AppEnv>, { ip: string; userAgent: string }>();
function client(c: Context<AppEnv>) {
  let found = clients.get(c);
  if (!found) {
    const info = c.env as Deno.ServeHandlerInfo | undefined;
    const addr = info?.remoteAddr as Deno.NetAddr | undefined;
    found = {
      ip: addr?.hostname ?? "",
      userAgent: clip(c.req.header("user-agent") ?? "", MAX_USER_AGENT_CHARS),
    };
    clients.set(c, found);
  }
  return found;
}

/**
 * The client's address, when the request came over a socket (not under `app.request`): the
 * socket's peer, or the forwarded client when that peer is a trusted proxy (`trustingProxies`).
 */
export function clientIp(c: Context<AppEnv>): string {
  return client(c).ip;
}

/** One content-free usage event of the current request. */
export function usageEvent(
  c: Context<AppEnv>,
  fields: {
    provider: string;
    model: string;
    status: number;
    streaming: boolean;
    usage?: NormalizedUsage;
    cost?: Cost;
    billed?: boolean;
    errorCode?: string | null;
  },
): UsageEvent {
  const svc = c.get("svc");
  const key = c.get("key");
  const now = svc.now();
  const u = fields.usage ?? ZERO_USAGE;
  return {
    id: newId("evt", now),
    account_id: key.account_id,
    ts: now,
    request_id: c.get("requestId"),
    key_id: key.id,
    key_name: key.name,
    provider: clip(fields.provider, MAX_NAME_CHARS),
    model: clip(fields.model, MAX_NAME_CHARS),
    prompt_tokens: u.prompt,
    completion_tokens: u.completion,
    cached_tokens: u.cached,
    cache_write_tokens: u.cacheWrite,
    reasoning_tokens: u.reasoning,
    cost: fields.cost?.cost ?? 0n,
    market_cost: fields.cost?.market ?? 0n,
    latency_ms: Math.max(0, now - c.get("startedAt")),
    status: fields.status,
    streaming: fields.streaming,
    client_ip: clientIp(c),
    user_agent: client(c).userAgent,
    billed: fields.billed ?? false,
    balance_after: null,
    error_code: fields.errorCode ?? null,
  };
}

/** A settled charge, and the usage it was priced from (within the hold's bounds). */
export interface Billed extends Cost {
  usage: NormalizedUsage;
}

/** What a hold covers: its amount and the bounds it was priced at. */
interface HoldBounds {
  amount: bigint;
  prompt: number;
  searches: number;
  /** The output bound of each candidate model (`max_tokens`, or the model's limit, × n). */
  output: Map<ResolvedModel, number>;
}

/**
 * The money side of one proxied request: a worst-case hold, granted before the provider is called,
 * then exactly one of settle (the provider answered) or release (it did not). Each step goes
 * through the account's actor and commits the request's audit event with it.
 */
export class MeteredRequest {
  readonly holdId = newId("hold");
  #done = false;
  #held = false;
  /** Whether a billed stream took the hold over: its end settles or releases it. */
  #streamed = false;
  /** The hold asked for, once `reserve` was called: no charge goes beyond it. */
  #hold: HoldBounds | null = null;

  constructor(
    readonly c: Context<AppEnv>,
    /** The model being billed: the first candidate, then the one that answered. */
    public model: ResolvedModel,
    readonly streaming: boolean,
  ) {
    client(c);
    c.set("metered", this);
  }

  /** The stream that will settle or release the hold has been made (`billStream`). */
  streamed() {
    this.#streamed = true;
  }

  /**
   * Called once the handler has answered (app.ts). A hold it left neither settled, released nor
   * to a stream (the handler failed in between) is no longer this process's: nothing is charged
   * (see `AccountActors.abandon`).
   */
  answered(): void {
    if (this.#done || !this.#held || this.#streamed) return;
    const svc = this.c.get("svc");
    if (!svc.actors.abandon(this.c.get("key").account_id, this.holdId)) return;
    svc.log("warn", "request ended with its hold unsettled; not charged", {
      request_id: this.c.get("requestId"),
      status: this.c.res.status,
    });
  }

  /** The cost of `usage` at this model's prices. */
  price(usage: NormalizedUsage): Cost {
    return priceUsage(usage, this.model.prices, this.model.discountBps);
  }

  /**
   * Holds the worst case; throws the 402/403/401/429 refusal otherwise. With fallback candidates
   * the hold covers the dearest of them, since any one may answer. Granted from this process's
   * balance lease it returns with no KV round trip; either way the credit is held before the
   * provider is called, so no call is made that nobody is billed for.
   */
  async reserve(
    promptTokens: number,
    outputTokens: number,
    alternatives: { model: ResolvedModel; outputTokens: number }[] = [],
    /**
     * The most server-side web searches the request may run (`anthropicSearchBound`,
     * `responsesSearchBound` in lib/proxy/tokens.ts).
     */
    searches = 0,
  ): Promise<void> {
    const svc = this.c.get("svc");
    const key = this.c.get("key");
    const worst = (model: ResolvedModel, output: number) =>
      priceWorstCase(promptTokens, output, model.prices, model.discountBps, searches).cost;
    let amount = worst(this.model, outputTokens);
    for (const alt of alternatives) {
      const c = worst(alt.model, alt.outputTokens);
      if (c > amount) amount = c;
    }
    this.#hold = {
      amount,
      prompt: promptTokens,
      searches,
      output: new Map([
        [this.model, outputTokens],
        ...alternatives.map((a) => [a.model, a.outputTokens] as const),
      ]),
    };
    const r = await holding(
      this.model,
      amount,
      () => svc.actors.reserve(key.account_id, key, this.holdId, amount, svc.config.holdTtlMs),
    );
    if (!r.ok) throw this.#refusal(r, amount, promptTokens, outputTokens, searches);
    this.#held = true;
  }

  /** The error a refused reserve answers with. */
  #refusal(
    r: Exclude<ReserveResult, { ok: true }>,
    amount: bigint,
    promptTokens: number,
    outputTokens: number,
    searches: number,
  ): ApiError {
    switch (r.code) {
      case "insufficient_credits":
      case "key_limit_exceeded": {
        const what = r.code === "insufficient_credits"
          ? "available credit"
          : "the key's remaining limit";
        const left = r.code === "insufficient_credits" ? r.available : r.remaining;
        const fit = this.#affordableOutput(left, promptTokens, searches);
        const searching = searches > 0 && this.model.prices.webSearchK
          ? `, ${searches} web searches`
          : "";
        return new ApiError(
          402,
          r.code,
          `This request may cost up to $${
            formatUsd(amount)
          } (about ${promptTokens} prompt tokens${searching} ` +
            `and ${outputTokens} output tokens) but ${what} is $${formatUsd(left)}. ` +
            (fit > 0
              ? `Set max_tokens to ${fit} or less, or add credits.`
              : "Add credits to continue."),
        );
      }
      case "rate_limited":
        return new ApiError(
          429,
          "rate_limited",
          `This key allows ${r.rpm} requests per minute; retry in ${r.retryAfterSec} s`,
          { "retry-after": String(r.retryAfterSec) },
        );
      case "key_disabled":
        return new ApiError(403, "key_disabled", "This API key is disabled");
      default:
        return new ApiError(401, "invalid_api_key", "The API key is invalid, revoked or expired");
    }
  }

  #affordableOutput(left: bigint, promptTokens: number, searches: number): number {
    const { prices, discountBps } = this.model;
    const prompt = priceWorstCase(promptTokens, 0, prices, discountBps, searches).cost;
    const perMillion = priceWorstCase(promptTokens, 1_000_000, prices, discountBps, searches).cost -
      prompt;
    if (left <= prompt || perMillion <= 0n) return 0;
    return Number(((left - prompt) * 1_000_000n) / perMillion);
  }

  /**
   * `usage` within the hold's bounds: the prompt within the bound held, cache reads and writes
   * within the prompt, the output within the output limit of the model that answered, reasoning
   * and audio within their totals, web searches within the search bound. Each figure beyond its
   * bound is an anomaly: logged with the request id (figures only) and counted in
   * `router_usage_anomalies_total`, unless `report` is false (a running count shown on its way).
   */
  bounded(usage: NormalizedUsage, report = true): NormalizedUsage {
    const hold = this.#hold;
    if (!hold) return usage;
    const outputs = [...hold.output.values()];
    const output = hold.output.get(this.model) ?? Math.max(0, ...outputs);
    const u = { ...usage };
    const over: string[] = [];
    const cap = (kind: string, value: number, max: number) => {
      if (value <= max) return value;
      if (!over.includes(kind)) over.push(kind);
      return Math.max(0, max);
    };
    u.prompt = cap("prompt", u.prompt, hold.prompt);
    u.cached = cap("cached", u.cached, u.prompt);
    u.cacheWrite = cap("cache_write", u.cacheWrite, u.prompt - u.cached);
    u.cacheWrite1h = cap("cache_write", u.cacheWrite1h, u.cacheWrite);
    u.completion = cap("output", u.completion, output);
    u.reasoning = cap("reasoning", u.reasoning, u.completion);
    if (u.audioIn !== undefined) u.audioIn = cap("audio", u.audioIn, u.prompt);
    if (u.audioCached !== undefined) {
      u.audioCached = cap("audio", u.audioCached, Math.min(u.cached, u.audioIn ?? 0));
    }
    if (u.audioOut !== undefined) u.audioOut = cap("audio", u.audioOut, u.completion);
    if (u.webSearches !== undefined) {
      u.webSearches = cap("web_searches", u.webSearches, hold.searches);
    }
    if (over.length && report) this.#anomalies(over, usage, u);
    return u;
  }

  /**
   * A provider's usage object as a client may be shown it before the final usage (a running
   * count, Anthropic's `message_start`): null when it is within the hold's bounds and well formed
   * (it passes as sent), else its figures clamped (`echoUsage`).
   */
  shownInterim(raw: unknown, usage: NormalizedUsage, r: UsageReader, shape: UsageShape) {
    const shown = this.bounded(usage, false);
    if (r.anomalies.length === 0 && JSON.stringify(shown) === JSON.stringify(usage)) return null;
    return echoUsage(raw, shown, shape);
  }

  /** Logs and counts the kinds of usage found beyond the hold's bounds. */
  #anomalies(kinds: string[], reported: NormalizedUsage, kept: NormalizedUsage) {
    const provider = this.model.provider;
    for (const kind of kinds) usageAnomalies.inc({ provider, kind });
    this.c.get("svc").log("warn", "usage beyond the hold's bounds; clamped", {
      request_id: this.c.get("requestId"),
      provider,
      model: this.model.model,
      kinds,
      reported: { prompt: reported.prompt, completion: reported.completion },
      billed: { prompt: kept.prompt, completion: kept.completion },
    });
  }

  /**
   * The cost of `usage` (already `bounded`), never beyond the hold: usage of a kind the model's
   * catalog entry has no rate for (`unpricedKinds`) is billed at the hold, that is the worst case
   * of the model that answered.
   */
  #charge(usage: NormalizedUsage): Cost {
    const hold = this.#hold;
    if (!hold) return this.price(usage);
    const { prices, discountBps } = this.model;
    const output = hold.output.get(this.model) ?? 0;
    const worst = priceWorstCase(hold.prompt, output, prices, discountBps, hold.searches);
    const unpriced = unpricedKinds(usage, prices);
    if (unpriced.length) {
      this.c.get("svc").log("warn", "usage of a kind without a catalog rate; the hold billed", {
        request_id: this.c.get("requestId"),
        provider: this.model.provider,
        model: this.model.model,
        kinds: unpriced,
      });
    }
    const cost = unpriced.length ? worst : this.price(usage);
    return cost.cost > hold.amount ? { cost: hold.amount, market: worst.market } : cost;
  }

  /** Debits the actual cost and records the request. Idempotent: only the first call counts. */
  async settle(
    reported: NormalizedUsage,
    fields: { status?: number; errorCode?: string | null } = {},
  ): Promise<Billed> {
    if (this.#done) {
      const usage = this.bounded(reported, false);
      return { ...this.price(usage), usage };
    }
    const usage = this.bounded(reported);
    let cost = this.#charge(usage);
    this.#done = true;
    const c = this.c;
    const event = usageEvent(c, {
      provider: this.model.provider,
      model: this.model.model,
      status: fields.status ?? 200,
      streaming: this.streaming,
      usage,
      cost,
      billed: true,
      errorCode: fields.errorCode ?? null,
    });
    const r = await settling(
      "settle",
      event,
      () =>
        c.get("svc").actors.submit(c.get("key").account_id, {
          kind: "settle",
          keyId: c.get("key").id,
          holdId: this.holdId,
          cost: cost.cost,
          event,
        }),
    );
    c.set("audited", true);
    if (r.charged !== cost.cost) {
      c.get("svc").log("warn", "usage cost exceeds the balance; charge capped", {
        request_id: c.get("requestId"),
        provider: this.model.provider,
        model: this.model.model,
        cost: cost.cost,
        charged: r.charged,
      });
      cost = { ...cost, cost: r.charged };
    }
    return { ...cost, usage };
  }

  /**
   * Records one failed attempt of a request that goes on to another (a retry or a fallback), at
   * cost 0. Its audit row's request id carries the attempt number, so each attempt has a row.
   */
  async recordAttempt(
    model: ResolvedModel,
    attempt: number,
    status: number,
    errorCode: string,
  ): Promise<void> {
    const c = this.c;
    const event = usageEvent(c, {
      provider: model.provider,
      model: model.model,
      status,
      streaming: this.streaming,
      errorCode,
    });
    event.request_id = `${event.request_id}.${attempt}`;
    await c.get("svc").actors.submit(c.get("key").account_id, { kind: "record", event });
  }

  /** Releases the hold without charge and records the failure. */
  async release(status: number, errorCode: string): Promise<void> {
    if (this.#done || !this.#held) return;
    this.#done = true;
    const c = this.c;
    const event = usageEvent(c, {
      provider: this.model.provider,
      model: this.model.model,
      status,
      streaming: this.streaming,
      errorCode,
    });
    await settling("release", event, () =>
      c.get("svc").actors.submit(c.get("key").account_id, {
        kind: "release",
        keyId: c.get("key").id,
        holdId: this.holdId,
        event,
      }));
    c.set("audited", true);
  }
}

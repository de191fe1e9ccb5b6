import { newId } from "../ids.ts";
import { formatUsd } from "../money.ts";
import {
  type Cost,
  type NormalizedUsage,
  priceUsage,
  priceWorstCase,
  unpricedKinds,
} from "../pricing.ts";
import { usageAnomalies } from "../metrics.ts";
import type { ApiKey } from "../billing/types.ts";
import type { ReserveResult } from "../billing/ops.ts";
import type { AccountActors } from "../billing/actor.ts";
import type { ResolvedModel } from "../providers/types.ts";
import type { Logger } from "../log.ts";
import { ApiError } from "../errors.ts";
import type { RequestAudit } from "./audit.ts";
import { holding, settling } from "../telemetry/inference.ts";

/** What metering one request takes: plain dependencies, no web framework. */
export interface MeteringDeps {
  actors: Pick<AccountActors, "reserve" | "submit" | "abandon">;
  log: Logger;
  /** How long a hold lives unless renewed (`HOLD_TTL_MS`). */
  holdTtlMs: number;
  /** The calling key: its account is held and charged, its limit checked. */
  key: ApiKey;
  /** The request's audit record: its facts, and whether its row is written. */
  audit: RequestAudit;
}

/** A settled charge, and the usage it was priced from (within the hold's bounds). */
export interface Billed extends Cost {
  usage: NormalizedUsage;
}

/** What a hold covers on one candidate model: its output and the web searches it may run. */
export interface ModelBound {
  model: ResolvedModel;
  /** Output tokens (`max_tokens`, or the model's limit, × n). */
  outputTokens: number;
  /** Server-side web searches (`anthropicSearchBound`, `responsesSearchBound` in tokens.ts). */
  searches: number;
}

/** What a hold covers: the prompt on any candidate, and each candidate's own bounds. */
export interface HoldBound {
  /** Prompt tokens (`Prompt.bound` over the candidates). */
  prompt: number;
  /** The bounds of each candidate model, the first the primary. */
  models: readonly ModelBound[];
}

/** The hold granted: its amount and the bounds it was priced at, by model. */
interface Held {
  amount: bigint;
  prompt: number;
  models: Map<ResolvedModel, ModelBound>;
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
  #hold: Held | null = null;

  constructor(
    readonly deps: MeteringDeps,
    /** The model being billed: the first candidate, then the one that answered. */
    public model: ResolvedModel,
  ) {
    deps.audit.metered = true;
  }

  get requestId(): string {
    return this.deps.audit.requestId;
  }

  /** `model` answered: it is the one billed, and the one a later refusal row names. */
  answeredBy(model: ResolvedModel): void {
    this.model = model;
    this.deps.audit.target = { provider: model.provider, model: model.model };
  }

  /** A billed stream has taken the hold over (`billStream`): its end settles or releases it. */
  streamed(): void {
    this.#streamed = true;
    this.deps.audit.defer();
  }

  /**
   * The request failed before its hold was settled, released or taken over by a stream: the hold
   * is no longer this process's, and nothing is charged (see `AccountActors.abandon`).
   */
  abandon(error: unknown): void {
    if (this.#done || !this.#held || this.#streamed) return;
    if (!this.deps.actors.abandon(this.deps.key.account_id, this.holdId)) return;
    this.deps.log("warn", "request ended with its hold unsettled; not charged", {
      request_id: this.requestId,
      error: error instanceof Error ? error.name : "unknown",
    });
  }

  /**
   * A stream's settlement failed: its hold, if still this process's, is no longer renewed (a
   * lease's is dropped, nothing charged; a shared one is released by the sweeper). Nothing is done
   * to a hold already settled or released.
   */
  drop(): void {
    if (!this.#held) return;
    this.#done = true;
    this.deps.actors.abandon(this.deps.key.account_id, this.holdId);
  }

  /** The cost of `usage` at this model's prices. */
  price(usage: NormalizedUsage): Cost {
    return priceUsage(usage, this.model.prices, this.model.discountBps);
  }

  /**
   * Holds the worst case of `bound`, the dearest candidate's since any one may answer; throws the
   * 402/403/401/429 refusal otherwise. Granted from this process's balance lease it returns with
   * no KV round trip; either way the credit is held before the provider is called, so no call is
   * made that nobody is billed for.
   */
  async reserve(bound: HoldBound): Promise<void> {
    let amount = 0n;
    for (const b of bound.models) {
      const { prices, discountBps } = b.model;
      const c = priceWorstCase(bound.prompt, b.outputTokens, prices, discountBps, b.searches).cost;
      if (c > amount) amount = c;
    }
    this.#hold = {
      amount,
      prompt: bound.prompt,
      models: new Map(bound.models.map((b) => [b.model, b])),
    };
    const { actors, key, holdTtlMs } = this.deps;
    const r = await holding(
      this.model,
      amount,
      () => actors.reserve(key.account_id, key, this.holdId, amount, holdTtlMs),
    );
    if (!r.ok) {
      const primary = this.#bound(this.#hold);
      throw this.#refusal(r, amount, bound.prompt, primary.outputTokens, primary.searches);
    }
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
    const bound = this.#bound(hold);
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
    u.completion = cap("output", u.completion, bound.outputTokens);
    u.reasoning = cap("reasoning", u.reasoning, u.completion);
    if (u.audioIn !== undefined) u.audioIn = cap("audio", u.audioIn, u.prompt);
    if (u.audioCached !== undefined) {
      u.audioCached = cap("audio", u.audioCached, Math.min(u.cached, u.audioIn ?? 0));
    }
    if (u.audioOut !== undefined) u.audioOut = cap("audio", u.audioOut, u.completion);
    if (u.webSearches !== undefined) {
      u.webSearches = cap("web_searches", u.webSearches, bound.searches);
    }
    if (over.length && report) this.#anomalies(over, usage, u);
    return u;
  }

  /** The bounds of the model that answered (one of the candidates held for). */
  #bound(hold: Held): ModelBound {
    const bound = hold.models.get(this.model);
    if (!bound) throw new Error("the model answering was not held for");
    return bound;
  }

  /** Logs and counts the kinds of usage found beyond the hold's bounds. */
  #anomalies(kinds: string[], reported: NormalizedUsage, kept: NormalizedUsage) {
    const provider = this.model.provider;
    for (const kind of kinds) usageAnomalies.inc({ provider, kind });
    this.deps.log("warn", "usage beyond the hold's bounds; clamped", {
      request_id: this.requestId,
      provider,
      model: this.model.model,
      kinds,
      reported: { prompt: reported.prompt, completion: reported.completion },
      billed: { prompt: kept.prompt, completion: kept.completion },
    });
  }

  /** Logs and counts the clamps made reading the provider's usage (figures and field names). */
  readAnomalies(anomalies: readonly string[]): void {
    if (anomalies.length === 0) return;
    usageAnomalies.inc({ provider: this.model.provider, kind: "malformed" });
    this.deps.log("warn", "upstream usage clamped", {
      request_id: this.requestId,
      provider: this.model.provider,
      model: this.model.model,
      anomalies,
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
    const { outputTokens, searches } = this.#bound(hold);
    const worst = priceWorstCase(hold.prompt, outputTokens, prices, discountBps, searches);
    const unpriced = unpricedKinds(usage, prices);
    if (unpriced.length) {
      this.deps.log("warn", "usage of a kind without a catalog rate; the hold billed", {
        request_id: this.requestId,
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
    const { actors, key, audit, log } = this.deps;
    const event = audit.event(key, {
      status: fields.status ?? 200,
      usage,
      cost,
      billed: true,
      errorCode: fields.errorCode ?? null,
    }, this.model);
    const r = await settling("settle", event, () =>
      actors.submit(key.account_id, {
        kind: "settle",
        keyId: key.id,
        holdId: this.holdId,
        cost: cost.cost,
        event,
      }));
    audit.markRecorded();
    if (r.charged !== cost.cost) {
      log("warn", "usage cost exceeds the balance; charge capped", {
        request_id: this.requestId,
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
   * cost 0 (`RequestAudit.attemptEvent`).
   */
  async recordAttempt(
    model: ResolvedModel,
    attempt: number,
    status: number,
    errorCode: string,
  ): Promise<void> {
    const { actors, key, audit } = this.deps;
    const event = audit.attemptEvent(key, model, attempt, status, errorCode);
    await actors.submit(key.account_id, { kind: "record", event });
  }

  /** Releases the hold without charge and records the failure. */
  async release(status: number, errorCode: string): Promise<void> {
    if (this.#done || !this.#held) return;
    this.#done = true;
    const { actors, key, audit } = this.deps;
    const event = audit.event(key, { status, errorCode }, this.model);
    await settling("release", event, () =>
      actors.submit(key.account_id, {
        kind: "release",
        keyId: key.id,
        holdId: this.holdId,
        event,
      }));
    audit.markRecorded();
  }
}

import { newId } from "../ids.ts";
import { type Cost, type NormalizedUsage, ZERO_USAGE } from "../pricing.ts";
import { type ApiKey, MAX_NAME_CHARS, type UsageEvent } from "../billing/types.ts";
import { clip } from "../kv/util.ts";

/** What the router knows of the client, read while its request is open (never after). */
export interface ClientFacts {
  /** The client's address ("" when the request came without a socket, as under `app.request`). */
  ip: string;
  userAgent: string;
}

/** The figures of one audit row beyond the request's own facts. */
export interface RowFields {
  status: number;
  usage?: NormalizedUsage;
  cost?: Cost;
  billed?: boolean;
  errorCode?: string | null;
}

/**
 * The audit record of one inference request: what its row says (the model it named or that
 * answered, whether it streamed, the client), and whether that row is taken care of. Exactly one
 * row per request: the metering's, committed with its settlement or release (or at the end of a
 * stream it billed); otherwise the one the inference audit middleware writes when the request is
 * answered (a refusal with its code, a free call without).
 */
export class RequestAudit {
  /** The provider and model the request named, once known; then the model that answered. */
  target = { provider: "", model: "" };
  /** Whether the request asked for a stream, once its body is read. */
  streaming = false;
  /** Whether the request reached its hold (a `MeteredRequest` was made for it). */
  metered = false;
  #recorded = false;
  #deferred = false;

  constructor(
    readonly requestId: string,
    readonly startedAt: number,
    readonly client: ClientFacts,
    readonly now: () => number,
  ) {}

  /** Whether the request's row was committed (by its settlement or release). */
  get recorded(): boolean {
    return this.#recorded;
  }

  /** Whether a stream writes the row when it ends (the answer went out before it). */
  get deferred(): boolean {
    return this.#deferred;
  }

  /** The request's row is committed: no other is written. */
  markRecorded(): void {
    this.#recorded = true;
  }

  /** A stream has taken the request over: its end settles or releases, and writes the row. */
  defer(): void {
    this.#deferred = true;
  }

  /** The request's usage event, under `key`, at `model` (the target by default). */
  event(
    key: ApiKey,
    fields: RowFields,
    model: { provider: string; model: string } = this.target,
  ): UsageEvent {
    const now = this.now();
    const u = fields.usage ?? ZERO_USAGE;
    return {
      id: newId("evt", now),
      account_id: key.account_id,
      ts: now,
      request_id: this.requestId,
      key_id: key.id,
      key_name: key.name,
      provider: clip(model.provider, MAX_NAME_CHARS),
      model: clip(model.model, MAX_NAME_CHARS),
      prompt_tokens: u.prompt,
      completion_tokens: u.completion,
      cached_tokens: u.cached,
      cache_write_tokens: u.cacheWrite,
      reasoning_tokens: u.reasoning,
      cost: fields.cost?.cost ?? 0n,
      market_cost: fields.cost?.market ?? 0n,
      latency_ms: Math.max(0, now - this.startedAt),
      status: fields.status,
      streaming: this.streaming,
      client_ip: this.client.ip,
      user_agent: this.client.userAgent,
      billed: fields.billed ?? false,
      balance_after: null,
      error_code: fields.errorCode ?? null,
    };
  }

  /**
   * The row of one failed attempt of a request that went on to another (a retry or a fallback),
   * at cost 0: its request id carries the attempt number, so each attempt has a row of its own.
   */
  attemptEvent(
    key: ApiKey,
    model: { provider: string; model: string },
    attempt: number,
    status: number,
    errorCode: string,
  ): UsageEvent {
    const event = this.event(key, { status, errorCode }, model);
    event.request_id = `${event.request_id}.${attempt}`;
    return event;
  }
}

/**
 * What an inbound wire format (OpenAI chat completions, Anthropic Messages, OpenAI Responses,
 * embeddings) declares, so that one runner (`runInference`, routes/v1/inference.ts) serves them
 * all: its body schema; per request, the models that may answer, the hold's bounds, the upstream
 * call, how a reply carries its usage; and for a stream, a pure reducer over its events that alone
 * decides when the usage is final.
 */
import type { z } from "zod";
import type { NormalizedUsage } from "../pricing.ts";
import type { ResolvedModel, UpstreamCall } from "../providers/types.ts";
import { echoUsage, type UsageReader, type UsageShape } from "../providers/usage.ts";
import { usdNumber } from "../money.ts";
import type { Billed, HoldBound } from "../proxy/metered.ts";
import type { PricedKinds } from "../proxy/forward.ts";
import type { Prompt, TokenCounter } from "../proxy/tokens.ts";
import type { SseEvent, StreamEnding } from "../proxy/tap.ts";

/** One inbound API: its body, the model type it serves, and its rules for one request. */
export interface Format<B> {
  /** The request body; a violation is 400 naming the field. */
  readonly schema: z.ZodType<B>;
  /** The models it is served by. */
  readonly type: "chat" | "embedding";
  /**
   * Whether the request's own fallbacks and the operator's fallback chains apply; without them the
   * model named alone may answer.
   */
  readonly fallsBack: boolean;
  /** The rules of one request (`raw` is its body as sent, `body` as parsed). */
  request(raw: string, body: B): InferenceRequest;
}

/** One request of a format, as `runInference` serves it. */
export interface InferenceRequest {
  /** The model the request names. */
  readonly model: string;
  /** Models the request itself names, tried after it in order (OpenRouter's `models`). */
  readonly fallbacks: readonly string[];
  readonly stream: boolean;
  /** The prompt, as the hold bounds it and as the router counts it when usage is missing. */
  readonly prompt: Prompt;
  /** How the client's usage object is shaped (the router's figures are written into it). */
  readonly shape: UsageShape;
  /**
   * Why `model` cannot serve this request (the primary is refused with it, 400; a fallback is
   * skipped), or null.
   */
  unfit(model: ResolvedModel): string | null;
  /** The kinds of usage the request asks of `model` that not every catalog entry prices. */
  wants(model: ResolvedModel): PricedKinds;
  /** What the hold covers: the prompt on any candidate, each candidate's output and searches. */
  hold(candidates: readonly ResolvedModel[]): HoldBound;
  /** The upstream call to `model` (`headers`: the client's, for what a native API passes on). */
  call(model: ResolvedModel, headers: Headers): UpstreamCall;
  /** A JSON reply of `model`: the body the client gets and the usage it reports. */
  reply(model: ResolvedModel, json: unknown, r: UsageReader): {
    body: Record<string, unknown>;
    usage: NormalizedUsage;
  };
  /** A streamed reply of `model` (formats that stream): its events and how they are billed. */
  events?(
    model: ResolvedModel,
    body: ReadableStream<Uint8Array>,
    opts: StreamOptions,
  ): BilledStream;
}

/** What a format's stream needs from the request being billed. */
export interface StreamOptions {
  /** The largest upstream event (`MAX_SSE_EVENT_BYTES`), for a translation's splitter. */
  maxEventBytes: number;
  /** A usage within the hold's bounds (`MeteredRequest.bounded`, not reported). */
  bounded(usage: NormalizedUsage): NormalizedUsage;
}

/** A stream as the client reads it, and the reducer that bills it. */
export interface BilledStream<S = unknown> {
  /** The events the client gets: the provider's as sent, or translated to the client's format. */
  body: ReadableStream<Uint8Array>;
  /** How the client's stream ends (its format's closing and error events). */
  ending: StreamEnding;
  /** The events the reducer is shown (a pattern of their text); every other passes untouched. */
  watch: RegExp;
  reducer: StreamReducer<S>;
  /**
   * The usage billed for a stream that ended without its final one, before its output is counted:
   * the input side (the provider's own count where it reported one early, else the prompt as the
   * router counts it with `count`, the web searches run included), and the output where the
   * provider reported a running count of it.
   */
  unfinished(state: S, count: TokenCounter): NormalizedUsage;
}

/**
 * A pure reducer over a stream's watched events: the state after each, what the client gets in
 * its place, and the usage it reports. It alone decides when the usage is final.
 */
export interface StreamReducer<S> {
  readonly init: S;
  step(state: S, event: SseEvent): Step<S>;
}

/** What one event does (see `StreamReducer`). */
export interface Step<S> {
  state: S;
  /**
   * What the client gets in the event's place: a string, or null to drop it; a function of the
   * charge for an event that shows it (the final usage's, or one repeating it). Unset, the event
   * passes as it came.
   */
  out?: string | null | ((billed: Billed) => string | null);
  /**
   * The usage the event reports: the final one when `final`, else the provider's count so far
   * (billed if the stream ends before its final usage, the latest replacing the one before).
   */
  usage?: NormalizedUsage;
  /** The usage is final: billed now, the event sent once it is. */
  final?: boolean;
  /**
   * The provider reported a failure (an error event, a failed response): a stream that ends
   * without its final usage after it, or whose final usage comes with it, is audited
   * `upstream_stream_failed`.
   */
  failed?: boolean;
  /** The clamps made reading `usage` (figures and field names only), to log. */
  anomalies?: readonly string[];
}

/**
 * The usage object a client gets: the provider's (in `shape`) with the figures billed (see
 * `echoUsage`) and the router's `cost` and `market_cost` (USD numbers) added.
 */
export const withCost = (usage: unknown, billed: Billed, shape: UsageShape) => ({
  ...echoUsage(usage, billed.usage, shape),
  cost: usdNumber(billed.cost),
  market_cost: usdNumber(billed.market),
});

/**
 * A provider's usage object as a client may be shown it before the final usage (a running count,
 * Anthropic's `message_start`): null when it is within the hold's bounds and well formed (it
 * passes as sent), else its figures clamped (`echoUsage`).
 */
export function shownUsage(
  raw: unknown,
  usage: NormalizedUsage,
  r: UsageReader,
  bounded: StreamOptions["bounded"],
  shape: UsageShape,
): Record<string, unknown> | null {
  const shown = bounded(usage);
  if (r.anomalies.length === 0 && JSON.stringify(shown) === JSON.stringify(usage)) return null;
  return echoUsage(raw, shown, shape);
}

/**
 * The web searches done so far (by id) with `id` added, each once; null when unchanged. At most
 * one past the hold's bound (`max`) is kept: a cut stream's searches are billed within it, and
 * one past it is enough to log that it was exceeded, however many a provider reports.
 */
export function withSearch(
  searched: readonly string[],
  id: string,
  max: number,
): readonly string[] | null {
  if (searched.length > max || searched.includes(id)) return null;
  return [...searched, id];
}

/** A plain object (JSON's), for a field that must be one. */
export const isObject = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === "object" && !Array.isArray(v);

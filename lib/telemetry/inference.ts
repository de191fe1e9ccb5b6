/**
 * What an inference request tells the operator: its span tree (the request's span, with child
 * spans for the key lookup, the hold, each upstream attempt and the settlement, carrying the
 * OpenTelemetry GenAI attributes and the router's own), and the metrics counted from it. The
 * pipeline calls one function per step; each is a plain call whether tracing is on or not.
 */
import { context, type Span, SpanKind } from "@opentelemetry/api";
import type { UsageEvent } from "../billing/types.ts";
import type { TapHandlers } from "../proxy/tap.ts";
import { usdNumber } from "../money.ts";
import { clip } from "../kv/util.ts";
import * as metrics from "../metrics.ts";
import { errorType, failSpan, requestSpan, withSpan } from "./trace.ts";

/** `gen_ai.provider.name` of a provider, where OpenTelemetry names it differently. */
const GEN_AI_PROVIDER: Record<string, string> = { gemini: "gcp.gemini" };
const genAiProvider = (provider: string) => GEN_AI_PROVIDER[provider] ?? provider;

/** An inference request's trace: its span, kept open while its response or stream runs. */
export class RequestTrace {
  #open = 0;
  constructor(readonly span: Span, readonly operation: string) {}

  /** Keeps the span open until the function returned is called. */
  hold(): () => void {
    this.#open++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (--this.#open === 0) this.span.end();
    };
  }
}
export const traces = new WeakMap<Span, RequestTrace>();
const current = (): RequestTrace | undefined => {
  const span = requestSpan();
  return span && traces.get(span);
};

/**
 * Runs the key lookup of a request (`lookup`) in its own span.
 *
 * @example
 * ```ts
 * const found = await keyLookup(() => svc.keys.resolve(secret));
 * ```
 */
export function keyLookup<T>(lookup: () => Promise<T>): Promise<T> {
  return current() ? withSpan("key lookup", {}, lookup) : lookup();
}

/** Runs a request's hold (`reserve`) in its own span; the request's span learns its model. */
export function holding<T extends { ok: boolean; code?: string }>(
  model: { provider: string; model: string },
  amount: bigint,
  reserve: () => Promise<T>,
): Promise<T> {
  const trace = current();
  if (!trace) return reserve();
  trace.span.updateName(`${trace.operation} ${model.model}`);
  trace.span.setAttributes({
    "gen_ai.request.model": model.model,
    "gen_ai.provider.name": genAiProvider(model.provider),
    "router.hold_usd": usdNumber(amount),
  });
  return withSpan("hold", { "router.hold_usd": usdNumber(amount) }, async (span) => {
    const r = await reserve();
    if (!r.ok) failSpan(span, r.code ?? "refused");
    return r;
  });
}

/**
 * Runs one attempt of the upstream call (`call`) in a client span with the GenAI attributes, and
 * counts its wait in `router_upstream_duration_seconds` (outcome `ok` or the error's code).
 */
export async function upstreamAttempt<T>(
  model: { provider: string; model: string },
  attempt: number,
  call: () => Promise<T>,
): Promise<T> {
  const started = performance.now();
  let outcome = "ok";
  const trace = current();
  try {
    if (!trace) return await call();
    return await withSpan(
      `${trace.operation} ${model.model}`,
      {
        "gen_ai.operation.name": trace.operation,
        "gen_ai.provider.name": genAiProvider(model.provider),
        "gen_ai.request.model": model.model,
        "router.attempt": attempt,
      },
      call,
      SpanKind.CLIENT,
    );
  } catch (e) {
    outcome = errorType(e);
    throw e;
  } finally {
    metrics.upstreamDuration.observe(
      { provider: model.provider, model: model.model, outcome },
      (performance.now() - started) / 1000,
    );
  }
}

/** Error codes of a request that ended well enough: the span is not marked failed for them. */
const BENIGN = new Set(["usage_missing", "client_disconnected"]);

/**
 * Runs a request's settlement or release (`commit`, which commits `event`) in its own span; it and
 * the request's span get the outcome: the GenAI usage attributes, the model that answered, the
 * cost charged (`charged`, else the event's) and the market cost in USD, the audited status.
 */
export function settling<T extends { charged?: bigint } | void>(
  step: "settle" | "release",
  event: UsageEvent,
  commit: () => Promise<T>,
): Promise<T> {
  const trace = current();
  if (!trace) return commit();
  return withSpan(step, {}, async (span) => {
    const r = await commit();
    const charged = (r as { charged?: bigint } | undefined)?.charged ?? event.cost;
    const attributes = {
      "gen_ai.provider.name": genAiProvider(event.provider),
      "gen_ai.response.model": event.model,
      "gen_ai.usage.input_tokens": event.prompt_tokens,
      "gen_ai.usage.output_tokens": event.completion_tokens,
      "gen_ai.usage.cache_read.input_tokens": event.cached_tokens,
      "gen_ai.usage.cache_creation.input_tokens": event.cache_write_tokens,
      "router.usage.reasoning_tokens": event.reasoning_tokens,
      "router.cost_usd": usdNumber(charged),
      "router.market_cost_usd": usdNumber(event.market_cost),
      "router.status": event.status,
      "router.streaming": event.streaming,
    };
    span.setAttributes(attributes);
    trace.span.setAttributes(attributes);
    if (event.error_code) {
      span.setAttribute("router.error_code", event.error_code);
      trace.span.setAttribute("router.error_code", event.error_code);
      if (!BENIGN.has(event.error_code) && (event.status >= 500 || event.status === 200)) {
        failSpan(trace.span, event.error_code);
      }
    }
    return r;
  });
}

/**
 * A stream's handlers, run in the request's context whoever calls them (the client's read, a
 * timer, the shutdown), so that its settlement is a span of the request; the request's span is
 * kept open until the stream has ended and settled.
 */
export function streamHandlers(handlers: TapHandlers): TapHandlers {
  const done = current()?.hold();
  if (!done) return handlers;
  const ctx = context.active();
  return {
    ...handlers,
    onEvent: context.bind(ctx, handlers.onEvent),
    onEnd: context.bind(ctx, async (kind) => {
      try {
        await handlers.onEnd(kind);
      } finally {
        done();
      }
    }),
  };
}

/** The text of an event that may carry a finish reason (a chat choice's, Messages' or Responses'). */
export const FINISH =
  /"(?:finish_reason|stop_reason)"\s*:\s*"|"type"\s*:\s*"response\.(?:completed|incomplete|failed)"/;

/**
 * The finish reasons a reply or stream event states (`gen_ai.response.finish_reasons`): each
 * OpenAI choice's `finish_reason`, Anthropic's `stop_reason`, a Responses reply's status (or why
 * it is incomplete).
 */
export function finishReasons(o: Record<string, unknown>): string[] {
  const out: string[] = [];
  const add = (v: unknown) => typeof v === "string" && out.length < 16 && out.push(clip(v, 64));
  if (Array.isArray(o.choices)) {
    for (const c of o.choices) add((c as { finish_reason?: unknown } | null)?.finish_reason);
  }
  add(o.stop_reason);
  add((o.delta as { stop_reason?: unknown } | null)?.stop_reason);
  const response = o.object === "response" ? o : o.response as Record<string, unknown> | undefined;
  if (response && typeof response === "object") {
    const incomplete = (response.incomplete_details as { reason?: unknown } | null)?.reason;
    add(incomplete ?? response.status);
  }
  return out;
}

/** Puts the finish reasons `reply` states on the request's span. */
export function noteFinish(reply: Record<string, unknown>) {
  const span = current()?.span;
  const reasons = span ? finishReasons(reply) : [];
  if (reasons.length) span!.setAttribute("gen_ai.response.finish_reasons", reasons);
}

/**
 * What a stream of `model` tells as it goes: `delivered` at each event passed to the client (the
 * first is counted in `router_time_to_first_token_seconds`, from `startedAt` on the clock `now`),
 * and an observer of the events stating finish reasons.
 */
export function streamWatch(
  model: { provider: string; model: string },
  startedAt: number,
  now: () => number,
): { delivered(): void; finish(chunk: Record<string, unknown>): void } {
  const span = current()?.span;
  let first = true;
  const reasons = new Set<string>();
  return {
    delivered() {
      if (!first) return;
      first = false;
      const ms = Math.max(0, now() - startedAt);
      metrics.timeToFirstToken.observe({ provider: model.provider, model: model.model }, ms / 1000);
      span?.setAttribute("router.time_to_first_token_ms", ms);
    },
    finish(chunk) {
      if (!span) return;
      for (const r of finishReasons(chunk)) reasons.add(r);
      span.setAttribute("gen_ai.response.finish_reasons", [...reasons]);
    },
  };
}

/** Whether a provider and model are offered here (labels name nothing else). */
export interface Offered {
  names(): string[];
  resolve(name: string): { ok: boolean };
}

/**
 * Counts the usage events a commit wrote (each request's audit row; failed attempts' rows, ids
 * `{request_id}.N`, are counted as attempts by `upstreamAttempt` instead): requests, errors,
 * cost, market cost and tokens. A refused request's provider and model are labels only if
 * offered here (what it named is the client's text).
 */
export function countCommitted(events: readonly { value: UsageEvent }[], offered: Offered) {
  try {
    countEvents(events, offered);
  } catch {
    // Called by the actor right after a commit: a counting failure must not fail the commit's
    // callers (the figures are in the audit trail regardless).
  }
}

function countEvents(events: readonly { value: UsageEvent }[], offered: Offered) {
  for (const { value: e } of events) {
    if (e.request_id.includes(".")) continue;
    let provider = e.provider;
    let model = e.model;
    if (!e.billed && !offered.resolve(`${provider}/${model}`).ok) {
      model = "";
      if (!offered.names().includes(provider)) provider = "";
    }
    const labels = { provider, model };
    metrics.requests.inc({ ...labels, status: String(e.status) });
    if (e.error_code) metrics.requestErrors.inc({ ...labels, code: e.error_code });
    if (!e.billed) continue;
    metrics.cost.add(labels, e.cost);
    metrics.marketCost.add(labels, e.market_cost);
    const kinds: [string, number][] = [
      ["input", e.prompt_tokens],
      ["output", e.completion_tokens],
      ["cached", e.cached_tokens],
      ["cache_write", e.cache_write_tokens],
      ["reasoning", e.reasoning_tokens],
    ];
    for (const [kind, n] of kinds) if (n > 0) metrics.tokens.inc({ ...labels, kind }, n);
  }
}

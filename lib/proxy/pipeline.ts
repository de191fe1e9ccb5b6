/**
 * The parts of the proxy pipeline every inference endpoint shares: model resolution, forwarding
 * with retries and fallbacks, settling a JSON reply, and billing a stream through the usage tap.
 */
import type { Context } from "hono";
import type { AppEnv } from "../services.ts";
import { ApiError, badRequest, CLIENT_CLOSED } from "../http/errors.ts";
import type { ResolvedModel, UpstreamCall } from "../providers/types.ts";
import { echoUsage, UsageReader, type UsageShape, withSearches } from "../providers/usage.ts";
import { type NormalizedUsage, unpricedKinds, ZERO_USAGE } from "../pricing.ts";
import { usdNumber } from "../money.ts";
import type { Billed, MeteredRequest } from "./metered.ts";
import { usageAnomalies } from "../metrics.ts";
import { callUpstream, readUpstreamJson, type UpstreamReply } from "./upstream.ts";
import {
  type FailureEvent,
  type Observer,
  type SseFormat,
  type TapEnd,
  type TapHandlers,
  tapStream,
  type UsageAnswer,
} from "./sse.ts";
import {
  countReplyOutput,
  countStreamedOutput,
  type TokenCounter,
  tokenCounter,
} from "./tokens.ts";
import { pause } from "../kv/util.ts";
import { watchDeparture } from "../http/departure.ts";
import { utf8Bytes } from "../tokenizer.ts";
import {
  noteFinish,
  streamHandlers,
  streamWatch,
  upstreamAttempt,
} from "../telemetry/inference.ts";

/** Resolves the requested model for `type`, or throws its 404/400. */
export function resolveModel(c: Context<AppEnv>, requested: string, type: "chat" | "embedding") {
  const r = c.get("svc").providers.resolve(requested);
  if (!r.ok) {
    const slash = requested.indexOf("/");
    c.set("target", {
      provider: slash > 0 ? requested.slice(0, slash) : "",
      model: slash > 0 ? requested.slice(slash + 1) : requested,
    });
    throw new ApiError(404, r.code, r.message);
  }
  c.set("target", { provider: r.model.provider, model: r.model.model });
  if (r.model.type !== type) {
    throw badRequest(
      `The model '${requested}' is a${type === "chat" ? "n embedding" : " chat"} model`,
    );
  }
  return r.model;
}

/** The kinds of usage a request asks for that not every catalog entry prices. */
export interface PricedKinds {
  audioInput?: boolean;
  audioOutput?: boolean;
  webSearch?: boolean;
}

/** The kinds `wants` asks for that `model`'s prices have no rate for (see `unpricedKinds`). */
export function missingRates(model: ResolvedModel, wants: PricedKinds): string[] {
  return unpricedKinds({
    ...ZERO_USAGE,
    ...(wants.audioInput ? { audioIn: 1 } : {}),
    ...(wants.audioOutput ? { audioOut: 1 } : {}),
    ...(wants.webSearch ? { webSearches: 1 } : {}),
  }, model.prices);
}

/**
 * Refuses (404 `model_not_priced`, naming the kind) a request for a kind of usage its model's
 * catalog entry has no rate for: billed at another kind's rate it would be under-billed.
 */
export function requirePrices(model: ResolvedModel, wants: PricedKinds) {
  const missing = missingRates(model, wants);
  if (missing.length === 0) return;
  throw new ApiError(
    404,
    "model_not_priced",
    `The model '${model.provider}/${model.model}' has no catalog price for ${
      missing.join(" or ")
    }, so a request for it is not served.`,
  );
}

/**
 * The models a request may be answered by, in order: the primary, the request's own `models`
 * (OpenRouter style), then the operator's fallback chain. Names that are not offered, of another
 * type, or that `fits` rejects (a provider without the endpoint's API) are skipped; so are repeats.
 */
export function candidatesFor(
  c: Context<AppEnv>,
  primary: ResolvedModel,
  requested: readonly string[],
  fits: (m: ResolvedModel) => boolean = () => true,
): ResolvedModel[] {
  const providers = c.get("svc").providers;
  const out = [primary];
  const seen = new Set([`${primary.provider}/${primary.model}`]);
  for (const name of [...requested, ...providers.fallbacksFor(primary)]) {
    const r = providers.resolve(name);
    if (!r.ok || r.model.type !== primary.type || !fits(r.model)) continue;
    const id = `${r.model.provider}/${r.model.model}`;
    if (seen.has(id)) continue;
    seen.add(id);
    out.push(r.model);
  }
  return out.slice(0, 8);
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

/** The longest Retry-After honoured within a request; a longer one goes to the next candidate. */
const MAX_RETRY_WAIT_MS = 2000;
const retryAfterMs = (e: ApiError) => {
  const s = Number(e.headers["retry-after"]);
  return Number.isFinite(s) && s > 0 ? s * 1000 : 0;
};
/** A failure worth another try of the same model: rate limits, provider 5xx, no connection. */
const retryable = (e: ApiError) => e.status === 429 || e.status === 502;
/** A failure another model may not share (anything but the client's own invalid request). */
const fallbackable = (e: ApiError) => retryable(e) || e.status === 504;

/**
 * Forwards to each candidate in turn until one answers: a model is retried with exponential
 * backoff on 429, 5xx and connection errors, then the next candidate is tried. Nothing has been
 * sent to the client yet, so every retry is safe. Each failed attempt is recorded; the model that
 * answered becomes `m.model`, the one billed. If none answers, the hold is released and the last
 * error is thrown. A client that disconnects while a retry waits gets no further attempt: the
 * hold is released, recorded as `client_disconnected`.
 */
export async function forward(
  m: MeteredRequest,
  candidates: readonly ResolvedModel[],
  build: (model: ResolvedModel) => UpstreamCall,
): Promise<UpstreamReply> {
  const svc = m.c.get("svc");
  const { maxRetries, backoffMs } = svc.providers.retry;
  let attempt = 0;
  let last: { model: ResolvedModel; error: ApiError } | null = null;
  for (const model of candidates) {
    for (let retry = 0; retry <= maxRetries; retry++) {
      if (last) {
        await m.recordAttempt(last.model, attempt, last.error.status, last.error.code);
        const wait = retry > 0
          ? Math.max(backoffMs * 2 ** (retry - 1), retryAfterMs(last.error))
          : 0;
        if (!(await pauseUnlessGone(m, wait))) {
          // The client went away: nothing answered it, so nothing is billed.
          m.model = last.model;
          await m.release(CLIENT_CLOSED, "client_disconnected");
          throw new ApiError(CLIENT_CLOSED, "client_disconnected", "The client closed the request");
        }
      }
      attempt++;
      try {
        const reply = await upstreamAttempt(
          model,
          attempt,
          () => callUpstream(svc.fetch, build(model), svc.config.upstreamTimeoutMs),
        );
        m.model = model;
        m.c.set("target", { provider: model.provider, model: model.model });
        return reply;
      } catch (e) {
        const error = e instanceof ApiError
          ? e
          : new ApiError(502, "upstream_error", "The provider could not be reached");
        last = { model, error };
        svc.log("warn", "upstream attempt failed", {
          request_id: m.c.get("requestId"),
          provider: model.provider,
          model: model.model,
          attempt,
          status: error.status,
          code: error.code,
        });
        if (!retryable(error) || retryAfterMs(error) > MAX_RETRY_WAIT_MS) break;
      }
    }
    if (last && !fallbackable(last.error)) break;
  }
  const failed = last!;
  m.model = failed.model;
  await m.release(failed.error.status, failed.error.code);
  throw failed.error;
}

/**
 * Waits `ms` unless the client leaves first (false then). `Request.signal` alone misses most
 * departures (see `watchDeparture`). Read only once an attempt failed: the first attempt's path
 * stays as it was.
 */
async function pauseUnlessGone(m: MeteredRequest, ms: number): Promise<boolean> {
  const signal = m.c.req.raw.signal;
  if (ms <= 0) return !signal.aborted;
  const watch = watchDeparture(m.c.env as Deno.ServeHandlerInfo | undefined);
  try {
    return await pause(ms, AbortSignal.any([signal, watch.signal]));
  } finally {
    await watch.stop();
  }
}

/** Logs and counts the clamps a usage reader made (figures and field names only). */
export function logAnomalies(m: MeteredRequest, reader: UsageReader) {
  if (reader.anomalies.length === 0) return;
  usageAnomalies.inc({ provider: m.model.provider, kind: "malformed" });
  m.c.get("svc").log("warn", "upstream usage clamped", {
    request_id: m.c.get("requestId"),
    provider: m.model.provider,
    model: m.model.model,
    anomalies: reader.anomalies,
  });
}

/**
 * Reads a JSON reply and settles it; the body's `usage` (in `shape`) shows the figures billed and
 * gains the cost. Any failure releases. A reply without usage is counted by the router, as a
 * stream's is: `prompt` (the request's prompt as the router counts it, `Prompt.count`) and the
 * reply's output, both with the model's `tokenCounter`.
 */
export async function settleJson(
  m: MeteredRequest,
  reply: UpstreamReply,
  parse: (
    json: unknown,
    r: UsageReader,
  ) => { body: Record<string, unknown>; usage: NormalizedUsage },
  /** The prompt counted with `count`, with the results of `searches` web searches run. */
  prompt: (count: TokenCounter, searches: number) => NormalizedUsage,
  shape: UsageShape = "openai",
) {
  const svc = m.c.get("svc");
  let json: unknown;
  try {
    json = await readUpstreamJson(
      reply,
      svc.config.upstreamTimeoutMs,
      svc.config.maxUpstreamBodyBytes,
    );
  } catch (e) {
    await m.release(502, "upstream_error");
    throw e;
  }
  const reader = new UsageReader();
  const parsed = parse(json, reader);
  const body = parsed.body;
  let usage = parsed.usage;
  logAnomalies(m, reader);
  noteFinish(body);
  const missing = usage.prompt === 0 && usage.completion === 0;
  if (missing) {
    // Searches the reply did report are still billed (they are not tokens).
    const count = await tokenCounter(m.model);
    usage = withSearches(
      { ...prompt(count, usage.webSearches ?? 0), completion: countReplyOutput(body, count) },
      usage.webSearches ?? 0,
    );
    svc.log("warn", "reply without usage; counted by the router", {
      request_id: m.c.get("requestId"),
      prompt_tokens: usage.prompt,
      completion_tokens: usage.completion,
    });
  }
  const billed = await m.settle(usage, { errorCode: missing ? "usage_missing" : null });
  body.usage = withCost(body.usage, billed, shape);
  return body;
}

/** Characters of a stream's delivered text kept before they are counted and let go. */
const KEEP_CHARS = 256 * 1024;

/**
 * The output a stream delivered, for billing one that ends without its final usage: its text,
 * counted (`countStreamedOutput`) and let go in pieces of whole events, so that however long the
 * stream runs it keeps at most about KEEP_CHARS of it.
 */
class StreamedOutput {
  #kept: string[] = [];
  #chars = 0;
  #counted = 0;
  /** How pieces are counted once let go: the model's tokenizer when loaded, else UTF-8 bytes. */
  counter: TokenCounter = utf8Bytes;

  add(text: string) {
    this.#kept.push(text);
    this.#chars += text.length;
    if (this.#chars < KEEP_CHARS) return;
    this.#counted = this.count(this.counter);
    this.#kept = [];
    this.#chars = 0;
  }

  count(count: TokenCounter): number {
    return this.#counted + (this.#chars ? countStreamedOutput(this.#kept.join(""), count) : 0);
  }
}

/** The audit reason of a stream that ended without final usage, by how it ended. */
const END_REASON: Record<TapEnd, string> = {
  complete: "usage_missing",
  cancelled: "client_disconnected",
  error: "upstream_stream_failed",
  event_too_large: "upstream_stream_failed",
  too_long: "stream_too_long",
  shutdown: "shutting_down",
};

/** The limit that ended a stream early, as logged. */
const LIMIT_OF: Partial<Record<TapEnd, string>> = {
  too_long: "MAX_STREAM_MS",
  event_too_large: "MAX_SSE_EVENT_BYTES",
  shutdown: "SHUTDOWN_GRACE_MS",
};

/**
 * Bills a proxied stream. `onUsage` is the format's usage handling (see `TapHandlers`): it
 * settles the final usage with `settle` and returns the event the client gets; usage that is not
 * final yet (a provider's running count on a chunk that still carries choices) it hands to
 * `interim`, the latest replacing the one before. When the stream ends without a final usage, the
 * latest interim usage is settled (it is the provider's own count); without one the router counts
 * what was streamed with the model's `tokenCounter` and settles that on top of `inputUsage` (the
 * provider's input usage where it reported one early, else the prompt as the router counts it;
 * its output, where the provider reported a running count, is taken as the count), or releases
 * the hold if the upstream failed before producing anything. Either is audited with the reason
 * (`usage_missing`, `client_disconnected`, `upstream_stream_failed`, `stream_too_long`; the third
 * also when a `failure` event was streamed: the provider's own, or a translator's error chunk).
 * `settle` takes that reason too when the final usage itself comes with a failure. The stream is
 * bounded by `UPSTREAM_TIMEOUT_MS` between chunks, `MAX_SSE_EVENT_BYTES` per event and
 * `MAX_STREAM_MS` in all; ending it early sends an error event in the client's `format` (or the
 * format's own end once the final usage is in).
 */
export function billStream(
  m: MeteredRequest,
  upstream: ReadableStream<Uint8Array>,
  onUsage: (
    chunk: Record<string, unknown>,
    event: string,
    settle: (u: NormalizedUsage, errorCode?: string) => Promise<Billed>,
    interim: (u: NormalizedUsage) => void,
  ) => Promise<UsageAnswer>,
  inputUsage: (count: TokenCounter) => NormalizedUsage,
  opts: {
    /** The format of the events that end the stream early (default OpenAI's). */
    format?: SseFormat;
    /** What to send for an event carrying usage after the final one (see `TapHandlers`). */
    afterFinal?: (chunk: Record<string, unknown>) => string | null | undefined;
    /**
     * The event by which the provider reports a failure in a stream passed through as it came
     * (Anthropic's `event: error`, an OpenAI error chunk or Responses `error` event): a stream
     * ending without final usage after one is audited `upstream_stream_failed`, as with `failed`.
     */
    failure?: FailureEvent;
    /**
     * Events to look at before the final usage (see `TapHandlers.observe`): what they tell (web
     * searches already run) belongs in `inputUsage`, billed if the stream ends without usage.
     */
    observe?: Observer;
  } = {},
): ReadableStream<Uint8Array> {
  const svc = m.c.get("svc");
  m.streamed();
  let settled = false;
  let latest: NormalizedUsage | null = null;
  let failed = false;
  const output = new StreamedOutput();
  // The model's tokenizer, loaded once per process: pieces counted before it is ready are counted
  // by their UTF-8 bytes, never fewer than its tokens.
  const counter = tokenCounter(m.model);
  counter.then((count) => output.counter = count, () => {});
  /** The usage the router counts: the input side, and the output streamed unless reported. */
  const counted = async () => {
    const count = await counter;
    const input = inputUsage(count);
    if (input.completion > 0) return input;
    return { ...input, completion: output.count(count), reasoning: 0 };
  };
  // A final usage of no tokens at all is no count (a provider left it empty): as in a reply
  // without usage, the latest interim usage or the router's own count is settled instead.
  const settle = async (u: NormalizedUsage, errorCode?: string) => {
    settled = true;
    if (u.prompt !== 0 || u.completion !== 0) return await m.settle(u, { errorCode });
    const usage = withSearches(latest ?? await counted(), u.webSearches ?? 0);
    svc.log("warn", "stream's final usage is empty; counted by the router", {
      request_id: m.c.get("requestId"),
      prompt_tokens: usage.prompt,
      completion_tokens: usage.completion,
    });
    return await m.settle(usage, { errorCode: errorCode ?? "usage_missing" });
  };
  const interim = (u: NormalizedUsage) => {
    latest = u;
  };
  const watch = streamWatch(m.model, m.c.get("startedAt"), svc.now);
  const observe: Observer[] = opts.observe ? [opts.observe, watch.finish] : [watch.finish];
  const failure = opts.failure;
  if (failure) {
    observe.push({
      pattern: failure.pattern,
      see(chunk, name) {
        failed ||= failure.is(chunk, name);
      },
    });
  }
  const { upstreamTimeoutMs, maxStreamMs, maxSseEventBytes } = svc.config;
  const handlers: TapHandlers = {
    format: opts.format,
    afterFinal: opts.afterFinal,
    observe,
    delivered: (text) => {
      watch.delivered();
      output.add(text);
    },
    onUsage: (chunk, event) => onUsage(chunk, event, settle, interim),
    async onEnd(kind) {
      const limit = LIMIT_OF[kind];
      if (limit) {
        svc.log("warn", "stream ended at a limit", {
          request_id: m.c.get("requestId"),
          limit,
          usage_settled: settled,
        });
      }
      if (settled) return;
      const errorCode = failed ? "upstream_stream_failed" : END_REASON[kind];
      if (latest) {
        await m.settle(latest, { errorCode });
        svc.log("warn", "stream ended without final usage; its latest usage settled", {
          request_id: m.c.get("requestId"),
          reason: errorCode,
          prompt_tokens: latest.prompt,
          completion_tokens: latest.completion,
        });
        return;
      }
      const usage = await counted();
      // Searches the provider already ran are billed even when no output came before the failure.
      const broke = kind === "error" || kind === "event_too_large";
      if (broke && usage.completion === 0 && !usage.webSearches) {
        await m.release(502, "upstream_error");
        return;
      }
      const billed = await m.settle(usage, { errorCode });
      svc.log("warn", "stream ended without usage; counted by the router", {
        request_id: m.c.get("requestId"),
        reason: errorCode,
        prompt_tokens: billed.usage.prompt,
        completion_tokens: billed.usage.completion,
        web_searches: billed.usage.webSearches ?? 0,
      });
    },
  };
  // Bound to the request's trace; ended among the others at the shutdown deadline (`live`).
  return tapStream(upstream, streamHandlers(handlers), {
    idleMs: upstreamTimeoutMs,
    maxStreamMs,
    maxEventBytes: maxSseEventBytes,
    live: svc.streams,
  });
}

/** Response headers of a proxied event stream. */
export const SSE_HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
};

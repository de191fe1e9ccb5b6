/**
 * The parts of the proxy pipeline every inference endpoint shares: model resolution, forwarding
 * with retries and fallbacks, settling a JSON reply, and billing a stream through the usage tap.
 */
import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { AppEnv } from "../services.ts";
import { ApiError, badRequest } from "../http/errors.ts";
import type { ResolvedModel, UpstreamCall } from "../providers/types.ts";
import { UsageReader, withSearches } from "../providers/usage.ts";
import { type Cost, type NormalizedUsage, ZERO_USAGE } from "../pricing.ts";
import { usdNumber } from "../money.ts";
import type { MeteredRequest } from "./metered.ts";
import { callUpstream, readUpstreamJson, type UpstreamReply } from "./upstream.ts";
import {
  type FailureEvent,
  holdsFailure,
  type Observer,
  type SseFormat,
  tapStream,
  type UsageAnswer,
} from "./sse.ts";
import { countReplyOutput, countStreamedOutput } from "./tokens.ts";
import { pause } from "../kv/util.ts";

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

/** The usage object with the router's `cost` and `market_cost` (USD numbers) added. */
export const withCost = (usage: unknown, cost: Cost) => ({
  ...(usage && typeof usage === "object" ? usage : {}),
  cost: usdNumber(cost.cost),
  market_cost: usdNumber(cost.market),
});

/**
 * The status recorded for a request whose client went away before any reply: nginx's "client
 * closed request", since no status was ever answered.
 */
const CLIENT_CLOSED = 499 as ContentfulStatusCode;
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
        // Read only once an attempt failed: the first attempt's path stays as it was.
        const signal = m.c.req.raw.signal;
        const wait = retry > 0
          ? Math.max(backoffMs * 2 ** (retry - 1), retryAfterMs(last.error))
          : 0;
        if (!(await pause(wait, signal))) {
          // The client went away: nothing answered it, so nothing is billed.
          m.model = last.model;
          await m.release(CLIENT_CLOSED, "client_disconnected");
          throw new ApiError(CLIENT_CLOSED, "client_disconnected", "The client closed the request");
        }
      }
      attempt++;
      try {
        const reply = await callUpstream(svc.fetch, build(model), svc.config.upstreamTimeoutMs);
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

/** Logs the clamps a usage reader made (counts and field names only). */
export function logAnomalies(m: MeteredRequest, reader: UsageReader) {
  if (reader.anomalies.length === 0) return;
  m.c.get("svc").log("warn", "upstream usage clamped", {
    request_id: m.c.get("requestId"),
    provider: m.model.provider,
    model: m.model.model,
    anomalies: reader.anomalies,
  });
}

/**
 * Reads a JSON reply and settles it; the body's `usage` gains the cost. Any failure releases. A
 * reply without usage is counted by the router, as a stream's is: `promptTokens` (the request's
 * estimate) and the reply's output.
 */
export async function settleJson(
  m: MeteredRequest,
  reply: UpstreamReply,
  parse: (
    json: unknown,
    r: UsageReader,
  ) => { body: Record<string, unknown>; usage: NormalizedUsage },
  promptTokens: () => number,
) {
  const svc = m.c.get("svc");
  let json: unknown;
  try {
    json = await readUpstreamJson(reply, svc.config.upstreamTimeoutMs);
  } catch (e) {
    await m.release(502, "upstream_error");
    throw e;
  }
  const reader = new UsageReader();
  const parsed = parse(json, reader);
  const body = parsed.body;
  let usage = parsed.usage;
  logAnomalies(m, reader);
  const missing = usage.prompt === 0 && usage.completion === 0;
  if (missing) {
    // Searches the reply did report are still billed (they are not tokens).
    usage = withSearches(
      { ...ZERO_USAGE, prompt: promptTokens(), completion: countReplyOutput(body) },
      usage.webSearches ?? 0,
    );
    svc.log("warn", "reply without usage; counted by the router", {
      request_id: m.c.get("requestId"),
      prompt_tokens: usage.prompt,
      completion_tokens: usage.completion,
    });
  }
  const cost = await m.settle(usage, { errorCode: missing ? "usage_missing" : null });
  body.usage = withCost(body.usage, cost);
  return body;
}

/**
 * Bills a proxied stream. `onUsage` is the format's usage handling (see `TapHandlers`): it
 * settles the final usage with `settle` and returns the event the client gets; usage that is not
 * final yet (a provider's running count on a chunk that still carries choices) it hands to
 * `interim`, the latest replacing the one before. When the stream ends without a final usage, the
 * latest interim usage is settled (it is the provider's own count); without one the router counts
 * what was streamed and settles that on top of `inputUsage` (the input side as far as known), or
 * releases the hold if the upstream failed before producing anything. Either is audited with the
 * reason (`usage_missing`, `client_disconnected`, `upstream_stream_failed`; the last also when a
 * `failure` event was streamed: the provider's own, or a translator's error chunk).
 * `settle` takes that reason too when the final usage itself comes with a failure. An upstream
 * failure ends the stream with an error event in the client's `format`.
 */
export function billStream(
  m: MeteredRequest,
  upstream: ReadableStream<Uint8Array>,
  onUsage: (
    chunk: Record<string, unknown>,
    event: string,
    settle: (u: NormalizedUsage, errorCode?: string) => Promise<Cost>,
    interim: (u: NormalizedUsage) => void,
  ) => Promise<UsageAnswer>,
  inputUsage: () => NormalizedUsage,
  opts: {
    /** The format of the error event that ends a failed stream (default OpenAI's). */
    format?: SseFormat;
    /** What to send for an event carrying usage after the final one (see `TapHandlers`). */
    afterFinal?: (chunk: Record<string, unknown>) => string | null | undefined;
    /**
     * The event by which the provider reports a failure in a stream passed through as it came
     * (Anthropic's `event: error`, an OpenAI error chunk or Responses `error` event): a stream
     * ending without final usage after one is audited `upstream_stream_failed`, as with `failed`.
     * Looked for in what was streamed once the stream has ended, not in each chunk as it passes.
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
  // A final usage of no tokens at all is no count (a provider left it empty): as in a reply
  // without usage, the latest interim usage or the router's own count is settled instead.
  const settleWith = (produced: () => string) => (u: NormalizedUsage, errorCode?: string) => {
    settled = true;
    if (u.prompt !== 0 || u.completion !== 0) return m.settle(u, { errorCode });
    const counted = withSearches(
      latest ?? { ...inputUsage(), completion: countStreamedOutput(produced()), reasoning: 0 },
      u.webSearches ?? 0,
    );
    svc.log("warn", "stream's final usage is empty; counted by the router", {
      request_id: m.c.get("requestId"),
      prompt_tokens: counted.prompt,
      completion_tokens: counted.completion,
    });
    return m.settle(counted, { errorCode: errorCode ?? "usage_missing" });
  };
  const interim = (u: NormalizedUsage) => {
    latest = u;
  };
  return tapStream(upstream, {
    format: opts.format,
    afterFinal: opts.afterFinal,
    observe: opts.observe,
    onUsage: (chunk, event, produced) => onUsage(chunk, event, settleWith(produced), interim),
    async onEnd(kind, produced) {
      if (settled) return;
      let text: string | undefined;
      const streamed = () => text ??= produced();
      const errorCode = kind === "error" ||
          (opts.failure !== undefined && holdsFailure(streamed(), opts.failure))
        ? "upstream_stream_failed"
        : kind === "complete"
        ? "usage_missing"
        : "client_disconnected";
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
      const completion = countStreamedOutput(streamed());
      const input = inputUsage();
      // Searches the provider already ran are billed even when no output came before the failure.
      if (kind === "error" && completion === 0 && !input.webSearches) {
        await m.release(502, "upstream_error");
        return;
      }
      await m.settle({ ...input, completion, reasoning: 0 }, { errorCode });
      svc.log("warn", "stream ended without usage; counted by the router", {
        request_id: m.c.get("requestId"),
        reason: errorCode,
        completion_tokens: completion,
        web_searches: input.webSearches ?? 0,
      });
    },
  }, svc.config.upstreamTimeoutMs);
}

/** Response headers of a proxied event stream. */
export const SSE_HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
};

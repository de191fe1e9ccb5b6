/**
 * The pipeline's first stages: the model named resolved, the candidates that may answer it, and
 * forwarding to them in turn with retries and fallbacks until one answers.
 */
import { ApiError, badRequest, CLIENT_CLOSED } from "../errors.ts";
import type { Providers, RetryPolicy } from "../providers/registry.ts";
import type { ResolvedModel, UpstreamCall } from "../providers/types.ts";
import { unpricedKinds, ZERO_USAGE } from "../pricing.ts";
import type { RequestAudit } from "./audit.ts";
import type { MeteredRequest } from "./metered.ts";
import { callUpstream, shuttingDown, type UpstreamReply } from "./upstream.ts";
import { upstreamAttempt } from "../telemetry/inference.ts";

/**
 * The model `requested` names, of `type`, or its 404/400. The audit record names it from here on
 * (as the request named it, when it is not offered).
 */
export function resolveModel(
  providers: Providers,
  audit: RequestAudit,
  requested: string,
  type: "chat" | "embedding",
): ResolvedModel {
  const r = providers.resolve(requested);
  if (!r.ok) {
    const slash = requested.indexOf("/");
    audit.target = {
      provider: slash > 0 ? requested.slice(0, slash) : "",
      model: slash > 0 ? requested.slice(slash + 1) : requested,
    };
    throw new ApiError(404, r.code, r.message);
  }
  audit.target = { provider: r.model.provider, model: r.model.model };
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
  providers: Providers,
  primary: ResolvedModel,
  requested: readonly string[],
  fits: (m: ResolvedModel) => boolean = () => true,
): ResolvedModel[] {
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

/** How `forward` reaches the providers. */
export interface ForwardOptions {
  fetch: typeof fetch;
  retry: RetryPolicy;
  /** The longest wait for a provider's answer (`UPSTREAM_TIMEOUT_MS`). */
  timeoutMs: number;
  /**
   * Waits `ms` before another attempt unless the client leaves first: false then (called only once
   * an attempt failed, so the first attempt's path stays bare).
   */
  wait: (ms: number) => Promise<boolean>;
  /**
   * Aborted at the shutdown deadline: the attempt waiting is given up and no other is made; the
   * hold is released and the client answered 503 `shutting_down`.
   */
  stop?: AbortSignal;
}

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
  opts: ForwardOptions,
): Promise<UpstreamReply> {
  const { maxRetries, backoffMs } = opts.retry;
  let attempt = 0;
  let last: { model: ResolvedModel; error: ApiError } | null = null;
  for (const model of candidates) {
    for (let retry = 0; retry <= maxRetries; retry++) {
      if (last) {
        await m.recordAttempt(last.model, attempt, last.error.status, last.error.code);
        const wait = retry > 0
          ? Math.max(backoffMs * 2 ** (retry - 1), retryAfterMs(last.error))
          : 0;
        if (!(await opts.wait(wait))) {
          // The client went away: nothing answered it, so nothing is billed.
          m.model = last.model;
          await m.release(CLIENT_CLOSED, "client_disconnected");
          throw new ApiError(CLIENT_CLOSED, "client_disconnected", "The client closed the request");
        }
      }
      if (opts.stop?.aborted) {
        last = { model: last?.model ?? model, error: shuttingDown() };
        break;
      }
      attempt++;
      try {
        const reply = await upstreamAttempt(
          model,
          attempt,
          () => callUpstream(opts.fetch, build(model), opts.timeoutMs, opts.stop),
        );
        m.answeredBy(model);
        return reply;
      } catch (e) {
        const error = e instanceof ApiError
          ? e
          : new ApiError(502, "upstream_error", "The provider could not be reached");
        last = { model, error };
        m.deps.log("warn", "upstream attempt failed", {
          request_id: m.requestId,
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

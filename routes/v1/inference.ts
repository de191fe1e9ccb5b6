/**
 * The inference API: chat completions, Messages, Responses and embeddings (each one format module
 * in lib/formats, all served by `runInference`), the free token count, the models and the key.
 */
import { type Context, Hono } from "hono";
import { createMiddleware } from "hono/factory";
import type { AppEnv } from "../../lib/services.ts";
import { auditableKey, presentedSecret, requireKey } from "../../lib/http/auth.ts";
import { ApiError, badRequest } from "../../lib/errors.ts";
import { apiErrorOf, parseJson } from "../../lib/http/errors.ts";
import { clientFacts } from "../../lib/http/client.ts";
import { watchDeparture } from "../../lib/http/departure.ts";
import { pause } from "../../lib/kv/util.ts";
import type { ApiKey } from "../../lib/billing/types.ts";
import { RequestAudit } from "../../lib/proxy/audit.ts";
import { MeteredRequest } from "../../lib/proxy/metered.ts";
import {
  candidatesFor,
  forward,
  missingRates,
  requirePrices,
  resolveModel,
} from "../../lib/proxy/forward.ts";
import { billStream, settleJson } from "../../lib/proxy/settle.ts";
import { Prompt, tokenCounter } from "../../lib/proxy/tokens.ts";
import { callUpstream, readUpstreamJson } from "../../lib/proxy/upstream.ts";
import type { Format } from "../../lib/formats/format.ts";
import { chat } from "../../lib/formats/chat.ts";
import { countTokensBody, messages } from "../../lib/formats/messages.ts";
import { responses } from "../../lib/formats/responses.ts";
import { embeddings } from "../../lib/formats/embeddings.ts";
import { obj } from "../../lib/providers/common.ts";
import { UsageReader } from "../../lib/providers/usage.ts";
import type { ResolvedModel } from "../../lib/providers/types.ts";
import { divRound, formatUsd } from "../../lib/money.ts";
import { getKeySpend } from "../../lib/auth/keys.ts";
import { periodEnd } from "../../lib/billing/periods.ts";

/** The inference routes' context: the app's, and the request's audit record. */
export type InferenceEnv = { Variables: AppEnv["Variables"] & { audit: RequestAudit } };

/** Response headers of a proxied event stream. */
const SSE_HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
};

/**
 * Serves one inference request of `format`, top to bottom: the body parsed, the model resolved
 * and its candidates found, the worst case held, the request forwarded until a candidate answers,
 * and the reply settled (JSON) or billed as it streams. Every refusal is thrown as an `ApiError`
 * (its audit row written by `inferenceAudit`); from the hold on, the metering writes the row.
 */
export async function runInference<B>(
  c: Context<InferenceEnv>,
  format: Format<B>,
): Promise<Response> {
  const svc = c.get("svc");
  const audit = c.get("audit");

  // Parse: the body against the format's schema; a refusal from here on is audited as the kind
  // of request it was.
  const raw = await c.req.text();
  const req = format.request(raw, parseJson(raw, format.schema));
  audit.streaming = req.stream;

  // Resolve: the model named, then every candidate that may answer it (its fallbacks that serve
  // this request and price what it asks for).
  const primary = resolveModel(svc.providers, audit, req.model, format.type);
  const unfit = req.unfit(primary);
  if (unfit) throw badRequest(unfit);
  requirePrices(primary, req.wants(primary));
  const candidates = format.fallsBack
    ? candidatesFor(
      svc.providers,
      primary,
      req.fallbacks,
      (m) => req.unfit(m) === null && missingRates(m, req.wants(m)).length === 0,
    )
    : [primary];

  // Hold: the worst case of the dearest candidate, before any provider is called.
  const metered = new MeteredRequest({
    actors: svc.actors,
    log: svc.log,
    holdTtlMs: svc.config.holdTtlMs,
    key: c.get("key"),
    audit,
  }, primary);
  await metered.reserve(req.hold(candidates));

  try {
    // Forward: each candidate in turn, retried, until one answers (the one billed).
    const reply = await forward(metered, candidates, (m) => req.call(m, c.req.raw.headers), {
      fetch: svc.fetch,
      retry: svc.providers.retry,
      timeoutMs: svc.config.upstreamTimeoutMs,
      wait: (ms) => pauseUnlessGone(c, ms),
      stop: svc.streams.signal,
    });

    // Settle: a JSON reply now; a stream as it ends, its format's reducer deciding when.
    if (!req.stream || !req.events) {
      return c.json(await settleJson(metered, req, reply, svc.config, svc.streams.signal));
    }
    // `callUpstream` answers only with a body.
    const stream = req.events(metered.model, reply.res.body!, {
      maxEventBytes: svc.config.maxSseEventBytes,
      bounded: (u) => metered.bounded(u, false),
    });
    return c.body(billStream(metered, stream, svc.config, svc.streams), 200, SSE_HEADERS);
  } catch (e) {
    metered.abandon(e);
    throw e;
  }
}

/**
 * Waits `ms` unless the client leaves first (false then). `Request.signal` alone misses most
 * departures (see `watchDeparture`).
 */
async function pauseUnlessGone(c: Context<InferenceEnv>, ms: number): Promise<boolean> {
  const signal = c.req.raw.signal;
  if (ms <= 0) return !signal.aborted;
  const watch = watchDeparture(c.env as Deno.ServeHandlerInfo | undefined);
  try {
    return await pause(ms, AbortSignal.any([signal, watch.signal]));
  } finally {
    await watch.stop();
  }
}

/**
 * The audit record of an inference request (`RequestAudit`), and its one row where the metering
 * wrote none: once the request is answered, a refusal (4xx, 5xx) is recorded at cost 0 with its
 * code, and a free call (a token count) without one. The key is the authenticated one; a request
 * refused before authentication (a URL or a body over its limit is refused before its key is
 * read) or by it (a disabled key) is recorded under the key it presented, when that key's account
 * is known (`auditableKey`). Registered before the request limits, so it sees their refusals.
 */
export const inferenceAudit = createMiddleware<InferenceEnv>(async (c, next) => {
  const svc = c.get("svc");
  const audit = new RequestAudit(c.get("requestId"), c.get("startedAt"), clientFacts(c), svc.now);
  c.set("audit", audit);
  await next();
  if (audit.recorded || audit.deferred) return;
  const status = c.res.status;
  const key = (c.get("key") as ApiKey | undefined) ??
    (status >= 400 ? await presentedKey(c) : null);
  if (!key || key.scope !== "inference") return;
  const errorCode = status < 400 ? null : apiErrorOf(c.error)?.code ?? `http_${status}`;
  const event = audit.event(key, { status, errorCode });
  audit.markRecorded();
  await svc.actors.submit(key.account_id, { kind: "record", event });
});

/** The inference key a request presented, if its account is known (`auditableKey`). */
async function presentedKey(c: Context<InferenceEnv>): Promise<ApiKey | null> {
  const secret = presentedSecret(c.req.raw);
  if (!secret) return null;
  const svc = c.get("svc");
  return auditableKey(await svc.keys.resolve(secret), "inference", svc.now());
}

/**
 * `POST /v1/messages/count_tokens`: free, so neither held nor billed. Models that speak Messages
 * natively ask the provider; other models get the router's estimate.
 */
async function countTokens(c: Context<InferenceEnv>) {
  const raw = await c.req.text();
  const body = parseJson(raw, countTokensBody);
  const svc = c.get("svc");
  const model = resolveModel(svc.providers, c.get("audit"), body.model, "chat");
  const native = model.adapter.native?.count_tokens;
  if (!native) {
    const usage = new Prompt(raw, body).count(model, await tokenCounter(model));
    return c.json({ input_tokens: usage.prompt });
  }
  const call = native(model.upstream, { ...body, model: model.model }, c.req.raw.headers);
  // Given up at the shutdown deadline, as a billed request is.
  const stop = svc.streams.signal;
  const reply = await callUpstream(svc.fetch, call, svc.config.upstreamTimeoutMs, stop);
  const json = obj(
    await readUpstreamJson(
      reply,
      svc.config.upstreamTimeoutMs,
      svc.config.maxUpstreamBodyBytes,
      stop,
    ),
  );
  return c.json({ input_tokens: new UsageReader().count(json.input_tokens, "input_tokens") });
}

/** The per-million-token prices of a model, market and your rate, as USD strings. */
function pricing(m: ResolvedModel) {
  const rate = (n: bigint | undefined) => n === undefined ? undefined : formatUsd(n);
  const yours = (n: bigint | undefined) =>
    n === undefined ? undefined : formatUsd(divRound(n * BigInt(10_000 - m.discountBps), 10_000n));
  const p = m.prices;
  const table = (f: (n: bigint | undefined) => string | undefined) => ({
    input: f(p.input.base),
    output: f(p.output.base),
    cache_read: f((p.cacheRead ?? p.input).base),
    cache_write: f((p.cacheWrite ?? p.input).base),
    cache_write_1h: f((p.cacheWrite1h ?? p.cacheWrite ?? p.input).base),
    // Audio where the model prices it apart from text (otherwise at the text rates above).
    ...(p.inputAudio ? { input_audio: f(p.inputAudio.base) } : {}),
    ...(p.cacheAudioRead ? { cache_audio_read: f(p.cacheAudioRead.base) } : {}),
    ...(p.outputAudio ? { output_audio: f(p.outputAudio.base) } : {}),
  });
  return {
    unit: "USD per million tokens",
    market: table(rate),
    your_rate: table(yours),
    discount_percent: m.discountBps / 100,
  };
}

/** A model as `GET /v1/models` lists it: OpenAI's model object, with `type` and `pricing`. */
function modelObject(m: ResolvedModel) {
  return {
    id: `${m.provider}/${m.model}`,
    object: "model",
    created: Math.floor(Date.UTC(2024, 0, 1) / 1000),
    owned_by: m.provider,
    type: m.type,
    pricing: pricing(m),
  };
}

/** The inference API: chat completions, messages, responses, embeddings, models and the key. */
export function inferenceRoutes() {
  const app = new Hono<InferenceEnv>();

  let cached: { at: number; body: unknown } | null = null;
  app.get("/models", (c) => {
    const svc = c.get("svc");
    if (!cached || svc.now() - cached.at > 60_000) {
      cached = {
        at: svc.now(),
        body: { object: "list", data: svc.providers.list().map(modelObject) },
      };
    }
    return c.json(cached.body);
  });
  // One model (OpenAI's `models.retrieve`). Its id holds a slash, sent as is or as %2F; a bare
  // catalog name resolves as it does in a chat request.
  app.get("/models/:id{.+}", (c) => {
    const r = c.get("svc").providers.resolve(c.req.param("id"));
    if (!r.ok) throw new ApiError(404, r.code, r.message);
    // As in the list: an embedding model only where the provider speaks embeddings.
    if (r.model.type === "embedding" && !r.model.adapter.embeddingsRequest) {
      throw new ApiError(
        404,
        "model_not_found",
        `The model '${r.model.provider}/${r.model.model}' is not offered. GET /v1/models lists the models.`,
      );
    }
    return c.json(modelObject(r.model));
  });

  for (const path of INFERENCE_PATHS) app.use(path, requireKey("inference"));
  app.use("/key", requireKey("inference"));
  app.post("/chat/completions", (c) => runInference(c, chat));
  app.post("/messages", (c) => runInference(c, messages));
  app.post("/responses", (c) => runInference(c, responses));
  app.post("/embeddings", (c) => runInference(c, embeddings));
  app.post("/messages/count_tokens", countTokens);

  app.get("/key", async (c) => {
    const svc = c.get("svc");
    const key = c.get("key");
    const now = svc.now();
    const s = await getKeySpend(svc.kv, key, now);
    const used = key.limit_reset ? s.period_spend : s.spend;
    const end = periodEnd(key.limit_reset, now);
    return c.json({
      id: key.id,
      name: key.name,
      credit_limit: key.credit_limit === null ? null : formatUsd(key.credit_limit),
      limit_reset: key.limit_reset,
      limit_resets_at: end === null ? null : new Date(end).toISOString(),
      spend: formatUsd(s.spend),
      reserved: formatUsd(s.reserved),
      remaining: key.credit_limit === null ? null : formatUsd(key.credit_limit - used - s.reserved),
      usage_today: formatUsd(s.usage_today),
      usage_month: formatUsd(s.usage_month),
      rate_limit_rpm: key.rate_limit_rpm,
      expires_at: key.expires_at,
    });
  });
  return app;
}

/** The inference requests (under /v1): each audited (`inferenceAudit`). */
export const INFERENCE_PATHS = [
  "/chat/completions",
  "/embeddings",
  "/messages",
  "/messages/count_tokens",
  "/responses",
] as const;

/**
 * The inference API for the route registry: its requests carry `InferenceEnv`'s audit record, set
 * by `inferenceAudit` (lib/app.ts) before any of its routes runs.
 */
export default (): Hono<AppEnv> => inferenceRoutes() as unknown as Hono<AppEnv>;

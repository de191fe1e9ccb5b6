import { type Context, Hono } from "hono";
import { z } from "zod";
import type { AppEnv } from "../../lib/services.ts";
import { requireKey } from "../../lib/http/auth.ts";
import { ApiError, badRequest, describeZod } from "../../lib/http/errors.ts";
import { MeteredRequest, usageEvent } from "../../lib/proxy/metered.ts";
import { callUpstream, readUpstreamJson } from "../../lib/proxy/upstream.ts";
import { tapStream } from "../../lib/proxy/sse.ts";
import {
  countStreamedOutput,
  estimatePromptTokens,
  promptTokenBound,
} from "../../lib/proxy/tokens.ts";
import { readOpenAIUsage, UsageReader } from "../../lib/providers/usage.ts";
import type { ResolvedModel } from "../../lib/providers/types.ts";
import { type Cost, ZERO_USAGE } from "../../lib/pricing.ts";
import { divRound, formatUsd, usdNumber } from "../../lib/money.ts";
import { getKeySpend } from "../../lib/auth/keys.ts";
import { currentSpend, periodEnd } from "../../lib/billing/periods.ts";

const tokenLimit = z.number().int().min(1).max(10_000_000);

const chatSchema = z.looseObject({
  model: z.string().min(1, "is required"),
  messages: z.array(z.looseObject({ role: z.string() })).min(1, "must have at least one message"),
  stream: z.boolean().nullish(),
  stream_options: z.looseObject({ include_usage: z.boolean().optional() }).nullish(),
  max_tokens: tokenLimit.nullish(),
  max_completion_tokens: tokenLimit.nullish(),
  n: z.number().int().min(1).max(128).nullish(),
});

const embeddingsSchema = z.looseObject({
  model: z.string().min(1, "is required"),
  input: z.union([
    z.string(),
    z.array(z.string()).min(1),
    z.array(z.number().int()).min(1),
    z.array(z.array(z.number().int())).min(1),
  ]),
});

/** Parses the raw body against a schema: 400 naming the field on any fault. */
function parseBody<T extends z.ZodType>(raw: string, schema: T): z.output<T> {
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    throw badRequest("The request body is not valid JSON");
  }
  const r = schema.safeParse(json);
  if (!r.success) throw badRequest(describeZod(r.error));
  return r.data;
}

/** Resolves the requested model for `type`, or throws its 404/400. */
function resolveModel(c: Context<AppEnv>, requested: string, type: "chat" | "embedding") {
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

const withCost = (usage: unknown, cost: Cost) => ({
  ...(usage && typeof usage === "object" ? usage : {}),
  cost: usdNumber(cost.cost),
  market_cost: usdNumber(cost.market),
});

/** Forwards, and on failure before a reply releases the hold and rethrows the mapped error. */
async function forward(m: MeteredRequest, call: Parameters<typeof callUpstream>[1]) {
  const svc = m.c.get("svc");
  try {
    return await callUpstream(svc.fetch, call, svc.config.upstreamTimeoutMs);
  } catch (e) {
    if (e instanceof ApiError) await m.release(e.status, e.code);
    else await m.release(502, "upstream_error");
    throw e;
  }
}

/** Reads a JSON reply and settles it; any failure releases the hold. */
async function settleJson(
  m: MeteredRequest,
  reply: Awaited<ReturnType<typeof forward>>,
  parse: (
    json: unknown,
    r: UsageReader,
  ) => { body: Record<string, unknown>; usage: typeof ZERO_USAGE },
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
  const { body, usage } = parse(json, reader);
  logAnomalies(m, reader);
  const cost = await m.settle(usage);
  body.usage = withCost(body.usage, cost);
  return body;
}

function logAnomalies(m: MeteredRequest, reader: UsageReader) {
  if (reader.anomalies.length === 0) return;
  m.c.get("svc").log("warn", "upstream usage clamped", {
    request_id: m.c.get("requestId"),
    provider: m.model.provider,
    model: m.model.model,
    anomalies: reader.anomalies,
  });
}

async function chatCompletions(c: Context<AppEnv>) {
  const raw = await c.req.text();
  const body = parseBody(raw, chatSchema);
  const model = resolveModel(c, body.model, "chat");
  const stream = body.stream === true;
  const outputTokens = (body.max_completion_tokens ?? body.max_tokens ?? model.maxOutputTokens) *
    (body.n ?? 1);
  const m = new MeteredRequest(c, model, stream);
  await m.reserve(promptTokenBound(raw), outputTokens);

  const upstreamBody: Record<string, unknown> = { ...body, model: model.model };
  if (!stream) {
    const reply = await forward(m, model.adapter.chatRequest(model.upstream, upstreamBody));
    return c.json(await settleJson(m, reply, model.adapter.chatReply));
  }
  // The router always needs the usage chunk; the client sees it only if it asked for it.
  const wantsUsage = body.stream_options?.include_usage === true;
  upstreamBody.stream_options = { ...(body.stream_options ?? {}), include_usage: true };
  const reply = await forward(m, model.adapter.chatRequest(model.upstream, upstreamBody));
  return c.body(streamWithBilling(m, model, body, reply.res.body!, wantsUsage), 200, {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
  });
}

function streamWithBilling(
  m: MeteredRequest,
  model: ResolvedModel,
  body: Record<string, unknown>,
  upstream: ReadableStream<Uint8Array>,
  wantsUsage: boolean,
): ReadableStream<Uint8Array> {
  const svc = m.c.get("svc");
  const reader = new UsageReader();
  return tapStream(model.adapter.chatStream(upstream), {
    async onUsage(chunk) {
      const cost = await m.settle(readOpenAIUsage(chunk.usage, reader));
      logAnomalies(m, reader);
      if (wantsUsage) {
        return "data: " + JSON.stringify({ ...chunk, usage: withCost(chunk.usage, cost) });
      }
      if (Array.isArray(chunk.choices) && chunk.choices.length > 0) {
        const { usage: _drop, ...rest } = chunk;
        return "data: " + JSON.stringify(rest);
      }
      return null;
    },
    async onEnd(kind, produced) {
      // Usage arrived and was settled; otherwise count what reached the client ourselves.
      const completion = countStreamedOutput(produced());
      if (kind === "error" && completion === 0) {
        await m.release(502, "upstream_error");
        return;
      }
      const errorCode = kind === "complete"
        ? "usage_missing"
        : kind === "cancelled"
        ? "client_disconnected"
        : "upstream_stream_failed";
      await m.settle({ ...ZERO_USAGE, prompt: estimatePromptTokens(body), completion }, {
        errorCode,
      });
      svc.log("warn", "stream ended without usage; counted by the router", {
        request_id: m.c.get("requestId"),
        reason: errorCode,
        completion_tokens: completion,
      });
    },
  }, svc.config.upstreamTimeoutMs);
}

async function embeddings(c: Context<AppEnv>) {
  const raw = await c.req.text();
  const body = parseBody(raw, embeddingsSchema);
  const model = resolveModel(c, body.model, "embedding");
  const adapter = model.adapter;
  if (!adapter.embeddingsRequest || !adapter.embeddingsReply) {
    throw badRequest(`The provider '${model.provider}' has no embeddings API`);
  }
  const m = new MeteredRequest(c, model, false);
  await m.reserve(promptTokenBound(raw), 0);
  const reply = await forward(
    m,
    adapter.embeddingsRequest(model.upstream, { ...body, model: model.model }),
  );
  return c.json(await settleJson(m, reply, adapter.embeddingsReply));
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
  });
  return {
    unit: "USD per million tokens",
    market: table(rate),
    your_rate: table(yours),
    discount_percent: m.discountBps / 100,
  };
}

/** The inference API: chat completions, embeddings, models and the calling key. */
export function inferenceRoutes() {
  const app = new Hono<AppEnv>();

  let cached: { at: number; body: unknown } | null = null;
  app.get("/models", (c) => {
    const svc = c.get("svc");
    if (!cached || svc.now() - cached.at > 60_000) {
      const created = Math.floor(Date.UTC(2024, 0, 1) / 1000);
      cached = {
        at: svc.now(),
        body: {
          object: "list",
          data: svc.providers.list().map((m) => ({
            id: `${m.provider}/${m.model}`,
            object: "model",
            created,
            owned_by: m.provider,
            type: m.type,
            pricing: pricing(m),
          })),
        },
      };
    }
    return c.json(cached.body);
  });

  app.use("/chat/completions", requireKey("inference"));
  app.use("/embeddings", requireKey("inference"));
  app.use("/key", requireKey("inference"));
  app.post("/chat/completions", chatCompletions);
  app.post("/embeddings", embeddings);

  app.get("/key", async (c) => {
    const svc = c.get("svc");
    const key = c.get("key");
    const now = svc.now();
    const s = currentSpend(await getKeySpend(svc.kv, key.account_id, key.id), key.limit_reset, now);
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

/** Audits a refused inference request (after authentication) that has no row yet. */
export async function auditRefusal(c: Context<AppEnv>, status: number, code: string) {
  const key = c.get("key");
  if (!key || c.get("audited") || key.scope !== "inference") return;
  const target = c.get("target") ?? { provider: "", model: "" };
  const streaming = false;
  const event = usageEvent(c, { ...target, status, streaming, errorCode: code });
  c.set("audited", true);
  await c.get("svc").actors.submit(key.account_id, { kind: "record", event });
}

import { type Context, Hono } from "hono";
import { z } from "zod";
import type { AppEnv } from "../../lib/services.ts";
import { auditableKey, presentedSecret, requireKey } from "../../lib/http/auth.ts";
import { ApiError, badRequest, parseJson } from "../../lib/http/errors.ts";
import { MeteredRequest, usageEvent } from "../../lib/proxy/metered.ts";
import { Prompt } from "../../lib/proxy/tokens.ts";
import { forward, resolveModel, settleJson } from "../../lib/proxy/pipeline.ts";
import type { ResolvedModel } from "../../lib/providers/types.ts";
import { divRound, formatUsd } from "../../lib/money.ts";
import { getKeySpend } from "../../lib/auth/keys.ts";
import { periodEnd } from "../../lib/billing/periods.ts";
import { chatCompletions } from "./chat.ts";
import { countTokens, messages } from "./messages.ts";
import { responses } from "./responses.ts";

const embeddingsSchema = z.looseObject({
  model: z.string().min(1, "is required"),
  input: z.union([
    z.string(),
    z.array(z.string()).min(1),
    z.array(z.number().int()).min(1),
    z.array(z.array(z.number().int())).min(1),
  ]),
});

async function embeddings(c: Context<AppEnv>) {
  const raw = await c.req.text();
  const body = parseJson(raw, embeddingsSchema);
  const model = resolveModel(c, body.model, "embedding");
  const adapter = model.adapter;
  if (!adapter.embeddingsRequest || !adapter.embeddingsReply) {
    throw badRequest(`The provider '${model.provider}' has no embeddings API`);
  }
  const m = new MeteredRequest(c, model, false);
  const prompt = new Prompt(raw, body);
  await m.reserve(prompt.bound([model]), 0);
  const reply = await forward(
    m,
    [model],
    (to) => adapter.embeddingsRequest!(to.upstream, { ...body, model: to.model }),
  );
  return c.json(
    await settleJson(m, reply, adapter.embeddingsReply, (count) => prompt.count(model, count)),
  );
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
  const app = new Hono<AppEnv>();

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

  app.use("/chat/completions", requireKey("inference"));
  app.use("/embeddings", requireKey("inference"));
  app.use("/key", requireKey("inference"));
  app.use("/messages", requireKey("inference"));
  app.use("/messages/count_tokens", requireKey("inference"));
  app.use("/responses", requireKey("inference"));
  app.post("/chat/completions", chatCompletions);
  app.post("/messages", messages);
  app.post("/messages/count_tokens", countTokens);
  app.post("/responses", responses);
  app.post("/embeddings", embeddings);

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

/**
 * Audits a refusal at the edge (a URL over its limit, a body declared over MAX_BODY_BYTES) on an
 * inference path. The limits answer before `requireKey` runs, so the presented key is resolved
 * here, and audited under the same rule (`auditableKey`); anything else writes nothing.
 */
export async function auditEdgeRefusal(c: Context<AppEnv>, refusal: ApiError) {
  const secret = presentedSecret(c.req.raw);
  if (!secret) return;
  const svc = c.get("svc");
  const key = auditableKey(await svc.keys.resolve(secret), "inference", svc.now());
  if (!key) return;
  c.set("key", key);
  c.set("accountId", key.account_id);
  await auditRefusal(c, refusal.status, refusal.code);
}

/**
 * Audits an unbilled inference request (after authentication) that has no row yet, at cost 0: a
 * refusal with its error code, or a free call (a token count) with none.
 */
export async function auditRefusal(c: Context<AppEnv>, status: number, code: string | null) {
  const key = c.get("key");
  if (!key || c.get("audited") || key.scope !== "inference") return;
  const target = c.get("target") ?? { provider: "", model: "" };
  const streaming = c.get("streaming") ?? false;
  const event = usageEvent(c, { ...target, status, streaming, errorCode: code });
  c.set("audited", true);
  await c.get("svc").actors.submit(key.account_id, { kind: "record", event });
}

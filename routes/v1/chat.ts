import type { Context } from "hono";
import { z } from "zod";
import type { AppEnv } from "../../lib/services.ts";
import { badRequest, parseJson } from "../../lib/http/errors.ts";
import { MeteredRequest } from "../../lib/proxy/metered.ts";
import { Prompt, type TokenCounter } from "../../lib/proxy/tokens.ts";
import {
  billStream,
  candidatesFor,
  forward,
  logAnomalies,
  missingRates,
  type PricedKinds,
  requirePrices,
  resolveModel,
  settleJson,
  SSE_HEADERS,
  withCost,
} from "../../lib/proxy/pipeline.ts";
import { readOpenAIUsage, UsageReader, withSearches } from "../../lib/providers/usage.ts";
import type { ResolvedModel } from "../../lib/providers/types.ts";
import type { NormalizedUsage } from "../../lib/pricing.ts";
import type { Billed } from "../../lib/proxy/metered.ts";

const tokenLimit = z.number().int().min(1).max(10_000_000);

export const chatSchema = z.looseObject({
  model: z.string().min(1, "is required"),
  messages: z.array(z.looseObject({ role: z.string() })).min(1, "must have at least one message"),
  stream: z.boolean().nullish(),
  stream_options: z.looseObject({ include_usage: z.boolean().optional() }).nullish(),
  max_tokens: tokenLimit.nullish(),
  max_completion_tokens: tokenLimit.nullish(),
  n: z.number().int().min(1).max(128).nullish(),
  /** Fallback models, tried in order when the primary fails (OpenRouter's `models`). */
  models: z.array(z.string().min(1)).max(8).nullish(),
});
type ChatBody = z.output<typeof chatSchema>;

/** As OpenRouter allows, a request naming only `models` is served by the first of them. */
const chatRequest = z.preprocess((v) => {
  const o = v && typeof v === "object" && !Array.isArray(v) ? v as Record<string, unknown> : null;
  if (!o || o.model !== undefined || !Array.isArray(o.models)) return v;
  const [first, ...rest] = o.models;
  return typeof first === "string" ? { ...o, model: first, models: rest } : v;
}, chatSchema);

/** The output limit a request may reach on `model`, and the `max_tokens` to send it, if any. */
function outputLimit(body: ChatBody, model: ResolvedModel) {
  const asked = body.max_completion_tokens ?? body.max_tokens;
  if (asked) return { tokens: asked, send: undefined };
  const d = model.adapter.defaultMaxTokens;
  if (d === undefined) return { tokens: model.maxOutputTokens, send: undefined };
  // A provider that requires max_tokens gets a sensible default, within the model's limit.
  const send = Math.min(d, model.maxOutputTokens);
  return { tokens: send, send };
}

/**
 * The web searches a request to `model` runs: OpenAI's search models (`gpt-4o-search-preview`,
 * `gpt-5-search-api`) search once for every request, billed at the model's per-search fee.
 */
const searchesOn = (model: ResolvedModel) =>
  model.adapter.kind === "openai" && /-search-(preview|api)/.test(model.catalogId) ? 1 : 0;

/** Whether a stream chunk's choice is finished (carries its finish reason). */
const finishesChoice = (choice: unknown) =>
  (choice as { finish_reason?: unknown } | null)?.finish_reason != null;

/** `POST /v1/chat/completions`: OpenAI format to any provider, translated both ways. */
export async function chatCompletions(c: Context<AppEnv>) {
  const raw = await c.req.text();
  const body = parseJson(raw, chatRequest);
  // A refusal from here on is audited as the kind of request it was.
  c.set("streaming", body.stream === true);
  const primary = resolveModel(c, body.model, "chat");
  const n = body.n ?? 1;
  // Anthropic's Messages API answers with one choice: more are refused, not quietly dropped.
  const servesN = (model: ResolvedModel) => n === 1 || model.adapter.kind !== "anthropic";
  if (!servesN(primary)) {
    throw badRequest(`n: the model '${body.model}' answers one choice only; set n to 1`);
  }
  const prompt = new Prompt(raw, body);
  const modalities = Array.isArray(body.modalities) ? body.modalities : [];
  const wants = (model: ResolvedModel): PricedKinds => ({
    audioInput: prompt.media.audio > 0,
    audioOutput: modalities.includes("audio") || body.audio != null,
    webSearch: searchesOn(model) > 0,
  });
  requirePrices(primary, wants(primary));
  const candidates = candidatesFor(
    c,
    primary,
    body.models ?? [],
    (model) => servesN(model) && missingRates(model, wants(model)).length === 0,
  );
  const stream = body.stream === true;
  const m = new MeteredRequest(c, primary, stream);
  const searches = Math.max(...candidates.map(searchesOn));
  await m.reserve(
    prompt.bound(candidates, searches),
    outputLimit(body, primary).tokens * n,
    candidates.slice(1).map((model) => ({
      model,
      outputTokens: outputLimit(body, model).tokens * n,
    })),
    searches,
  );

  const { models: _fallbacks, ...rest } = body;
  const wantsUsage = body.stream_options?.include_usage === true;
  const build = (model: ResolvedModel) => {
    const upstreamBody: Record<string, unknown> = { ...rest, model: model.model };
    const send = outputLimit(body, model).send;
    if (send !== undefined) upstreamBody.max_tokens = send;
    // The router always needs the usage chunk; the client sees it only if it asked for it.
    if (stream) {
      upstreamBody.stream_options = { ...(body.stream_options ?? {}), include_usage: true };
    }
    return model.adapter.chatRequest(model.upstream, upstreamBody);
  };
  const reply = await forward(m, candidates, build);
  const model = m.model;
  const searched = searchesOn(model);
  /** The prompt as the router counts it, with the search the model ran. */
  const counted = (count: TokenCounter) => prompt.count(model, count, searched);
  if (!stream) {
    return c.json(
      await settleJson(m, reply, (json, r) => {
        const parsed = model.adapter.chatReply(json, r);
        return { ...parsed, usage: withSearches(parsed.usage, searched) };
      }, counted),
    );
  }

  const reader = new UsageReader();
  let input: NormalizedUsage | null = null;
  let billed: Billed | null = null;
  /** A chunk carrying the billed usage, as the client gets it: with the cost, or without usage. */
  const withBilled = (chunk: Record<string, unknown>, cost: Billed) => {
    if (wantsUsage) {
      return "data: " + JSON.stringify({ ...chunk, usage: withCost(chunk.usage, cost, "openai") });
    }
    if (Array.isArray(chunk.choices) && chunk.choices.length > 0) {
      const { usage: _drop, ...without } = chunk;
      return "data: " + JSON.stringify(without);
    }
    return null;
  };
  const out = billStream(
    m,
    model.adapter.chatStream(
      reply.res.body!,
      (u) => input = u,
      c.get("svc").config.maxSseEventBytes,
    ),
    async (chunk, _event, settle, interim) => {
      // OpenAI's final usage comes in a chunk of its own, with no choices. Some OpenAI-compatible
      // hosts report usage with the choices instead: a running count on every chunk, or the whole
      // on the last. Such usage is final on the chunk that finishes the only choice; before that
      // it is remembered (in case the stream ends first) and passed on as it came.
      const choices = Array.isArray(chunk.choices) ? chunk.choices : [];
      if (choices.length > 0 && !(n === 1 && choices.every(finishesChoice))) {
        const running = new UsageReader();
        const usage = readOpenAIUsage(chunk.usage, running);
        interim(usage);
        if (wantsUsage) {
          // Shown as sent, unless beyond the hold's bounds or malformed: then clamped.
          const shown = m.shownInterim(chunk.usage, usage, running, "openai");
          if (!shown) return undefined;
          return { interim: "data: " + JSON.stringify({ ...chunk, usage: shown }) };
        }
        const { usage: _drop, ...without } = chunk;
        return { interim: "data: " + JSON.stringify(without) };
      }
      const cost = await settle(withSearches(readOpenAIUsage(chunk.usage, reader), searched));
      billed = cost;
      logAnomalies(m, reader);
      return withBilled(chunk, cost);
    },
    // Anthropic's input usage comes first and Gemini's running usage with every event (the
    // provider's own counts); otherwise the router counts the prompt.
    (count) => withSearches(input ?? counted(count), searched),
    // A usage chunk of its own after the finishing one (vLLM sends both): the same bill.
    {
      afterFinal: (chunk) => withBilled(chunk, billed!),
      // OpenAI (and OpenAI-compatible hosts) report a failure mid-stream as a chunk with `error`,
      // as the translation of another provider's error event does.
      failure: { pattern: /"error"/, is: (chunk) => chunk.error != null },
    },
  );
  return c.body(out, 200, SSE_HEADERS);
}

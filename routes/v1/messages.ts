import type { Context } from "hono";
import { z } from "zod";
import type { AppEnv } from "../../lib/services.ts";
import { parseJson } from "../../lib/http/errors.ts";
import { MeteredRequest } from "../../lib/proxy/metered.ts";
import {
  anthropicSearchBound,
  contextOf,
  Prompt,
  type TokenCounter,
  tokenCounter,
} from "../../lib/proxy/tokens.ts";
import { withData } from "../../lib/proxy/sse.ts";
import { callUpstream, readUpstreamJson } from "../../lib/proxy/upstream.ts";
import {
  billStream,
  candidatesFor,
  forward,
  logAnomalies,
  missingRates,
  requirePrices,
  resolveModel,
  settleJson,
  SSE_HEADERS,
  withCost,
} from "../../lib/proxy/pipeline.ts";
import { readAnthropicUsage, UsageReader, withSearches } from "../../lib/providers/usage.ts";
import type { ResolvedModel } from "../../lib/providers/types.ts";
import type { NormalizedUsage } from "../../lib/pricing.ts";
import { obj } from "../../lib/providers/common.ts";
import {
  chatStreamToMessages,
  chatToMessage,
  messagesToChat,
} from "../../lib/providers/anthropic/messages_api.ts";

export const messagesSchema = z.looseObject({
  model: z.string().min(1, "is required"),
  messages: z.array(z.looseObject({ role: z.string() })).min(1, "must have at least one message"),
  max_tokens: z.number().int().min(1).max(10_000_000),
  stream: z.boolean().nullish(),
});

/** Anthropic models get the request as sent; any other chat model gets it translated. */
const native = (m: ResolvedModel) => m.adapter.kind === "anthropic";

/**
 * `POST /v1/messages`: the Anthropic Messages API. Anthropic models are passed through with the
 * operator's key (`anthropic-version` and `anthropic-beta` forwarded); any other chat model is
 * reached through its chat adapter and answered in the Messages format.
 */
export async function messages(c: Context<AppEnv>) {
  const raw = await c.req.text();
  const body = parseJson(raw, messagesSchema);
  // A refusal from here on is audited as the kind of request it was.
  c.set("streaming", body.stream === true);
  const primary = resolveModel(c, body.model, "chat");
  // Anthropic's web search tool runs only where the request goes as sent (the translation to
  // other providers passes custom tools only): the hold covers its searches there.
  const searches = (model: ResolvedModel) => native(model) ? anthropicSearchBound(body) : 0;
  const wants = (model: ResolvedModel) => ({ webSearch: searches(model) > 0 });
  requirePrices(primary, wants(primary));
  const candidates = candidatesFor(
    c,
    primary,
    [],
    (model) => missingRates(model, wants(model)).length === 0,
  );
  const stream = body.stream === true;
  const m = new MeteredRequest(c, primary, stream);
  const prompt = new Prompt(raw, body);
  const searchBound = searches(primary);
  await m.reserve(
    prompt.bound(candidates, searchBound),
    body.max_tokens,
    candidates.slice(1).map((model) => ({ model, outputTokens: body.max_tokens })),
    searchBound,
  );
  const headers = c.req.raw.headers;
  const reply = await forward(
    m,
    candidates,
    (model) =>
      native(model)
        ? model.adapter.nativeRequest!(
          model.upstream,
          "messages",
          { ...body, model: model.model },
          headers,
        )!
        : model.adapter.chatRequest(model.upstream, messagesToChat(body, model.model)),
  );
  const model = m.model;
  const translated = !native(model);
  if (!stream) {
    return c.json(
      await settleJson(
        m,
        reply,
        (json, r) => {
          if (translated) {
            const { body: chat, usage } = model.adapter.chatReply(json, r);
            return { body: chatToMessage(chat, usage, body.model), usage };
          }
          const out = obj(json);
          return { body: out, usage: readAnthropicUsage(out.usage, r) };
        },
        (count, searched) => prompt.count(model, count, searched),
        "anthropic",
      ),
    );
  }
  let input: NormalizedUsage | null = null;
  const { maxSseEventBytes } = c.get("svc").config;
  const upstream = translated
    ? chatStreamToMessages(
      model.adapter.chatStream(reply.res.body!, (u) => input = u, maxSseEventBytes),
      body.model,
      maxSseEventBytes,
    )
    : reply.res.body!;
  const reader = new UsageReader();
  // message_start carries the input usage, message_delta the final (cumulative) output.
  let started: Record<string, unknown> | null = null;
  // The web searches whose results came before the final usage (message_delta counts them): a
  // stream cut before it still bills them. A search that failed (its result an error) is not billed.
  const searched = new Set<string>();
  const out = billStream(
    m,
    upstream,
    async (data, event, settle) => {
      if (data.type === "message_start") {
        const message = obj(data.message);
        started = { ...obj(message.usage) };
        // The input usage is shown as sent, unless beyond the hold's bounds or malformed.
        const r = new UsageReader();
        const shown = m.shownInterim(message.usage, readAnthropicUsage(started, r), r, "anthropic");
        if (!shown) return undefined;
        return { interim: withData(event, { ...data, message: { ...message, usage: shown } }) };
      }
      if (data.type !== "message_delta") return undefined;
      const usage = obj(data.usage);
      // A translated stream whose upstream reported no usage has no input_tokens: count instead.
      if (translated && usage.input_tokens === undefined) return undefined;
      const cost = await settle(readAnthropicUsage({ ...started, ...usage }, reader));
      logAnomalies(m, reader);
      return withData(event, { ...data, usage: withCost(data.usage, cost, "anthropic") });
    },
    // message_start's input usage is Anthropic's own count (before any search result), the
    // results of the searches run since at most a context window each; otherwise the router
    // counts the prompt.
    (count: TokenCounter) => {
      // message_start's output_tokens (1) counts nothing yet: the output is counted instead.
      const provided = started && !translated
        ? { ...readAnthropicUsage(started, new UsageReader()), completion: 0 }
        : input;
      const usage = provided
        ? { ...provided, prompt: provided.prompt + searched.size * contextOf(model) }
        : prompt.count(model, count, searched.size);
      return withSearches(usage, searched.size);
    },
    {
      format: "anthropic",
      // Anthropic reports a failure mid-stream (overloaded_error) as `event: error`, as the
      // translation of another provider's error does.
      failure: {
        pattern: /"error"/,
        is: (data, name) => name === "error" || data.type === "error",
      },
      observe: {
        pattern: /"web_search_tool_result"/,
        see(data) {
          const block = obj(data.content_block);
          if (data.type !== "content_block_start" || block.type !== "web_search_tool_result") {
            return;
          }
          if (Array.isArray(block.content)) searched.add(String(block.tool_use_id ?? data.index));
        },
      },
    },
  );
  return c.body(out, 200, SSE_HEADERS);
}

export const countSchema = messagesSchema.omit({ max_tokens: true, stream: true });

/**
 * `POST /v1/messages/count_tokens`: free, so neither held nor billed. Anthropic models ask the
 * provider; other models get the router's estimate.
 */
export async function countTokens(c: Context<AppEnv>) {
  const raw = await c.req.text();
  const body = parseJson(raw, countSchema);
  const model = resolveModel(c, body.model, "chat");
  if (!native(model)) {
    const usage = new Prompt(raw, body).count(model, await tokenCounter(model));
    return c.json({ input_tokens: usage.prompt });
  }
  const svc = c.get("svc");
  const call = model.adapter.nativeRequest!(
    model.upstream,
    "count_tokens",
    { ...body, model: model.model },
    c.req.raw.headers,
  )!;
  const reply = await callUpstream(svc.fetch, call, svc.config.upstreamTimeoutMs);
  const json = obj(
    await readUpstreamJson(reply, svc.config.upstreamTimeoutMs, svc.config.maxUpstreamBodyBytes),
  );
  return c.json({ input_tokens: new UsageReader().count(json.input_tokens, "input_tokens") });
}

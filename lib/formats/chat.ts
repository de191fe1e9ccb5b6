/**
 * OpenAI chat completions (`POST /v1/chat/completions`), to any provider: adapters translate the
 * request and the reply (JSON or stream) both ways.
 */
import { z } from "zod";
import type { NormalizedUsage } from "../pricing.ts";
import type { ResolvedModel } from "../providers/types.ts";
import { readOpenAIUsage, UsageReader, withSearches } from "../providers/usage.ts";
import type { Billed, ModelBound } from "../proxy/metered.ts";
import { Prompt } from "../proxy/tokens.ts";
import type { StreamEnding } from "../proxy/tap.ts";
import {
  type BilledStream,
  type Format,
  type InferenceRequest,
  isObject,
  shownUsage,
  type StreamOptions,
  type StreamReducer,
  withCost,
} from "./format.ts";

const tokenLimit = z.number().int().min(1).max(10_000_000);

/** The body of a chat completion request, as the router reads it (other fields pass through). */
export const chatBody = z.looseObject({
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
export type ChatBody = z.output<typeof chatBody>;

/** As OpenRouter allows, a request naming only `models` is served by the first of them. */
const chatRequest = z.preprocess((v) => {
  const o = v && typeof v === "object" && !Array.isArray(v) ? v as Record<string, unknown> : null;
  if (!o || o.model !== undefined || !Array.isArray(o.models)) return v;
  const [first, ...rest] = o.models;
  return typeof first === "string" ? { ...o, model: first, models: rest } : v;
}, chatBody);

/** The output limit a request may reach on `model`, and the `max_tokens` to send it, if any. */
function outputLimit(body: ChatBody, model: ResolvedModel) {
  // Both go upstream as sent, and a host may honour either: the larger bounds the output.
  const asked = Math.max(body.max_completion_tokens ?? 0, body.max_tokens ?? 0);
  if (asked) return { tokens: asked, send: undefined };
  const d = model.adapter.defaultMaxTokens;
  if (d === undefined) return { tokens: model.maxOutputTokens, send: undefined };
  // A provider that requires max_tokens gets a sensible default, within the model's limit.
  const send = Math.min(d, model.maxOutputTokens);
  return { tokens: send, send };
}

/** The web searches a request to `model` runs: one for a model that searches on every request. */
const searchesOn = (model: ResolvedModel) =>
  model.adapter.searchingModels?.test(model.catalogId) ? 1 : 0;

/** The chat completions API. */
export const chat: Format<ChatBody> = {
  schema: chatRequest,
  type: "chat",
  fallsBack: true,
  request(raw, body): InferenceRequest {
    const n = body.n ?? 1;
    const stream = body.stream === true;
    const prompt = new Prompt(raw, body);
    const modalities = Array.isArray(body.modalities) ? body.modalities : [];
    const wantsUsage = body.stream_options?.include_usage === true;
    const { models: _fallbacks, ...rest } = body;
    return {
      model: body.model,
      fallbacks: body.models ?? [],
      stream,
      prompt,
      shape: "openai",
      unfit(model) {
        // More choices than the provider answers are refused, not quietly dropped.
        const max = model.adapter.maxChoices ?? Infinity;
        if (n <= max) return null;
        return max === 1
          ? `n: the model '${body.model}' answers one choice only; set n to 1`
          : `n: the model '${body.model}' answers at most ${max} choices; set n to ${max} or less`;
      },
      wants: (model) => ({
        audioInput: prompt.media.audio > 0,
        audioOutput: modalities.includes("audio") || body.audio != null,
        webSearch: searchesOn(model) > 0,
      }),
      hold: (candidates) => ({
        prompt: prompt.bound(candidates, Math.max(...candidates.map(searchesOn))),
        models: candidates.map((model): ModelBound => ({
          model,
          outputTokens: outputLimit(body, model).tokens * n,
          searches: searchesOn(model),
        })),
      }),
      call(model) {
        const upstream: Record<string, unknown> = { ...rest, model: model.model };
        const send = outputLimit(body, model).send;
        if (send !== undefined) upstream.max_tokens = send;
        // The router always needs the usage chunk; the client sees it only if it asked for it.
        if (stream) {
          upstream.stream_options = { ...(body.stream_options ?? {}), include_usage: true };
        }
        return model.adapter.chatRequest(model.upstream, upstream);
      },
      reply(model, json, r) {
        const parsed = model.adapter.chatReply(json, r);
        return { ...parsed, usage: withSearches(parsed.usage, searchesOn(model)) };
      },
      events(model, body, opts) {
        // Anthropic's input usage comes first and Gemini's running usage with every event (the
        // provider's own counts): a stream cut before its end is billed by them.
        let provided: NormalizedUsage | null = null;
        const searches = searchesOn(model);
        // What a translating adapter clamped of its provider's usage (a pass-through, nothing).
        const translation = new UsageReader();
        return {
          body: model.adapter.chatStream(
            body,
            (u) => provided = u,
            opts.maxEventBytes,
            translation,
          ),
          ending: CHAT_ENDING,
          watch: CHAT_WATCH,
          reducer: chatReducer({ n, wantsUsage, searches, bounded: opts.bounded, translation }),
          unfinished: (_state, count) =>
            withSearches(provided ?? prompt.count(model, count, searches), searches),
        } satisfies BilledStream<ChatState>;
      },
    };
  },
};

/** An OpenAI chat stream ends with `[DONE]`; a failure is a chunk with `error` (SDKs throw). */
export const CHAT_ENDING: StreamEnding = {
  closing: { event: "data: [DONE]\n\n", sent: /^data: ?\[DONE\]/m },
  error: (error) => `data: ${JSON.stringify({ error })}\n\n`,
};

/** Chunks carrying usage, and failures (OpenAI's error chunk, a translator's). */
const CHAT_WATCH = /"usage"\s*:\s*\{|"error"/;

/** Whether the final usage has come. */
export interface ChatState {
  final: boolean;
}

/** What the chat reducer needs of the request. */
export interface ChatStreamRules {
  /** The choices asked for. */
  n: number;
  /** Whether the client asked for the usage chunk (`stream_options.include_usage`). */
  wantsUsage: boolean;
  /** The web searches the answering model runs (billed with the usage). */
  searches: number;
  bounded: StreamOptions["bounded"];
  /** The reader the adapter's translation read the final usage with (its clamps are reported). */
  translation?: UsageReader;
}

/** Whether a stream chunk's choice is finished (carries its finish reason). */
const finishesChoice = (choice: unknown) =>
  (choice as { finish_reason?: unknown } | null)?.finish_reason != null;

const dataEvent = (chunk: unknown) => "data: " + JSON.stringify(chunk);

/**
 * The chat stream's reducer. OpenAI's final usage comes in a chunk of its own, with no choices.
 * Some OpenAI-compatible hosts report usage with the choices instead: a running count on every
 * chunk, or the whole on the last. Such usage is final on the chunk that finishes the only
 * choice; before that it is kept (in case the stream ends first) and passed on as it came (clamped
 * where beyond the hold), or without it when the client did not ask for usage. A usage chunk
 * after the final one (vLLM sends both) shows the same bill.
 */
export function chatReducer(rules: ChatStreamRules): StreamReducer<ChatState> {
  /** A chunk showing the charge as the client gets it: with the cost, or without usage. */
  const billedChunk = (chunk: Record<string, unknown>) => (billed: Billed) => {
    if (rules.wantsUsage) {
      return dataEvent({ ...chunk, usage: withCost(chunk.usage, billed, "openai") });
    }
    if (Array.isArray(chunk.choices) && chunk.choices.length > 0) {
      const { usage: _drop, ...without } = chunk;
      return dataEvent(without);
    }
    return null;
  };
  return {
    init: { final: false },
    step(state, { data }) {
      if (!isObject(data.usage)) {
        return { state, failed: !state.final && data.error != null };
      }
      if (state.final) return { state, out: billedChunk(data) };
      const choices = Array.isArray(data.choices) ? data.choices : [];
      if (choices.length > 0 && !(rules.n === 1 && choices.every(finishesChoice))) {
        const running = new UsageReader();
        const usage = readOpenAIUsage(data.usage, running);
        const failed = data.error != null;
        if (!rules.wantsUsage) {
          const { usage: _drop, ...without } = data;
          return { state, usage, failed, out: dataEvent(without) };
        }
        const shown = shownUsage(data.usage, usage, running, rules.bounded, "openai");
        return {
          state,
          usage,
          failed,
          out: shown ? dataEvent({ ...data, usage: shown }) : undefined,
        };
      }
      const reader = new UsageReader();
      return {
        state: { final: true },
        final: true,
        // A final usage that comes with an error (a host reporting both at once) is a failure.
        failed: data.error != null,
        usage: withSearches(readOpenAIUsage(data.usage, reader), rules.searches),
        anomalies: [...(rules.translation?.anomalies ?? []), ...reader.anomalies],
        out: billedChunk(data),
      };
    },
  };
}

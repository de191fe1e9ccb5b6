/**
 * The Anthropic Messages API (`POST /v1/messages`). A provider that speaks it natively gets the
 * request as sent, with the operator's key (`anthropic-version` and `anthropic-beta` forwarded);
 * any other chat model is reached through its chat adapter and answered in the Messages format.
 */
import { z } from "zod";
import type { NormalizedUsage } from "../pricing.ts";
import type { ResolvedModel } from "../providers/types.ts";
import { readAnthropicUsage, UsageReader, withSearches } from "../providers/usage.ts";
import { obj } from "../providers/common.ts";
import {
  chatStreamToMessages,
  chatToMessage,
  messagesToChat,
} from "../providers/anthropic/messages_api.ts";
import { withData } from "../sse.ts";
import type { Billed, ModelBound } from "../proxy/metered.ts";
import { anthropicSearchBound, contextOf, Prompt } from "../proxy/tokens.ts";
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
  withSearch,
} from "./format.ts";

/** The body of a Messages request, as the router reads it (other fields pass through). */
export const messagesBody = z.looseObject({
  model: z.string().min(1, "is required"),
  messages: z.array(z.looseObject({ role: z.string() })).min(1, "must have at least one message"),
  max_tokens: z.number().int().min(1).max(10_000_000),
  stream: z.boolean().nullish(),
});
export type MessagesBody = z.output<typeof messagesBody>;

/** The body of a token count (`POST /v1/messages/count_tokens`): a Messages request's prompt. */
export const countTokensBody = messagesBody.omit({ max_tokens: true, stream: true });

/** The Messages API. */
export const messages: Format<MessagesBody> = {
  schema: messagesBody,
  type: "chat",
  fallsBack: true,
  request(raw, body): InferenceRequest {
    const prompt = new Prompt(raw, body);
    // Anthropic's web search tool runs only where the request goes as sent (the translation to
    // other providers passes custom tools only): the hold covers its searches there.
    const searches = (model: ResolvedModel) =>
      model.adapter.native?.messages ? anthropicSearchBound(body) : 0;
    return {
      model: body.model,
      fallbacks: [],
      stream: body.stream === true,
      prompt,
      shape: "anthropic",
      unfit: () => null,
      wants: (model) => ({ webSearch: searches(model) > 0 }),
      hold: (candidates) => ({
        // Each search's results are prompt, whichever candidate runs them.
        prompt: prompt.bound(candidates, Math.max(...candidates.map(searches))),
        models: candidates.map((model): ModelBound => ({
          model,
          outputTokens: body.max_tokens,
          searches: searches(model),
        })),
      }),
      call(model, headers) {
        const native = model.adapter.native?.messages;
        if (native) return native(model.upstream, { ...body, model: model.model }, headers);
        return model.adapter.chatRequest(model.upstream, messagesToChat(body, model.model));
      },
      reply(model, json, r) {
        if (!model.adapter.native?.messages) {
          const { body: chat, usage } = model.adapter.chatReply(json, r);
          return { body: chatToMessage(chat, usage, body.model), usage };
        }
        const out = obj(json);
        return { body: out, usage: readAnthropicUsage(out.usage, r) };
      },
      events(model, upstream, opts) {
        const translated = !model.adapter.native?.messages;
        // A translated stream: the chat adapter's early input usage (Anthropic's, Gemini's), and
        // what it clamped of its final usage.
        let provided: NormalizedUsage | null = null;
        const translation = new UsageReader();
        return {
          body: translated
            ? chatStreamToMessages(
              model.adapter.chatStream(
                upstream,
                (u) => provided = u,
                opts.maxEventBytes,
                translation,
              ),
              body.model,
              opts.maxEventBytes,
            )
            : upstream,
          ending: MESSAGES_ENDING,
          watch: MESSAGES_WATCH,
          reducer: messagesReducer({
            translated,
            searches: searches(model),
            bounded: opts.bounded,
            translation,
          }),
          unfinished(state, count) {
            // message_start's input usage is Anthropic's own count (before any search result),
            // the results of the searches run since at most a context window each; otherwise the
            // router counts the prompt. Its output_tokens (1) counts nothing yet: the output is
            // counted instead.
            const searched = state.searched.length;
            const own = state.started && !translated
              ? { ...readAnthropicUsage(state.started, new UsageReader()), completion: 0 }
              : provided;
            const usage = own
              ? { ...own, prompt: own.prompt + searched * contextOf(model) }
              : prompt.count(model, count, searched);
            return withSearches(usage, searched);
          },
        } satisfies BilledStream<MessagesState>;
      },
    };
  },
};

/**
 * Anthropic's SDK reads named events: a stream ends with `message_stop`, a failure is
 * `event: error`.
 */
export const MESSAGES_ENDING: StreamEnding = {
  closing: {
    event: `event: message_stop\ndata: ${JSON.stringify({ type: "message_stop" })}\n\n`,
    sent: /"message_stop"/,
  },
  error: (error) => `event: error\ndata: ${JSON.stringify({ type: "error", error })}\n\n`,
};

/** Events carrying usage, failures, and web search results. */
const MESSAGES_WATCH = /"usage"\s*:\s*\{|"error"|"web_search_tool_result"/;

export interface MessagesState {
  /** message_start's usage (the input), once it came. */
  started: Record<string, unknown> | null;
  /**
   * The web searches whose results came (by tool use id): message_delta counts them, and a stream
   * cut before it still bills them. A search that failed (its result an error) is not billed.
   */
  searched: readonly string[];
  final: boolean;
}

/** What the Messages reducer needs of the request. */
export interface MessagesStreamRules {
  /** Whether the stream is a chat stream translated (the model does not speak Messages). */
  translated: boolean;
  /** The web searches the hold covers (`anthropicSearchBound`, on a native model). */
  searches: number;
  bounded: StreamOptions["bounded"];
  /** The reader a translation read the final usage with (its clamps are reported). */
  translation?: UsageReader;
}

/**
 * The Messages stream's reducer: message_start carries the input usage (shown as sent, unless
 * beyond the hold's bounds or malformed), message_delta the final, cumulative usage (with the
 * input's fields message_start gave). A translated stream whose upstream reported no usage has no
 * `input_tokens` in its message_delta: it is not final, and the router counts instead. Anthropic
 * reports a failure mid-stream (overloaded_error) as `event: error`, as a translation does. A
 * message_delta repeated after the final one shows the same bill.
 */
export function messagesReducer(rules: MessagesStreamRules): StreamReducer<MessagesState> {
  return {
    init: { started: null, searched: [], final: false },
    step(state, { data, name, text }) {
      const usage = data.type === "message_delta" && isObject(data.usage) ? data.usage : null;
      /** The event showing the charge: the final usage's, and any repeating it after. */
      const billedEvent = (billed: Billed) =>
        withData(text, { ...data, usage: withCost(usage, billed, "anthropic") });
      if (state.final) return usage ? { state, out: billedEvent } : { state };
      if (name === "error" || data.type === "error") return { state, failed: true };
      if (data.type === "message_start") {
        const message = obj(data.message);
        const started = { ...obj(message.usage) };
        const r = new UsageReader();
        const shown = shownUsage(
          message.usage,
          readAnthropicUsage(started, r),
          r,
          rules.bounded,
          "anthropic",
        );
        const out = shown
          ? withData(text, { ...data, message: { ...message, usage: shown } })
          : undefined;
        return { state: { ...state, started }, out };
      }
      if (usage) {
        if (rules.translated && usage.input_tokens === undefined) return { state };
        const reader = new UsageReader();
        return {
          state: { ...state, final: true },
          final: true,
          usage: readAnthropicUsage({ ...state.started, ...usage }, reader),
          anomalies: [...(rules.translation?.anomalies ?? []), ...reader.anomalies],
          out: billedEvent,
        };
      }
      const block = obj(data.content_block);
      if (
        data.type === "content_block_start" && block.type === "web_search_tool_result" &&
        Array.isArray(block.content)
      ) {
        const searched = withSearch(
          state.searched,
          String(block.tool_use_id ?? data.index),
          rules.searches,
        );
        if (searched) return { state: { ...state, searched } };
      }
      return { state };
    },
  };
}

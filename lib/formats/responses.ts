/**
 * The OpenAI Responses API (`POST /v1/responses`), passed through with the operator's key to a
 * provider that speaks it natively.
 */
import { z } from "zod";
import {
  readResponsesUsage,
  responsesWebSearches,
  UsageReader,
  withSearches,
} from "../providers/usage.ts";
import { obj } from "../providers/common.ts";
import { withData } from "../sse.ts";
import type { Billed, ModelBound } from "../proxy/metered.ts";
import { Prompt, responsesSearchBound, responsesToolBound } from "../proxy/tokens.ts";
import type { StreamEnding } from "../proxy/tap.ts";
import {
  type BilledStream,
  type Format,
  type InferenceRequest,
  isObject,
  type StreamReducer,
  withCost,
  withSearch,
} from "./format.ts";

/** The body of a Responses request, as the router reads it (other fields pass through). */
export const responsesBody = z.looseObject({
  model: z.string().min(1, "is required"),
  input: z.union([z.string(), z.array(z.unknown())]).optional(),
  max_output_tokens: z.number().int().min(1).max(10_000_000).nullish(),
  stream: z.boolean().nullish(),
  // A background response is finished (and charged) by the provider after the reply: the router
  // could neither bill it nor bound it, so it is refused rather than served unbilled.
  background: z.literal(false, "background responses are not served; omit it or set it to false")
    .nullish(),
});
export type ResponsesBody = z.output<typeof responsesBody>;

/** A response's usage: its tokens, and each web_search_call output item as one search. */
const usageOf = (response: Record<string, unknown>, r: UsageReader) =>
  withSearches(readResponsesUsage(response.usage, r), responsesWebSearches(response.output, r));

/** The Responses API. */
export const responses: Format<ResponsesBody> = {
  schema: responsesBody,
  type: "chat",
  fallsBack: true,
  request(raw, body): InferenceRequest {
    // A continued conversation's earlier turns (or a stored prompt) are stored upstream, not in
    // this body: the prompt may then fill the model's context window.
    const stored = Boolean(body.previous_response_id || body.conversation || body.prompt);
    const prompt = new Prompt(raw, body, stored);
    const searches = responsesSearchBound(body);
    return {
      model: body.model,
      fallbacks: [],
      stream: body.stream === true,
      prompt,
      shape: "responses",
      unfit: (model) =>
        model.adapter.native?.responses
          ? null
          : `The model '${body.model}' is not served by the Responses API; use /v1/chat/completions`,
      wants: () => ({ audioInput: prompt.media.audio > 0, webSearch: searches > 0 }),
      hold: (candidates) => ({
        prompt: prompt.bound(candidates, responsesToolBound(body)),
        models: candidates.map((model): ModelBound => ({
          model,
          outputTokens: body.max_output_tokens ?? model.maxOutputTokens,
          searches,
        })),
      }),
      call(model, headers) {
        // Only models whose adapter speaks Responses are candidates (`unfit`).
        const native = model.adapter.native!.responses!;
        return native(model.upstream, { ...body, model: model.model }, headers);
      },
      reply(_model, json, r) {
        const out = obj(json);
        return { body: out, usage: usageOf(out, r) };
      },
      events: (model, upstream) => ({
        body: upstream,
        ending: RESPONSES_ENDING,
        watch: RESPONSES_WATCH,
        reducer: responsesReducer(searches),
        unfinished: (state, count) =>
          withSearches(prompt.count(model, count, state.searched.length), state.searched.length),
      } satisfies BilledStream<ResponsesState>),
    };
  },
};

/**
 * A Responses stream ends with its final `response.*` event itself (no closing event to add); a
 * failure is an event with `error`, as OpenAI's SDK reads it.
 */
export const RESPONSES_ENDING: StreamEnding = {
  closing: null,
  error: (error) => `data: ${JSON.stringify({ error })}\n\n`,
};

/** Events carrying usage, failures (an `error` event, response.failed), web searches done. */
const RESPONSES_WATCH = /"usage"\s*:\s*\{|"(?:error|response\.failed)"|"web_search_call"/;

export interface ResponsesState {
  /** The web_search_call items done so far: a stream cut before its final usage bills them. */
  searched: readonly string[];
  final: boolean;
}

/**
 * The Responses stream's reducer: response.completed (or .incomplete, .failed) carries the final
 * usage in `response`, whose output lists every item, its web_search_call items included. A
 * failure mid-stream is an `error` event or response.failed (billed as final if it has usage,
 * audited as a failed stream). A final event repeated after the first shows the same bill.
 */
export const responsesReducer = (
  /** The web searches the hold covers (`responsesSearchBound`). */
  searches: number,
): StreamReducer<ResponsesState> => ({
  init: { searched: [], final: false },
  step(state, { data, text }) {
    const response = obj(data.response);
    /** The event showing the charge: the final usage's, and any repeating it after. */
    const billedEvent = (billed: Billed) =>
      withData(text, {
        ...data,
        response: { ...response, usage: withCost(response.usage, billed, "responses") },
      });
    if (state.final) return isObject(response.usage) ? { state, out: billedEvent } : { state };
    const failed = data.type === "error" || data.type === "response.failed";
    if (isObject(response.usage)) {
      const reader = new UsageReader();
      return {
        state: { ...state, final: true },
        final: true,
        failed,
        usage: usageOf(response, reader),
        anomalies: reader.anomalies,
        out: billedEvent,
      };
    }
    const item = obj(data.item);
    if (data.type === "response.output_item.done" && item.type === "web_search_call") {
      const searched = withSearch(state.searched, String(item.id ?? data.output_index), searches);
      if (searched) return { state: { ...state, searched }, failed };
    }
    return { state, failed };
  },
});

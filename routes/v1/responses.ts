import type { Context } from "hono";
import { z } from "zod";
import type { AppEnv } from "../../lib/services.ts";
import { badRequest, parseJson } from "../../lib/http/errors.ts";
import { MeteredRequest } from "../../lib/proxy/metered.ts";
import { estimateTokens, promptTokenBound, responsesSearchBound } from "../../lib/proxy/tokens.ts";
import { withData } from "../../lib/proxy/sse.ts";
import {
  billStream,
  candidatesFor,
  forward,
  logAnomalies,
  resolveModel,
  settleJson,
  SSE_HEADERS,
  withCost,
} from "../../lib/proxy/pipeline.ts";
import {
  readResponsesUsage,
  responsesWebSearches,
  UsageReader,
  withSearches,
} from "../../lib/providers/usage.ts";
import type { ResolvedModel } from "../../lib/providers/types.ts";
import { ZERO_USAGE } from "../../lib/pricing.ts";
import { obj } from "../../lib/providers/common.ts";

const responsesSchema = z.looseObject({
  model: z.string().min(1, "is required"),
  input: z.union([z.string(), z.array(z.unknown())]).optional(),
  max_output_tokens: z.number().int().min(1).max(10_000_000).nullish(),
  stream: z.boolean().nullish(),
});

/** The prompt allowance of a continued conversation when the model's context window is unknown. */
const STORED_CONTEXT_BOUND = 128_000;

const speaksResponses = (m: ResolvedModel) => m.adapter.kind === "openai";

/** `POST /v1/responses`: the OpenAI Responses API, passed through with the operator's key. */
export async function responses(c: Context<AppEnv>) {
  const raw = await c.req.text();
  const body = parseJson(raw, responsesSchema);
  // A refusal from here on is audited as the kind of request it was.
  c.set("streaming", body.stream === true);
  const primary = resolveModel(c, body.model, "chat");
  if (!speaksResponses(primary)) {
    throw badRequest(
      `The model '${body.model}' is not served by the Responses API; use /v1/chat/completions`,
    );
  }
  const candidates = candidatesFor(c, primary, [], speaksResponses);
  const stream = body.stream === true;
  const m = new MeteredRequest(c, primary, stream);
  const limit = (model: ResolvedModel) => body.max_output_tokens ?? model.maxOutputTokens;
  // A continued conversation's earlier turns are stored upstream, not in this body: the prompt
  // may then fill the model's context window.
  const stored = body.previous_response_id || body.conversation
    ? primary.contextWindow ?? STORED_CONTEXT_BOUND
    : 0;
  await m.reserve(
    promptTokenBound(raw) + stored,
    limit(primary),
    candidates.slice(1).map((model) => ({ model, outputTokens: limit(model) })),
    responsesSearchBound(body),
  );
  const headers = c.req.raw.headers;
  const reply = await forward(
    m,
    candidates,
    (model) =>
      model.adapter.nativeRequest!(
        model.upstream,
        "responses",
        { ...body, model: model.model },
        headers,
      )!,
  );
  /** A response's usage: its tokens, and each web_search_call output item as one search. */
  const usageOf = (response: Record<string, unknown>, r: UsageReader) =>
    withSearches(readResponsesUsage(response.usage, r), responsesWebSearches(response.output, r));
  /** The prompt as the router counts it, for a reply or stream that comes without usage. */
  const promptEstimate = () =>
    estimateTokens(JSON.stringify(body.input ?? "") + String(body.instructions ?? ""));
  if (!stream) {
    return c.json(
      await settleJson(m, reply, (json, r) => {
        const out = obj(json);
        return { body: out, usage: usageOf(out, r) };
      }, promptEstimate),
    );
  }
  const reader = new UsageReader();
  // The web_search_call items done so far: a stream cut before its final usage still bills them.
  const searched = new Set<string>();
  const out = billStream(
    m,
    reply.res.body!,
    async (data, event, settle) => {
      // response.completed (or .incomplete / .failed) carries the final usage in `response`.
      const response = obj(data.response);
      if (!response.usage || typeof response.usage !== "object") return undefined;
      // The final response lists every output item, its web_search_call items included.
      const cost = await settle(
        usageOf(response, reader),
        data.type === "response.failed" ? "upstream_stream_failed" : undefined,
      );
      logAnomalies(m, reader);
      return withData(event, {
        ...data,
        response: { ...response, usage: withCost(response.usage, cost) },
      });
    },
    () => withSearches({ ...ZERO_USAGE, prompt: promptEstimate() }, searched.size),
    {
      format: "responses",
      // A failure mid-stream: an `error` event, or response.failed (billed as above if it has usage).
      failure: {
        pattern: /"(?:error|response\.failed)"/,
        is: (data) => data.type === "error" || data.type === "response.failed",
      },
      observe: {
        pattern: /"web_search_call"/,
        see(data) {
          const item = obj(data.item);
          if (data.type !== "response.output_item.done" || item.type !== "web_search_call") return;
          searched.add(String(item.id ?? data.output_index));
        },
      },
    },
  );
  return c.body(out, 200, SSE_HEADERS);
}

import type { Context } from "hono";
import { z } from "zod";
import type { AppEnv } from "../../lib/services.ts";
import { badRequest, parseJson } from "../../lib/http/errors.ts";
import { MeteredRequest } from "../../lib/proxy/metered.ts";
import { Prompt, responsesSearchBound, responsesToolBound } from "../../lib/proxy/tokens.ts";
import { withData } from "../../lib/proxy/sse.ts";
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
import {
  readResponsesUsage,
  responsesWebSearches,
  UsageReader,
  withSearches,
} from "../../lib/providers/usage.ts";
import type { ResolvedModel } from "../../lib/providers/types.ts";
import { obj } from "../../lib/providers/common.ts";

export const responsesSchema = z.looseObject({
  model: z.string().min(1, "is required"),
  input: z.union([z.string(), z.array(z.unknown())]).optional(),
  max_output_tokens: z.number().int().min(1).max(10_000_000).nullish(),
  stream: z.boolean().nullish(),
  // A background response is finished (and charged) by the provider after the reply: the router
  // could neither bill it nor bound it, so it is refused rather than served unbilled.
  background: z.literal(false, "background responses are not served; omit it or set it to false")
    .nullish(),
});

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
  // A continued conversation's earlier turns (or a stored prompt) are stored upstream, not in
  // this body: the prompt may then fill the model's context window.
  const prompt = new Prompt(
    raw,
    body,
    Boolean(body.previous_response_id || body.conversation || body.prompt),
  );
  const searches = responsesSearchBound(body);
  const wants = { audioInput: prompt.media.audio > 0, webSearch: searches > 0 };
  requirePrices(primary, wants);
  const candidates = candidatesFor(
    c,
    primary,
    [],
    (model) => speaksResponses(model) && missingRates(model, wants).length === 0,
  );
  const stream = body.stream === true;
  const m = new MeteredRequest(c, primary, stream);
  const limit = (model: ResolvedModel) => body.max_output_tokens ?? model.maxOutputTokens;
  await m.reserve(
    prompt.bound(candidates, responsesToolBound(body)),
    limit(primary),
    candidates.slice(1).map((model) => ({ model, outputTokens: limit(model) })),
    searches,
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
  if (!stream) {
    return c.json(
      await settleJson(
        m,
        reply,
        (json, r) => {
          const out = obj(json);
          return { body: out, usage: usageOf(out, r) };
        },
        (count, searched) => prompt.count(m.model, count, searched),
        "responses",
      ),
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
        response: { ...response, usage: withCost(response.usage, cost, "responses") },
      });
    },
    (count) => withSearches(prompt.count(m.model, count, searched.size), searched.size),
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

/** OpenAI embeddings (`POST /v1/embeddings`): the model named only, never streamed. */
import { z } from "zod";
import type { ModelBound } from "../proxy/metered.ts";
import { Prompt } from "../proxy/tokens.ts";
import type { Format, InferenceRequest } from "./format.ts";

/** The body of an embeddings request, as the router reads it (other fields pass through). */
export const embeddingsBody = z.looseObject({
  model: z.string().min(1, "is required"),
  input: z.union([
    z.string(),
    z.array(z.string()).min(1),
    z.array(z.number().int()).min(1),
    z.array(z.array(z.number().int())).min(1),
  ]),
});
export type EmbeddingsBody = z.output<typeof embeddingsBody>;

/** The embeddings API. */
export const embeddings: Format<EmbeddingsBody> = {
  schema: embeddingsBody,
  type: "embedding",
  fallsBack: false,
  request(raw, body): InferenceRequest {
    const prompt = new Prompt(raw, body);
    return {
      model: body.model,
      fallbacks: [],
      stream: false,
      prompt,
      shape: "openai",
      unfit: (model) =>
        model.adapter.embeddingsRequest && model.adapter.embeddingsReply
          ? null
          : `The provider '${model.provider}' has no embeddings API`,
      wants: () => ({}),
      // No output: the input is all there is to bill.
      hold: (candidates) => ({
        prompt: prompt.bound(candidates),
        models: candidates.map((model): ModelBound => ({ model, outputTokens: 0, searches: 0 })),
      }),
      // Only models whose adapter has an embeddings API are candidates (`unfit`).
      call: (model) =>
        model.adapter.embeddingsRequest!(model.upstream, { ...body, model: model.model }),
      reply: (model, json, r) => model.adapter.embeddingsReply!(json, r),
    };
  },
};

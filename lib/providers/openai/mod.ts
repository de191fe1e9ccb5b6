import type { ProviderAdapter, Upstream } from "../types.ts";
import { readOpenAIUsage, type UsageReader } from "../usage.ts";
import { openaiCounting } from "./counting.ts";

const post = (up: Upstream, path: string, body: Record<string, unknown>) => ({
  url: `${up.baseUrl}${path}`,
  init: {
    method: "POST",
    headers: {
      "authorization": `Bearer ${up.apiKey}`,
      "content-type": "application/json",
      "accept": body.stream ? "text/event-stream" : "application/json",
    },
    body: JSON.stringify(body),
  },
});

const reply = (json: unknown, r: UsageReader) => {
  const body = (json && typeof json === "object" ? json : {}) as Record<string, unknown>;
  return { body, usage: readOpenAIUsage(body.usage, r) };
};

/** OpenAI and every OpenAI-compatible host: requests and replies pass through unchanged. */
export const openai: ProviderAdapter = {
  counting: openaiCounting,
  chatRequest: (up, body) => post(up, "/chat/completions", body),
  chatReply: reply,
  chatStream: (body) => body,
  embeddingsRequest: (up, body) => post(up, "/embeddings", body),
  embeddingsReply: reply,
  native: { responses: (up, body) => post(up, "/responses", body) },
  // gpt-4o-search-preview, gpt-5-search-api: every request searches once.
  searchingModels: /-search-(preview|api)/,
};

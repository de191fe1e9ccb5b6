import type { NormalizedUsage, PriceTable } from "../pricing.ts";
import type { UsageReader } from "./usage.ts";

/** Where and how to reach one provider. */
export interface Upstream {
  baseUrl: string;
  apiKey: string;
}

/** What a provider adapter turns an OpenAI-format request into. */
export interface UpstreamCall {
  url: string;
  init: RequestInit;
}

/**
 * Everything one provider needs. The proxy pipeline speaks OpenAI's chat format; an adapter
 * translates the request to its provider's wire format and the reply (JSON or SSE) back, so the
 * pipeline never names a provider.
 */
export interface ProviderAdapter {
  /** The wire format this adapter speaks. */
  kind: "openai";
  /** Builds the upstream request. `body` is the client's OpenAI-format body with the upstream
   * model name; for streams the router has already asked for usage. */
  chatRequest(up: Upstream, body: Record<string, unknown>): UpstreamCall;
  /** An upstream JSON reply → an OpenAI chat completion and its usage. */
  chatReply(
    json: unknown,
    r: UsageReader,
  ): { body: Record<string, unknown>; usage: NormalizedUsage };
  /** The upstream SSE body → an OpenAI-format chat completion SSE body. */
  chatStream(body: ReadableStream<Uint8Array>): ReadableStream<Uint8Array>;
  embeddingsRequest?(up: Upstream, body: Record<string, unknown>): UpstreamCall;
  embeddingsReply?(json: unknown, r: UsageReader): {
    body: Record<string, unknown>;
    usage: NormalizedUsage;
  };
}

/** A model a request may name, with everything needed to forward and price it. */
export interface ResolvedModel {
  /** The router's provider name (`openai`). */
  provider: string;
  /** The model name sent upstream (as the client named it, without the provider prefix). */
  model: string;
  /** The catalog's canonical id the price came from. */
  catalogId: string;
  type: "chat" | "embedding";
  prices: PriceTable;
  discountBps: number;
  maxOutputTokens: number;
  adapter: ProviderAdapter;
  upstream: Upstream;
}

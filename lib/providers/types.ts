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
  /** How the router counts a prompt for this provider's models when it counts one itself. */
  counting: PromptCounting;
  /**
   * The `max_tokens` sent when the client set none, for providers that require one (capped by
   * the model's output limit). Providers that need none leave it unset.
   */
  defaultMaxTokens?: number;
  /**
   * The catalog models this API serves, when the catalog's provider lists more (Google's lists
   * the Claude models of Vertex AI, which the Gemini API does not serve).
   */
  catalogFilter?: RegExp;
  /** Builds the upstream request. `body` is the client's OpenAI-format body with the upstream
   * model name; for streams the router has already asked for usage. */
  chatRequest(up: Upstream, body: Record<string, unknown>): UpstreamCall;
  /** An upstream JSON reply → an OpenAI chat completion and its usage. */
  chatReply(
    json: unknown,
    r: UsageReader,
  ): { body: Record<string, unknown>; usage: NormalizedUsage };
  /**
   * The upstream SSE body → an OpenAI-format chat completion SSE body. A translated stream ends
   * with an OpenAI usage chunk (`choices: []`) whenever the upstream reported usage. A provider
   * that reports its input usage early (Anthropic's `message_start`) or a running count (Gemini's
   * every event) passes it to `onInput`, the latest replacing the one before, so a stream cut
   * before its end is billed by the provider's own counts (its output too, when it is not zero). A provider's error event mid-stream
   * becomes an OpenAI error chunk and the stream then ends as usual (the billing finds that chunk
   * and audits the stream `upstream_stream_failed`). An upstream event over `maxEventBytes`
   * fails the stream; an upstream that breaks after its final usage ends it as if complete. The
   * final usage is read with `reader` (when given), which keeps what it had to clamp: the usage
   * chunk it becomes is clean.
   */
  chatStream(
    body: ReadableStream<Uint8Array>,
    onInput?: (usage: NormalizedUsage) => void,
    maxEventBytes?: number,
    reader?: UsageReader,
  ): ReadableStream<Uint8Array>;
  /**
   * The inbound APIs this provider speaks natively, each passed through as the client sent it
   * (Anthropic `/v1/messages` and its `count_tokens`, OpenAI `/v1/responses`): the call made of
   * the body with the upstream model name and the client's headers that the provider needs (the
   * operator's key replaces the client's). An API not listed is not the provider's own.
   */
  native?: { readonly [api in NativeApi]?: NativeCall };
  /** The most choices (`n`) one chat request may ask of it; unset, as many as the client asks. */
  maxChoices?: number;
  /**
   * The catalog models that run one server-side web search for every request (OpenAI's search
   * models), billed at the model's per-search fee.
   */
  searchingModels?: RegExp;
  embeddingsRequest?(up: Upstream, body: Record<string, unknown>): UpstreamCall;
  embeddingsReply?(json: unknown, r: UsageReader): {
    body: Record<string, unknown>;
    usage: NormalizedUsage;
  };
}

/** An image's size in pixels. */
export interface ImageSize {
  width: number;
  height: number;
}

/**
 * A provider's counting rules, for a prompt the router counts itself (a reply whose usage never
 * came, a stream cut before its usage) and for a hold's prompt bound. Each count is never below
 * the provider's own.
 *
 * @example
 * ```ts
 * const rules = adapter.counting;
 * const perImage = rules.worstImageTokens("gpt-4o");           // the hold's allowance
 * const tokens = rules.imageTokens("gpt-4o", { width: 512, height: 512 }, "high");
 * ```
 */
export interface PromptCounting {
  /**
   * The public tokenizer that counts `catalogId`'s prompts exactly (OpenAI's encodings); none
   * when the provider's tokenizer is not public: the prompt is then counted at its UTF-8 bytes
   * (every token of a byte-level tokenizer is at least one byte).
   */
  encoding?(catalogId: string): "o200k_base" | "cl100k_base" | undefined;
  /** The tokens an image of `size` (null: unreadable, or given by URL or file id) costs. */
  imageTokens(catalogId: string, size: ImageSize | null, detail?: string): number;
  /** The most tokens one image may cost on `catalogId`: the hold's allowance per image. */
  worstImageTokens(catalogId: string): number;
  /**
   * The tokens the provider adds to a prompt that declares tools, beyond their definitions: a
   * system prompt once, and a definition and prompt per built-in (server or client) tool.
   */
  toolPrompt?: { system: number; perBuiltin: number };
}

/** An inbound API a provider may speak natively (see `ProviderAdapter.native`). */
export type NativeApi = "messages" | "count_tokens" | "responses";

/** Builds the upstream call of a native API (see `ProviderAdapter.native`). */
export type NativeCall = (
  up: Upstream,
  body: Record<string, unknown>,
  headers: Headers,
) => UpstreamCall;

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
  /** The model's context window in tokens, when the catalog knows it. */
  contextWindow?: number;
  adapter: ProviderAdapter;
  upstream: Upstream;
}

import { eventData, SseSplitter } from "../sse.ts";
import { arr, obj } from "../providers/common.ts";
import { encodingCounter, type TokenCounter, utf8Bytes } from "../tokenizer.ts";
import { type ImageModel, type ImageRef, imageTokens, worstImageTokens } from "./images.ts";
import { type NormalizedUsage, ZERO_USAGE } from "../pricing.ts";

export type { TokenCounter } from "../tokenizer.ts";

/** The model a prompt or a reply is counted for (a `ResolvedModel` has all of it). */
export interface CountModel extends ImageModel {
  /** The model's context window in tokens, when the catalog knows it. */
  contextWindow?: number;
}

/**
 * The prompt allowance of content a request refers to but does not carry (a stored conversation
 * or prompt, a file, web search results) when the model's context window is unknown.
 */
export const UNSEEN_CONTEXT_BOUND = 128_000;

/**
 * The counter whose counts are never below the provider's: the provider's public tokenizer for
 * the model (OpenAI's), else the UTF-8 length (every token of a byte-level tokenizer is at least
 * one byte) for a provider whose tokenizer is not public (Anthropic, Gemini, other hosts).
 */
export async function tokenCounter(model: CountModel): Promise<TokenCounter> {
  const name = model.adapter.counting.encoding?.(model.catalogId);
  return name ? await encodingCounter(name) : utf8Bytes;
}

/** Part types whose payload is not prompt text. */
const MEDIA_TYPES = new Set([
  "image_url",
  "input_image",
  "image",
  "input_audio",
  "file",
  "input_file",
  "document",
]);
const MEDIA_MARK = /"(?:image_url|input_image|image|input_audio|file|input_file|document)"/;

/** What a prompt holds besides text. */
export interface PromptMedia {
  images: ImageRef[];
  /** Audio parts: their tokens come from their duration, which the router does not measure. */
  audio: number;
  /** Files (PDFs: each page is text and an image), by data, URL or id: not counted either. */
  files: number;
}

/** The prompt's text as JSON with every media payload left out, and the media found. */
function separate(body: unknown): { json: string; media: PromptMedia } {
  const media: PromptMedia = { images: [], audio: 0, files: 0 };
  const json = JSON.stringify(body, (_key, v) => {
    if (!v || typeof v !== "object" || Array.isArray(v)) return v;
    const type = (v as Record<string, unknown>).type;
    if (typeof type !== "string" || !MEDIA_TYPES.has(type)) return v;
    const part = v as Record<string, unknown>;
    switch (type) {
      case "image_url": {
        const iu = part.image_url;
        const url = typeof iu === "string" ? iu : String(obj(iu).url ?? "");
        // A data URL of another kind (Gemini takes audio and video this way) is not an image.
        if (/^data:(audio|video)\//.test(url)) media.audio++;
        else media.images.push({ url, detail: stringOr(obj(iu).detail) });
        break;
      }
      case "input_image":
        media.images.push({ url: stringOr(part.image_url) ?? "", detail: stringOr(part.detail) });
        break;
      case "image": {
        const source = obj(part.source);
        media.images.push(
          source.type === "base64"
            ? { url: "", data: String(source.data ?? "") }
            : { url: stringOr(source.url) ?? "" },
        );
        break;
      }
      case "input_audio":
        media.audio++;
        break;
      default:
        media.files++;
    }
    return { type };
  });
  return { json: json ?? "", media };
}

const stringOr = (v: unknown) => typeof v === "string" ? v : undefined;

/**
 * A request's prompt, as the hold bounds it and as the router counts it when usage is missing.
 * Both go by the same parts, so the hold always covers the count: the text by the body's UTF-8
 * bytes (a token of a byte-level tokenizer is at least one byte) and the tokenizer's count below
 * it; each image by its model's worst case and its count by the provider's rules below that;
 * content the body does not carry by the model's context window.
 */
export class Prompt {
  readonly bytes: number;
  #separated?: { json: string; media: PromptMedia };
  #media?: PromptMedia;

  constructor(
    readonly raw: string,
    readonly body: Record<string, unknown>,
    /** Whether the request uses content stored at the provider (a conversation, a prompt). */
    readonly stored = false,
  ) {
    this.bytes = utf8Bytes(raw);
  }

  #parts() {
    return this.#separated ??= separate(this.body);
  }

  /** The media of the prompt; none is looked for in a body that names no media part type. */
  get media(): PromptMedia {
    return this.#media ??= MEDIA_MARK.test(this.raw)
      ? this.#parts().media
      : { images: [], audio: 0, files: 0 };
  }

  /**
   * An upper bound on the prompt tokens of the request on any of `models`, for the hold: the
   * body's bytes, each image's worst case, and the context window once for content the body does
   * not carry (files, stored content) and once per web search (its results are input, read again
   * by each step after it).
   */
  bound(models: readonly CountModel[], searches = 0): number {
    const { images, files } = this.media;
    let perImage = 0;
    let context = 0;
    let tools = 0;
    for (const m of models) {
      perImage = Math.max(perImage, worstImageTokens(m));
      context = Math.max(context, contextOf(m));
      tools = Math.max(tools, this.#toolPrompt(m));
    }
    const unseen = this.stored || files > 0 ? 1 : 0;
    return this.bytes + tools + images.length * perImage + (unseen + searches) * context;
  }

  /** The tokens `m`'s provider adds to a prompt with tools, beyond their definitions. */
  #toolPrompt(m: CountModel): number {
    const rule = m.adapter.counting.toolPrompt;
    if (!rule) return 0;
    const tools = arr(this.body.tools).map(obj);
    if (tools.length === 0) return 0;
    const builtin =
      tools.filter((t) =>
        typeof t.type === "string" && t.type !== "custom" && t.type !== "function"
      ).length;
    return rule.system + builtin * rule.perBuiltin;
  }

  /**
   * The prompt's usage on `model` as the router counts it, never below the provider's count and
   * never above `bound`: the text by `count` (`tokenCounter`), images by their rules, `searches`
   * (web searches run) and content the body does not carry at a context window each. Audio is
   * not measured: a prompt with audio is counted at its bytes, all at the audio rate.
   */
  count(model: CountModel, count: TokenCounter, searches = 0): NormalizedUsage {
    const { json, media } = this.#parts();
    let tokens = media.audio > 0 ? this.bytes : Math.min(this.bytes, count(json));
    for (const image of media.images) tokens += imageTokens(model, image);
    const unseen = this.stored || media.files > 0 ? 1 : 0;
    tokens += this.#toolPrompt(model) + (unseen + searches) * contextOf(model);
    return { ...ZERO_USAGE, prompt: tokens, ...(media.audio > 0 ? { audioIn: tokens } : {}) };
  }
}

/** The most prompt tokens one step of `m` reads: its context window, or the default bound. */
export const contextOf = (m: CountModel) => m.contextWindow ?? UNSEEN_CONTEXT_BOUND;

/**
 * The web searches held for a request that allows the provider's web search tool without a
 * limit of its own (Anthropic's `max_uses`, OpenAI's `max_tool_calls`). Not a limit: a request
 * that searches more is billed the searches held (a charge never exceeds its hold).
 */
export const DEFAULT_WEB_SEARCH_BOUND = 20;

/** A request's own search limit, if it is a count; otherwise none. */
const limitOf = (v: unknown) =>
  typeof v === "number" && Number.isInteger(v) && v >= 0 ? v : undefined;

/**
 * The most web searches an Anthropic Messages request may run, for the hold: each web search
 * tool (`web_search_20250305` and later versions) allows its `max_uses`, or the default bound.
 */
export function anthropicSearchBound(body: Record<string, unknown>): number {
  let n = 0;
  for (const t of arr(body.tools).map(obj)) {
    if (typeof t.type !== "string" || !t.type.startsWith("web_search")) continue;
    n += limitOf(t.max_uses) ?? DEFAULT_WEB_SEARCH_BOUND;
  }
  return n;
}

/**
 * The most web searches an OpenAI Responses request may run, for the hold: none without a web
 * search tool (`web_search`, `web_search_preview` and their dated versions), unless a stored
 * prompt (`prompt`), whose tools the body does not show, is used; `max_tool_calls` (all built-in
 * tool calls of the response) when set, the default bound otherwise.
 */
export function responsesSearchBound(body: Record<string, unknown>): number {
  const searching = body.prompt ||
    arr(body.tools).map(obj).some((t) =>
      typeof t.type === "string" && t.type.startsWith("web_search")
    );
  if (!searching) return 0;
  return limitOf(body.max_tool_calls) ?? DEFAULT_WEB_SEARCH_BOUND;
}

/**
 * The most steps of an OpenAI Responses request that read tool output the body does not carry,
 * for the hold's prompt bound: with a built-in tool (web or file search, code interpreter, …) or a
 * stored prompt (whose tools the body does not show), `max_tool_calls` or the default bound.
 */
export function responsesToolBound(body: Record<string, unknown>): number {
  const builtin = body.prompt ||
    arr(body.tools).map(obj).some((t) => t.type !== "function" && t.type !== "custom");
  return builtin ? limitOf(body.max_tool_calls) ?? DEFAULT_WEB_SEARCH_BOUND : 0;
}

/**
 * The text of a message, content part or tool call, parts joined by a space: a tool call's name and
 * arguments sit under `function`, an assistant message's calls under `tool_calls`.
 */
function textOf(v: unknown): string {
  if (typeof v === "string") return v;
  if (Array.isArray(v)) return v.map(textOf).filter(Boolean).join(" ");
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    return [o.text, o.content, o.arguments, o.name, o.function, o.tool_calls].map(textOf)
      .filter(Boolean).join(" ");
  }
  return "";
}

/**
 * Counts the output a stream produced so far, for a stream that ended without its final usage:
 * OpenAI chat deltas (content, reasoning, tool-call arguments), Anthropic `content_block_delta`
 * (text, thinking, tool input) and OpenAI Responses `*.delta` events. Each delta is counted on its
 * own (at least one token each, as a provider streams them), with `count` (`tokenCounter`; by
 * default the UTF-8 length, an upper bound for any tokenizer).
 */
export function countStreamedOutput(sse: string, count: TokenCounter = utf8Bytes): number {
  // Whole events the tap already held to MAX_SSE_EVENT_BYTES, which may be above the default.
  const splitter = new SseSplitter(Infinity);
  let tokens = 0;
  const add = (text: string) => {
    if (text) tokens += Math.max(1, count(text));
  };
  for (const event of splitter.push(sse + "\n\n")) {
    const data = eventData(event) as {
      choices?: { delta?: Record<string, unknown> }[];
      delta?: unknown;
    } | null;
    if (data && data.delta !== undefined) {
      const d = data.delta as Record<string, unknown> | string;
      add(
        typeof d === "string" ? d : textOf(d?.text) + textOf(d?.thinking) + textOf(d?.partial_json),
      );
    }
    for (const choice of Array.isArray(data?.choices) ? data.choices : []) {
      const d = choice.delta ?? {};
      add(textOf(d.content) + textOf(d.reasoning_content ?? d.reasoning) + textOf(d.tool_calls));
    }
  }
  return tokens;
}

/** Keys whose string values are a reply's output text (chat, Messages and Responses shapes). */
const OUTPUT_KEYS = new Set([
  "content",
  "text",
  "reasoning_content",
  "reasoning",
  "thinking",
  "arguments",
  "refusal",
]);

/**
 * Counts the output of a JSON reply that came without usage: the text of chat `choices`,
 * Messages `content` blocks (tool input included) or Responses `output` items, with `count` (as
 * in `countStreamedOutput`).
 */
export function countReplyOutput(
  body: Record<string, unknown>,
  count: TokenCounter = utf8Bytes,
): number {
  let tokens = 0;
  const walk = (v: unknown, key: string): void => {
    if (typeof v === "string") {
      if (OUTPUT_KEYS.has(key)) tokens += count(v);
    } else if (Array.isArray(v)) {
      for (const x of v) walk(x, key);
    } else if (v && typeof v === "object") {
      if (key === "input") tokens += count(JSON.stringify(v));
      else for (const [k, x] of Object.entries(v)) walk(x, k);
    }
  };
  walk(body.choices ?? body.content ?? body.output, "");
  return tokens;
}

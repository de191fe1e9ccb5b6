import { eventData, SseSplitter } from "./sse.ts";
import { arr, obj } from "../providers/common.ts";

/** Tokens an image may add to a prompt beyond its bytes in the request (a URL is short). */
const IMAGE_ALLOWANCE = 2000;
const encoder = new TextEncoder();
// deno-lint-ignore no-control-regex
const NON_ASCII = /[^\x00-\x7f]/;

/**
 * An upper bound on a request's prompt tokens, for the worst-case hold: a text token is at least
 * one byte, so the body's UTF-8 length bounds the text; each image adds a fixed allowance.
 */
export function promptTokenBound(rawBody: string): number {
  // An ASCII body's length is its byte count: only other bodies are encoded to be measured.
  const bytes = NON_ASCII.test(rawBody) ? encoder.encode(rawBody).length : rawBody.length;
  const images = rawBody.match(/"(image_url|input_image|image)"/g)?.length ?? 0;
  return bytes + images * IMAGE_ALLOWANCE;
}

/**
 * The web searches held for a request that allows the provider's web search tool without a
 * limit of its own (Anthropic's `max_uses`, OpenAI's `max_tool_calls`). Not a limit: a request
 * that searches more is billed every search, up to the balance left (the charge is capped there).
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

/** A token estimate for text the router counts itself (about four characters a token). */
export const estimateTokens = (text: string) => Math.ceil(text.length / 4);

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

/** Estimated prompt tokens of an OpenAI chat body (messages and tools), for when usage is lost. */
export function estimatePromptTokens(body: Record<string, unknown>): number {
  const messages = Array.isArray(body.messages) ? body.messages : [];
  let tokens = 3;
  for (const m of messages) tokens += 4 + estimateTokens(textOf(m));
  if (body.tools) tokens += estimateTokens(JSON.stringify(body.tools));
  return tokens;
}

/**
 * Counts the output a stream produced so far, for a stream that ended without its final usage:
 * OpenAI chat deltas (content, reasoning, tool-call arguments), Anthropic `content_block_delta`
 * (text, thinking, tool input) and OpenAI Responses `*.delta` events.
 */
export function countStreamedOutput(sse: string): number {
  const splitter = new SseSplitter();
  let chars = 0;
  let deltas = 0;
  for (const event of splitter.push(sse + "\n\n")) {
    const data = eventData(event) as {
      choices?: { delta?: Record<string, unknown> }[];
      delta?: unknown;
    } | null;
    if (data && data.delta !== undefined) {
      const d = data.delta as Record<string, unknown> | string;
      const text = typeof d === "string"
        ? d
        : textOf(d?.text) + textOf(d?.thinking) + textOf(d?.partial_json);
      if (text) {
        chars += text.length;
        deltas++;
      }
    }
    for (const choice of Array.isArray(data?.choices) ? data.choices : []) {
      const d = choice.delta ?? {};
      const text = textOf(d.content) + textOf(d.reasoning_content ?? d.reasoning) +
        textOf(d.tool_calls);
      if (text) {
        chars += text.length;
        deltas++;
      }
    }
  }
  return Math.max(deltas, Math.ceil(chars / 4));
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
 * Messages `content` blocks (tool input included) or Responses `output` items.
 */
export function countReplyOutput(body: Record<string, unknown>): number {
  let chars = 0;
  const walk = (v: unknown, key: string): void => {
    if (typeof v === "string") {
      if (OUTPUT_KEYS.has(key)) chars += v.length;
    } else if (Array.isArray(v)) {
      for (const x of v) walk(x, key);
    } else if (v && typeof v === "object") {
      if (key === "input") chars += JSON.stringify(v).length;
      else for (const [k, x] of Object.entries(v)) walk(x, k);
    }
  };
  walk(body.choices ?? body.content ?? body.output, "");
  return Math.ceil(chars / 4);
}

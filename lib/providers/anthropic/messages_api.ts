/**
 * The Anthropic Messages API served by any chat provider: a Messages request becomes an OpenAI
 * chat request (which each adapter already speaks), and the OpenAI reply or stream becomes a
 * Messages reply or event stream. Lets the Anthropic SDK reach every provider.
 */
import type { NormalizedUsage } from "../../pricing.ts";
import { arr, obj, parseArgs } from "../common.ts";
import { readOpenAIUsage, UsageReader } from "../usage.ts";
import { translateSse } from "../../sse.ts";

type Json = Record<string, unknown>;

/** The text of a Messages `system` or block content (a string or text blocks). */
function blocksText(v: unknown): string {
  if (typeof v === "string") return v;
  return arr(v).map((b) => {
    const block = obj(b);
    return block.type === "text" && typeof block.text === "string" ? block.text : "";
  }).join("");
}

function imagePart(block: Json): Json | null {
  const src = obj(block.source);
  if (src.type === "base64") {
    return { type: "image_url", image_url: { url: `data:${src.media_type};base64,${src.data}` } };
  }
  if (src.type === "url" && typeof src.url === "string") {
    return { type: "image_url", image_url: { url: src.url } };
  }
  return null;
}

/** A Messages request body → an OpenAI chat request body for `model`. */
export function messagesToChat(body: Json, model: string): Json {
  const out: Json[] = [];
  const system = blocksText(body.system);
  if (system) out.push({ role: "system", content: system });
  for (const raw of arr(body.messages)) {
    const m = obj(raw);
    if (typeof m.content === "string") {
      out.push({ role: m.role, content: m.content });
      continue;
    }
    const parts: Json[] = [];
    const toolCalls: Json[] = [];
    for (const b of arr(m.content)) {
      const block = obj(b);
      if (block.type === "text" && typeof block.text === "string") {
        parts.push({ type: "text", text: block.text });
      } else if (block.type === "image") {
        const p = imagePart(block);
        if (p) parts.push(p);
      } else if (block.type === "tool_use") {
        toolCalls.push({
          id: block.id,
          type: "function",
          function: { name: block.name, arguments: JSON.stringify(block.input ?? {}) },
        });
      } else if (block.type === "tool_result") {
        // Tool results are OpenAI messages of their own, before the turn's other content.
        out.push({
          role: "tool",
          tool_call_id: block.tool_use_id,
          content: blocksText(block.content),
        });
      }
    }
    if (m.role === "assistant") {
      const text = parts.map((p) => p.text ?? "").join("");
      if (text || toolCalls.length) {
        out.push({
          role: "assistant",
          content: text || null,
          ...(toolCalls.length ? { tool_calls: toolCalls } : {}),
        });
      }
    } else if (parts.length) {
      out.push({ role: "user", content: parts });
    }
  }
  const chat: Json = { model, messages: out, max_tokens: body.max_tokens };
  if (typeof body.temperature === "number") chat.temperature = body.temperature;
  if (typeof body.top_p === "number") chat.top_p = body.top_p;
  const stop = arr(body.stop_sequences).filter((s) => typeof s === "string");
  if (stop.length) chat.stop = stop;
  const tools = arr(body.tools).map(obj).filter((t) => typeof t.name === "string" && !t.type);
  if (tools.length) {
    chat.tools = tools.map((t) => ({
      type: "function",
      function: {
        name: t.name,
        ...(typeof t.description === "string" ? { description: t.description } : {}),
        parameters: t.input_schema ?? { type: "object", properties: {} },
      },
    }));
  }
  const tc = obj(body.tool_choice);
  if (tc.type === "auto") chat.tool_choice = "auto";
  else if (tc.type === "any") chat.tool_choice = "required";
  else if (tc.type === "none") chat.tool_choice = "none";
  else if (tc.type === "tool") chat.tool_choice = { type: "function", function: { name: tc.name } };
  if (tc.disable_parallel_tool_use === true && tools.length) chat.parallel_tool_calls = false;
  const user = obj(body.metadata).user_id;
  if (typeof user === "string") chat.user = user;
  if (body.stream === true) {
    chat.stream = true;
    chat.stream_options = { include_usage: true };
  }
  return chat;
}

/** Normalized usage in Anthropic's shape (`input_tokens` excludes cache reads and writes). */
export function anthropicUsageOf(u: NormalizedUsage): Json {
  return {
    input_tokens: Math.max(0, u.prompt - u.cached - u.cacheWrite),
    cache_read_input_tokens: u.cached,
    cache_creation_input_tokens: u.cacheWrite,
    cache_creation: {
      ephemeral_5m_input_tokens: u.cacheWrite - u.cacheWrite1h,
      ephemeral_1h_input_tokens: u.cacheWrite1h,
    },
    output_tokens: u.completion,
  };
}

const STOP: Record<string, string> = {
  stop: "end_turn",
  length: "max_tokens",
  tool_calls: "tool_use",
  function_call: "tool_use",
  content_filter: "refusal",
};
const stopReason = (f: unknown) => STOP[String(f)] ?? "end_turn";

/** An OpenAI chat completion (as an adapter returns it) → a Messages reply. */
export function chatToMessage(chat: Json, usage: NormalizedUsage, model: string): Json {
  const choice = obj(arr(chat.choices)[0]);
  const msg = obj(choice.message);
  const content: Json[] = [];
  if (typeof msg.reasoning_content === "string" && msg.reasoning_content) {
    content.push({ type: "thinking", thinking: msg.reasoning_content, signature: "" });
  }
  if (typeof msg.content === "string" && msg.content) {
    content.push({ type: "text", text: msg.content });
  }
  for (const tc of arr(msg.tool_calls)) {
    const t = obj(tc);
    const f = obj(t.function);
    content.push({ type: "tool_use", id: t.id, name: f.name, input: parseArgs(f.arguments) });
  }
  return {
    id: `msg_${String(chat.id ?? crypto.randomUUID()).replace(/^msg_/, "")}`,
    type: "message",
    role: "assistant",
    model,
    content,
    stop_reason: stopReason(choice.finish_reason),
    stop_sequence: null,
    usage: anthropicUsageOf(usage),
  };
}

/**
 * An OpenAI chat SSE stream → a Messages event stream: message_start, one content block per
 * text, thinking or tool call, then message_delta (with the full usage, `input_tokens`
 * included, when the upstream reported it) and message_stop, as soon as the final usage came.
 */
export function chatStreamToMessages(
  src: ReadableStream<Uint8Array>,
  model: string,
  maxEventBytes?: number,
): ReadableStream<Uint8Array> {
  let started = false;
  let block: { kind: "text" | "thinking" | "tool"; index: number; tool?: number } | null = null;
  let next = 0;
  let finish: unknown = null;
  let usage: unknown = null;
  const open = (
    out: Json[],
    kind: "text" | "thinking" | "tool",
    contentBlock: Json,
    tool?: number,
  ) => {
    if (block) out.push({ type: "content_block_stop", index: block.index });
    block = { kind, index: next++, tool };
    out.push({ type: "content_block_start", index: block.index, content_block: contentBlock });
  };
  const start = (out: Json[], id: unknown) => {
    if (started) return;
    started = true;
    out.push({
      type: "message_start",
      message: {
        id: `msg_${String(id ?? crypto.randomUUID()).replace(/^msg_/, "")}`,
        type: "message",
        role: "assistant",
        model,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: { input_tokens: 0, output_tokens: 0 },
      },
    });
  };
  /** Whether the closing events went out (with the final usage, or at the upstream's end). */
  let ended = false;
  const end = (): Json[] => {
    ended = true;
    const out: Json[] = [];
    start(out, null);
    if (block) out.push({ type: "content_block_stop", index: (block as { index: number }).index });
    const u = usage ? anthropicUsageOf(readOpenAIUsage(usage, new UsageReader())) : null;
    out.push({
      type: "message_delta",
      delta: { stop_reason: stopReason(finish), stop_sequence: null },
      // Without the upstream's usage there is no `input_tokens`: the router counts instead.
      usage: u ?? { output_tokens: 0 },
    });
    out.push({ type: "message_stop" });
    return out;
  };
  return translateSse(src, (data) => {
    const out: Json[] = [];
    if (ended) return out;
    if (data.error) {
      return [{
        type: "error",
        error: { type: "api_error", message: "The provider's stream failed" },
      }];
    }
    start(out, data.id);
    const hasUsage = data.usage !== null && typeof data.usage === "object";
    if (hasUsage) usage = data.usage;
    const choice = obj(arr(data.choices)[0]);
    const d = obj(choice.delta);
    if (typeof d.reasoning_content === "string" && d.reasoning_content) {
      if (block?.kind !== "thinking") open(out, "thinking", { type: "thinking", thinking: "" });
      out.push({
        type: "content_block_delta",
        index: block!.index,
        delta: { type: "thinking_delta", thinking: d.reasoning_content },
      });
    }
    if (typeof d.content === "string" && d.content) {
      if (block?.kind !== "text") open(out, "text", { type: "text", text: "" });
      out.push({
        type: "content_block_delta",
        index: block!.index,
        delta: { type: "text_delta", text: d.content },
      });
    }
    for (const raw of arr(d.tool_calls)) {
      const tc = obj(raw);
      const f = obj(tc.function);
      const tool = typeof tc.index === "number" ? tc.index : 0;
      if (block?.kind !== "tool" || block.tool !== tool) {
        open(out, "tool", { type: "tool_use", id: tc.id, name: f.name, input: {} }, tool);
      }
      if (typeof f.arguments === "string" && f.arguments) {
        out.push({
          type: "content_block_delta",
          index: block!.index,
          delta: { type: "input_json_delta", partial_json: f.arguments },
        });
      }
    }
    if (choice.finish_reason) finish = choice.finish_reason;
    // The usage that comes with the finishing chunk or after it (OpenAI's usage chunk; a running
    // usage riding on the finishing chunk) is final: the message ends (and is billed) at once, so
    // that a stall before the upstream's end ends it cleanly. A running usage seen before the
    // finish waits for the usage chunk that may follow, or for the upstream's end.
    if (finish !== null && hasUsage) out.push(...end());
    return out;
  }, () => {
    return ended ? [] : end();
  }, {
    format: "anthropic",
    maxEventBytes,
    final: () => ended,
  });
}

import type { ProviderAdapter, Upstream, UpstreamCall } from "../types.ts";
import type { NormalizedUsage } from "../../pricing.ts";
import { openAIUsageOf, readAnthropicUsage, UsageReader } from "../usage.ts";
import {
  arr,
  completionHead,
  contentText,
  functionTools,
  imageUrlOf,
  obj,
  parseArgs,
  parseDataUrl,
  stopList,
} from "../common.ts";
import { STREAM_FAILURE, translateSse } from "../../sse.ts";
import { anthropicCounting } from "./counting.ts";

/** The API version sent when the client named none (Anthropic requires one). */
export const ANTHROPIC_VERSION = "2023-06-01";

type Block = Record<string, unknown>;

function userBlocks(content: unknown): Block[] {
  if (typeof content === "string") return content ? [{ type: "text", text: content }] : [];
  const blocks: Block[] = [];
  for (const p of arr(content)) {
    const part = obj(p);
    if (part.type === "text" && typeof part.text === "string" && part.text) {
      blocks.push({ type: "text", text: part.text });
    } else if (part.type === "image_url") {
      const url = imageUrlOf(part);
      const inline = parseDataUrl(url);
      blocks.push({
        type: "image",
        source: inline
          ? { type: "base64", media_type: inline.mediaType, data: inline.data }
          : { type: "url", url },
      });
    }
  }
  return blocks;
}

/** OpenAI chat messages → Anthropic `system` and alternating user/assistant messages. */
function toMessages(messages: unknown[]) {
  const system: string[] = [];
  const out: { role: "user" | "assistant"; content: Block[] }[] = [];
  const push = (role: "user" | "assistant", blocks: Block[]) => {
    if (blocks.length === 0) return;
    const last = out.at(-1);
    // Anthropic needs alternating roles: consecutive turns of one role become one message.
    if (last?.role === role) last.content.push(...blocks);
    else out.push({ role, content: blocks });
  };
  for (const raw of messages) {
    const m = obj(raw);
    switch (m.role) {
      case "system":
      case "developer": {
        const text = contentText(m.content);
        if (text) system.push(text);
        break;
      }
      case "user":
        push("user", userBlocks(m.content));
        break;
      case "assistant": {
        const blocks: Block[] = [];
        const text = contentText(m.content);
        if (text) blocks.push({ type: "text", text });
        for (const tc of arr(m.tool_calls)) {
          const t = obj(tc);
          const f = obj(t.function);
          blocks.push({ type: "tool_use", id: t.id, name: f.name, input: parseArgs(f.arguments) });
        }
        push("assistant", blocks);
        break;
      }
      case "tool":
        push("user", [{
          type: "tool_result",
          tool_use_id: m.tool_call_id,
          content: contentText(m.content),
        }]);
        break;
    }
  }
  return { system: system.join("\n\n"), messages: out };
}

function toolChoice(choice: unknown, parallel: unknown): Block | undefined {
  let tc: Block | undefined;
  if (choice === "auto") tc = { type: "auto" };
  else if (choice === "required") tc = { type: "any" };
  else if (choice === "none") tc = { type: "none" };
  else if (choice && typeof choice === "object") {
    const name = obj(obj(choice).function).name;
    if (typeof name === "string") tc = { type: "tool", name };
  }
  // Anthropic's `none` choice has no disable_parallel_tool_use (no tool is called at all).
  if (parallel === false && tc?.type !== "none") {
    tc = { ...(tc ?? { type: "auto" }), disable_parallel_tool_use: true };
  }
  return tc;
}

/** An OpenAI chat body → an Anthropic Messages body. */
export function toAnthropicBody(body: Record<string, unknown>): Record<string, unknown> {
  const { system, messages } = toMessages(arr(body.messages));
  const out: Record<string, unknown> = {
    model: body.model,
    max_tokens: body.max_completion_tokens ?? body.max_tokens,
    messages,
  };
  if (system) out.system = system;
  // OpenAI's temperature runs to 2, Anthropic's to 1.
  if (typeof body.temperature === "number") out.temperature = Math.min(1, body.temperature);
  // Recent Claude models refuse temperature and top_p together: temperature wins.
  if (typeof body.top_p === "number" && out.temperature === undefined) out.top_p = body.top_p;
  const stop = stopList(body.stop);
  if (stop) out.stop_sequences = stop;
  if (body.stream === true) out.stream = true;
  const tools = functionTools(body.tools);
  if (tools.length) {
    out.tools = tools.map((t) => ({
      name: t.name,
      ...(t.description ? { description: t.description } : {}),
      input_schema: t.parameters ?? { type: "object", properties: {} },
    }));
  }
  const tc = toolChoice(body.tool_choice, body.parallel_tool_calls);
  if (tc && (tools.length || tc.type === "none")) out.tool_choice = tc;
  // Structured outputs: OpenAI's json_schema is Anthropic's output_config.format.
  const rf = obj(body.response_format);
  const schema = obj(rf.json_schema).schema;
  if (rf.type === "json_schema" && schema && typeof schema === "object") {
    out.output_config = { format: { type: "json_schema", schema } };
  }
  const user = obj(body.metadata).user_id ?? body.user;
  if (typeof user === "string") out.metadata = { user_id: user };
  return out;
}

const FINISH: Record<string, string> = {
  end_turn: "stop",
  stop_sequence: "stop",
  pause_turn: "stop",
  max_tokens: "length",
  model_context_window_exceeded: "length",
  tool_use: "tool_calls",
  refusal: "content_filter",
};
const finishReason = (r: unknown) => FINISH[String(r)] ?? "stop";

/** An Anthropic Messages reply → an OpenAI chat completion. */
function fromAnthropic(json: unknown, r: UsageReader) {
  const j = obj(json);
  let text = "";
  let reasoning = "";
  const toolCalls: Block[] = [];
  for (const b of arr(j.content)) {
    const block = obj(b);
    if (block.type === "text" && typeof block.text === "string") text += block.text;
    else if (block.type === "thinking" && typeof block.thinking === "string") {
      reasoning += block.thinking;
    } else if (block.type === "tool_use") {
      toolCalls.push({
        id: block.id,
        type: "function",
        function: { name: block.name, arguments: JSON.stringify(block.input ?? {}) },
      });
    }
  }
  const usage = readAnthropicUsage(j.usage, r);
  const message: Block = { role: "assistant", content: text || null, refusal: null };
  if (reasoning) message.reasoning_content = reasoning;
  if (toolCalls.length) message.tool_calls = toolCalls;
  return {
    body: {
      ...completionHead(String(j.id ?? "msg"), String(j.model ?? ""), "chat.completion"),
      choices: [{ index: 0, message, finish_reason: finishReason(j.stop_reason), logprobs: null }],
      usage: openAIUsageOf(usage),
    },
    usage,
  };
}

const STREAM_FAILED = { error: STREAM_FAILURE };

/** An Anthropic Messages event stream → OpenAI chat chunks, event by event. */
function streamFromAnthropic(
  src: ReadableStream<Uint8Array>,
  onInput?: (usage: NormalizedUsage) => void,
  maxEventBytes?: number,
  reader = new UsageReader(),
): ReadableStream<Uint8Array> {
  let head = completionHead("msg", "", "chat.completion.chunk");
  let usage: Record<string, unknown> = {};
  let finished = false;
  const toolIndex = new Map<number, number>();
  /** Tool calls (by OpenAI index) whose arguments have not started yet. */
  const noArgs = new Set<number>();
  const chunk = (delta: Block, finish: string | null = null) => ({
    ...head,
    choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }],
  });
  const usageChunk = () => {
    const u = readAnthropicUsage(usage, reader);
    return { ...head, choices: [], usage: openAIUsageOf(u) };
  };
  const onEvent = (data: Record<string, unknown>) => {
    switch (data.type) {
      case "message_start": {
        const msg = obj(data.message);
        head = completionHead(String(msg.id ?? "msg"), String(msg.model ?? ""), head.object);
        usage = { ...obj(msg.usage) };
        onInput?.({ ...readAnthropicUsage(usage, new UsageReader()), completion: 0 });
        return [chunk({ role: "assistant", content: "" })];
      }
      case "content_block_start": {
        const block = obj(data.content_block);
        if (block.type === "tool_use") {
          const index = toolIndex.size;
          toolIndex.set(Number(data.index), index);
          noArgs.add(index);
          return [chunk({
            tool_calls: [{
              index,
              id: block.id,
              type: "function",
              function: { name: block.name, arguments: "" },
            }],
          })];
        }
        if (block.type === "text" && typeof block.text === "string" && block.text) {
          return [chunk({ content: block.text })];
        }
        return [];
      }
      case "content_block_delta": {
        const d = obj(data.delta);
        if (d.type === "text_delta") return [chunk({ content: d.text })];
        if (d.type === "thinking_delta") return [chunk({ reasoning_content: d.thinking })];
        if (d.type === "input_json_delta") {
          const index = toolIndex.get(Number(data.index)) ?? 0;
          if (typeof d.partial_json === "string" && d.partial_json) noArgs.delete(index);
          return [chunk({ tool_calls: [{ index, function: { arguments: d.partial_json } }] })];
        }
        return [];
      }
      case "content_block_stop": {
        // A call without input streams no JSON (or ""): OpenAI clients parse arguments, so "{}".
        const index = toolIndex.get(Number(data.index));
        if (index === undefined || !noArgs.delete(index)) return [];
        return [chunk({ tool_calls: [{ index, function: { arguments: "{}" } }] })];
      }
      case "message_delta": {
        // output_tokens here is cumulative; later fields replace earlier ones. It is the final
        // usage: sent (and billed) at once, so that a stall before message_stop ends the stream
        // as cleanly as a break does.
        usage = { ...usage, ...obj(data.usage) };
        const finish = chunk({}, finishReason(obj(data.delta).stop_reason));
        if (finished) return [finish];
        finished = true;
        return [finish, usageChunk()];
      }
      case "error":
        return [STREAM_FAILED];
      default:
        return [];
    }
  };
  return translateSse(src, onEvent, () => [], {
    maxEventBytes,
    // message_delta carries the final (cumulative) output count: a break after it is the end.
    final: () => finished,
  });
}

function post(url: string, headers: Record<string, string>, body: unknown): UpstreamCall {
  return {
    url,
    init: {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
    },
  };
}

const authHeaders = (up: Upstream, version: string | null, beta: string | null) => ({
  "x-api-key": up.apiKey,
  "anthropic-version": version ?? ANTHROPIC_VERSION,
  ...(beta ? { "anthropic-beta": beta } : {}),
});

/** A native Messages API call: the client's `anthropic-version` and `anthropic-beta` kept. */
const nativePost = (up: Upstream, path: string, body: Record<string, unknown>, headers: Headers) =>
  post(`${up.baseUrl}${path}`, {
    ...authHeaders(up, headers.get("anthropic-version"), headers.get("anthropic-beta")),
    accept: body.stream ? "text/event-stream" : "application/json",
  }, body);

/** Anthropic: `/v1/chat/completions` translated to Messages and back; `/v1/messages` native. */
export const anthropic: ProviderAdapter = {
  counting: anthropicCounting,
  catalogFilter: /^claude-/,
  defaultMaxTokens: 8192,
  chatRequest: (up, body) =>
    post(`${up.baseUrl}/v1/messages`, {
      ...authHeaders(up, null, null),
      accept: body.stream ? "text/event-stream" : "application/json",
    }, toAnthropicBody(body)),
  chatReply: fromAnthropic,
  chatStream: streamFromAnthropic,
  // The Messages API answers with one choice.
  maxChoices: 1,
  native: {
    messages: (up, body, headers) => nativePost(up, "/v1/messages", body, headers),
    count_tokens: (up, body, headers) => nativePost(up, "/v1/messages/count_tokens", body, headers),
  },
};

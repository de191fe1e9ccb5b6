import type { ProviderAdapter } from "../types.ts";
import type { NormalizedUsage } from "../../pricing.ts";
import { openAIUsageOf, readGeminiUsage, UsageReader } from "../usage.ts";
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
  toolNames,
} from "../common.ts";
import { STREAM_FAILURE, translateSse } from "../../sse.ts";
import { geminiCounting } from "./counting.ts";

type Part = Record<string, unknown>;

/** Separates a tool call id from the Gemini thought signature carried inside it. */
const SIGNATURE_MARK = "__thought__";
/** Separates the router's tool call id from Gemini's own id of the call, carried inside it. */
const CALL_ID_MARK = "__gemini__";

/**
 * The OpenAI tool call id of a Gemini function call: the router's id, then Gemini's id of the call
 * and its thought signature if it has them, which OpenAI clients hand back with the call and its
 * result (`…__gemini__<id>__thought__<signature>`).
 */
function toolCallId(part: Part, call: Part, mint: () => string): string {
  return mint() + (typeof call.id === "string" && call.id ? CALL_ID_MARK + call.id : "") +
    (typeof part.thoughtSignature === "string" ? SIGNATURE_MARK + part.thoughtSignature : "");
}

/** What a tool call id carries back to Gemini: its id of the call and the thought signature. */
function fromToolCallId(toolCallId: unknown): { id?: string; signature?: string } {
  const s = String(toolCallId ?? "");
  const at = s.indexOf(SIGNATURE_MARK);
  const head = at < 0 ? s : s.slice(0, at);
  const signature = at < 0 ? "" : s.slice(at + SIGNATURE_MARK.length);
  const mark = head.indexOf(CALL_ID_MARK);
  const id = mark < 0 ? "" : head.slice(mark + CALL_ID_MARK.length);
  return { ...(id ? { id } : {}), ...(signature ? { signature } : {}) };
}

function userParts(content: unknown): Part[] {
  if (typeof content === "string") return content ? [{ text: content }] : [];
  const parts: Part[] = [];
  for (const p of arr(content)) {
    const part = obj(p);
    if (part.type === "text" && typeof part.text === "string" && part.text) {
      parts.push({ text: part.text });
    } else if (part.type === "image_url") {
      const url = imageUrlOf(part);
      const inline = parseDataUrl(url);
      parts.push(
        inline
          ? { inlineData: { mimeType: inline.mediaType, data: inline.data } }
          : { fileData: { fileUri: url, mimeType: guessMime(url) } },
      );
    }
  }
  return parts;
}

function guessMime(url: string): string {
  const ext = /\.(\w+)(?:\?|#|$)/.exec(url)?.[1]?.toLowerCase();
  return ext === "png"
    ? "image/png"
    : ext === "webp"
    ? "image/webp"
    : ext === "gif"
    ? "image/gif"
    : "image/jpeg";
}

/** A tool result as the object Gemini's `functionResponse.response` requires. */
function toolResponse(content: unknown): Record<string, unknown> {
  const text = contentText(content);
  try {
    const v = JSON.parse(text);
    if (v && typeof v === "object" && !Array.isArray(v)) return v;
  } catch { /* plain text */ }
  return { result: text };
}

/** An OpenAI chat body → a Gemini `generateContent` body. */
export function toGeminiBody(body: Record<string, unknown>): Record<string, unknown> {
  const messages = arr(body.messages);
  const names = toolNames(messages);
  const system: string[] = [];
  const contents: { role: "user" | "model"; parts: Part[] }[] = [];
  const push = (role: "user" | "model", parts: Part[]) => {
    if (parts.length === 0) return;
    const last = contents.at(-1);
    if (last?.role === role) last.parts.push(...parts);
    else contents.push({ role, parts });
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
        push("user", userParts(m.content));
        break;
      case "assistant": {
        const parts: Part[] = [];
        const text = contentText(m.content);
        if (text) parts.push({ text });
        for (const tc of arr(m.tool_calls)) {
          const t = obj(tc);
          const f = obj(t.function);
          const { id, signature } = fromToolCallId(t.id);
          parts.push({
            functionCall: { ...(id ? { id } : {}), name: f.name, args: parseArgs(f.arguments) },
            ...(signature ? { thoughtSignature: signature } : {}),
          });
        }
        push("model", parts);
        break;
      }
      case "tool": {
        const callId = String(m.tool_call_id ?? "");
        // Gemini matches a response to its call by the call's id, when it gave one.
        const { id } = fromToolCallId(callId);
        push("user", [{
          functionResponse: {
            ...(id ? { id } : {}),
            name: names.get(callId) ?? callId,
            response: toolResponse(m.content),
          },
        }]);
        break;
      }
    }
  }
  const out: Record<string, unknown> = { contents };
  if (system.length) out.systemInstruction = { parts: [{ text: system.join("\n\n") }] };
  const gen: Record<string, unknown> = {};
  if (typeof body.temperature === "number") gen.temperature = body.temperature;
  if (typeof body.top_p === "number") gen.topP = body.top_p;
  const max = body.max_completion_tokens ?? body.max_tokens;
  if (typeof max === "number") gen.maxOutputTokens = max;
  const stop = stopList(body.stop);
  if (stop) gen.stopSequences = stop;
  if (typeof body.n === "number" && body.n > 1) gen.candidateCount = body.n;
  if (typeof body.seed === "number") gen.seed = body.seed;
  if (typeof body.presence_penalty === "number") gen.presencePenalty = body.presence_penalty;
  if (typeof body.frequency_penalty === "number") gen.frequencyPenalty = body.frequency_penalty;
  const rf = obj(body.response_format);
  if (rf.type === "json_object") gen.responseMimeType = "application/json";
  if (rf.type === "json_schema") {
    gen.responseMimeType = "application/json";
    const schema = obj(rf.json_schema).schema;
    if (schema) gen.responseJsonSchema = schema;
  }
  const budget = THINKING_BUDGET[String(body.reasoning_effort)];
  if (budget !== undefined) gen.thinkingConfig = { thinkingBudget: budget };
  if (Object.keys(gen).length) out.generationConfig = gen;
  const tools = functionTools(body.tools);
  if (tools.length) {
    out.tools = [{
      functionDeclarations: tools.map((t) => ({
        name: t.name,
        ...(t.description ? { description: t.description } : {}),
        // As given: `parametersJsonSchema` takes JSON Schema ($ref, const, type lists, closed
        // objects...), which Gemini's OpenAPI-subset `parameters` refuses.
        ...(t.parameters ? { parametersJsonSchema: t.parameters } : {}),
      })),
    }];
  }
  const tc = body.tool_choice;
  const mode = tc === "required"
    ? { mode: "ANY" }
    : tc === "none"
    ? { mode: "NONE" }
    : tc === "auto"
    ? { mode: "AUTO" }
    : typeof obj(obj(tc).function).name === "string"
    ? { mode: "ANY", allowedFunctionNames: [obj(obj(tc).function).name] }
    : null;
  if (mode && tools.length) out.toolConfig = { functionCallingConfig: mode };
  return out;
}

/** OpenAI's `reasoning_effort` as a Gemini thinking budget (tokens). */
const THINKING_BUDGET: Record<string, number> = {
  none: 0,
  minimal: 0,
  low: 1024,
  medium: 8192,
  high: 24576,
};

const FINISH: Record<string, string> = {
  STOP: "stop",
  MAX_TOKENS: "length",
  SAFETY: "content_filter",
  RECITATION: "content_filter",
  BLOCKLIST: "content_filter",
  PROHIBITED_CONTENT: "content_filter",
  SPII: "content_filter",
  IMAGE_SAFETY: "content_filter",
};

/** The parts of one candidate as OpenAI message fields (text, reasoning, tool calls). */
function partsOf(candidate: Record<string, unknown>, callIds: () => string) {
  let text = "";
  let reasoning = "";
  const toolCalls: Part[] = [];
  for (const p of arr(obj(candidate.content).parts)) {
    const part = obj(p);
    if (typeof part.text === "string") {
      if (part.thought === true) reasoning += part.text;
      else text += part.text;
    } else if (part.functionCall) {
      const fc = obj(part.functionCall);
      toolCalls.push({
        // Gemini wants its id and thought signature back; OpenAI clients return the tool call id.
        id: toolCallId(part, fc, callIds),
        type: "function",
        function: { name: fc.name, arguments: JSON.stringify(fc.args ?? {}) },
      });
    }
  }
  return { text, reasoning, toolCalls };
}

const finishOf = (reason: unknown, calledTools: boolean) =>
  calledTools && (reason === "STOP" || reason === undefined)
    ? "tool_calls"
    : FINISH[String(reason)] ?? "stop";

const idMaker = () => {
  let n = 0;
  const base = crypto.randomUUID().replaceAll("-", "").slice(0, 16);
  return () => `call_${base}${n++}`;
};

/** A Gemini `generateContent` reply → an OpenAI chat completion. */
function fromGemini(json: unknown, r: UsageReader) {
  const j = obj(json);
  const usage = readGeminiUsage(j.usageMetadata, r);
  const ids = idMaker();
  const choices = arr(j.candidates).map((c, i) => {
    const cand = obj(c);
    const { text, reasoning, toolCalls } = partsOf(cand, ids);
    const message: Part = { role: "assistant", content: text || null, refusal: null };
    if (reasoning) message.reasoning_content = reasoning;
    if (toolCalls.length) message.tool_calls = toolCalls;
    return {
      index: typeof cand.index === "number" ? cand.index : i,
      message,
      finish_reason: finishOf(cand.finishReason, toolCalls.length > 0),
      logprobs: null,
    };
  });
  if (choices.length === 0 && obj(j.promptFeedback).blockReason) {
    // A blocked prompt has no candidate: answer as OpenAI does for filtered content.
    choices.push({
      index: 0,
      message: { role: "assistant", content: null, refusal: null },
      finish_reason: "content_filter",
      logprobs: null,
    });
  }
  return {
    body: {
      ...completionHead(
        String(j.responseId ?? `chatcmpl-${crypto.randomUUID()}`),
        String(j.modelVersion ?? ""),
        "chat.completion",
      ),
      choices,
      usage: openAIUsageOf(usage),
    },
    usage,
  };
}

const STREAM_FAILED = { error: STREAM_FAILURE };

/**
 * A Gemini `streamGenerateContent?alt=sse` stream → OpenAI chat chunks, event by event. An error
 * event ends it with the router's error (never Gemini's message) and no usage chunk: the router
 * then bills the running usage Gemini reported last (`onInput`: the input, and the output so far
 * where it counts it), or counts the output streamed, audited as a failed stream.
 */
function streamFromGemini(
  src: ReadableStream<Uint8Array>,
  onInput?: (usage: NormalizedUsage) => void,
  maxEventBytes?: number,
  reader = new UsageReader(),
): ReadableStream<Uint8Array> {
  let head: ReturnType<typeof completionHead> | null = null;
  let usage: unknown = null;
  let failed = false;
  const ids = idMaker();
  const toolCount = new Map<number, number>();
  /** Choices (candidates) already opened with their role chunk, and those finished. */
  const opened = new Set<number>();
  const finished = new Set<number>();
  const chunk = (index: number, delta: Part, finish: string | null = null) => ({
    ...head,
    choices: [{ index, delta, finish_reason: finish, logprobs: null }],
  });
  // Each event carries the running totals: those of the event finishing the last choice are final.
  const final = () => !failed && usage !== null && opened.size > 0 && finished.size === opened.size;
  let usageSent = false;
  const usageChunk = () => {
    usageSent = true;
    return {
      ...head,
      choices: [],
      usage: openAIUsageOf(readGeminiUsage(usage, reader)),
    };
  };
  return translateSse(src, (data) => {
    if (failed) return [];
    if (data.error) {
      failed = true;
      return [STREAM_FAILED];
    }
    const out: unknown[] = [];
    if (!head) {
      head = completionHead(
        String(data.responseId ?? `chatcmpl-${crypto.randomUUID()}`),
        String(data.modelVersion ?? ""),
        "chat.completion.chunk",
      );
      out.push(chunk(0, { role: "assistant", content: "" }));
      opened.add(0);
    }
    if (data.usageMetadata) {
      // Each event repeats the running totals: a stream cut before its end bills the latest.
      onInput?.(readGeminiUsage(data.usageMetadata, new UsageReader()));
      usage = data.usageMetadata;
    }
    if (arr(data.candidates).length === 0 && obj(data.promptFeedback).blockReason) {
      // A blocked prompt has no candidate: finish as OpenAI does for filtered content.
      out.push(chunk(0, {}, "content_filter"));
    }
    arr(data.candidates).forEach((c, i) => {
      const cand = obj(c);
      const index = typeof cand.index === "number" ? cand.index : i;
      // Each choice starts with its role (n > 1): OpenAI clients assemble a message per index.
      if (!opened.has(index)) {
        opened.add(index);
        out.push(chunk(index, { role: "assistant", content: "" }));
      }
      const { text, reasoning, toolCalls } = partsOf(cand, ids);
      if (reasoning) out.push(chunk(index, { reasoning_content: reasoning }));
      if (text) out.push(chunk(index, { content: text }));
      if (toolCalls.length) {
        const first = toolCount.get(index) ?? 0;
        toolCount.set(index, first + toolCalls.length);
        out.push(
          chunk(index, { tool_calls: toolCalls.map((t, k) => ({ index: first + k, ...t })) }),
        );
      }
      if (cand.finishReason) {
        finished.add(index);
        out.push(chunk(index, {}, finishOf(cand.finishReason, (toolCount.get(index) ?? 0) > 0)));
      }
    });
    // The final usage is sent (and billed) at once: a stall after it ends the stream cleanly.
    if (!usageSent && final()) out.push(usageChunk());
    return out;
  }, () => {
    if (!head || !usage || failed || usageSent) return [];
    return [usageChunk()];
  }, { maxEventBytes, final });
}

/** Google Gemini: `/v1/chat/completions` translated to `generateContent` and back. */
export const gemini: ProviderAdapter = {
  counting: geminiCounting,
  catalogFilter: /^(gemini|gemma)-/,
  chatRequest(up, body) {
    const model = encodeURIComponent(String(body.model));
    const url = body.stream
      ? `${up.baseUrl}/v1beta/models/${model}:streamGenerateContent?alt=sse`
      : `${up.baseUrl}/v1beta/models/${model}:generateContent`;
    return {
      url,
      init: {
        method: "POST",
        headers: {
          "x-goog-api-key": up.apiKey,
          "content-type": "application/json",
          accept: body.stream ? "text/event-stream" : "application/json",
        },
        body: JSON.stringify(toGeminiBody(body)),
      },
    };
  },
  chatReply: fromGemini,
  chatStream: streamFromGemini,
};

/**
 * A real HTTP server on 127.0.0.1 that speaks OpenAI's wire format (chat completions, streaming
 * and not, and embeddings), standing in for the provider. Tests steer it with `scenario`.
 */
import { serveLoopback } from "./serve.ts";
import { pause } from "../../lib/kv/util.ts";

export interface FakeUsage {
  prompt_tokens: number;
  completion_tokens: number;
  prompt_tokens_details?: {
    cached_tokens?: number;
    cache_write_tokens?: number;
    audio_tokens?: number;
  };
  completion_tokens_details?: { reasoning_tokens?: number; audio_tokens?: number };
  [k: string]: unknown;
}

export interface Scenario {
  /** Fixed usage to report; by default derived from the text lengths. */
  usage?: FakeUsage;
  /** Reply with this status and an error body (which must never reach the client). */
  status?: number;
  retryAfter?: string;
  /** Milliseconds to wait before answering. */
  delayMs?: number;
  /** Number of content chunks a stream is cut into. */
  chunks?: number;
  /** Number of content chunks a stream is cut into, by request (undefined: `chunks`). */
  chunksFor?: (body: Record<string, unknown>) => number | undefined;
  /** Milliseconds between stream chunks. */
  chunkDelayMs?: number;
  /** Omit the usage chunk even when asked for it. */
  omitUsage?: boolean;
  /**
   * Put the running (cumulative) usage on every chunk that carries choices, as vLLM's continuous
   * usage stats do: the input in full, the output so far, the last chunk the whole reply's.
   */
  cumulativeUsage?: boolean;
  /** Stop sending (but keep the connection open) after this many chunks. */
  stallAfter?: number;
  /** The reply's text; by default "Echo: " + the last user message. */
  content?: string;
  /** Usage a Responses API reply reports (`input_tokens`, `output_tokens`, details). */
  responsesUsage?: Record<string, unknown>;
  /** Web search calls (`web_search_call` output items) a Responses reply makes before its text. */
  webSearchCalls?: number;
  /**
   * In a stream, report a failure after this many events, then end: a chat chunk with `error`;
   * in a Responses stream an `error` event, or `response.failed` (see `responsesFailure`).
   */
  errorAfter?: number;
  /** How a Responses stream reports the failure of `errorAfter`: `error` (default) or
   * `response.failed`, whose response carries `responsesUsage` if set (null otherwise). */
  responsesFailure?: "error" | "response.failed";
  /** In a stream, break the connection (no proper end) after this many events. */
  dropAfter?: number;
}

const STREAM_ERROR = { message: "The server had an error while processing your request." };

export interface FakeOpenAI {
  url: string;
  scenario: Scenario;
  /** Bodies of the requests received, in order. */
  requests: Record<string, unknown>[];
  /** Authorization headers received. */
  auth: string[];
  /** Stream chunks the fake managed to write, per request, and whether the client cancelled. */
  streamsCancelled: number;
  /** Requests whose client went away before the fake answered. */
  aborted: number;
  close(): Promise<void>;
}

function lastUserText(body: Record<string, unknown>): string {
  const messages = (body.messages ?? []) as { role: string; content: unknown }[];
  const last = [...messages].reverse().find((m) => m.role === "user");
  const c = last?.content;
  if (typeof c === "string") return c;
  // Any part shape a client sent (the fuzz test sends nulls and numbers) is read without failing.
  if (Array.isArray(c)) return c.map((p) => (p as { text?: string } | null)?.text ?? "").join(" ");
  return "";
}

export function startFakeOpenAI(): FakeOpenAI {
  const fake: FakeOpenAI = {
    url: "",
    scenario: {},
    requests: [],
    auth: [],
    streamsCancelled: 0,
    aborted: 0,
    close: () => server.close(),
  };
  const server = serveLoopback(async (req) => {
    let answered = false;
    req.signal.addEventListener("abort", () => answered || fake.aborted++);
    try {
      return await answer(req);
    } finally {
      answered = true;
    }
  });
  const answer = async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    const body = await req.json().catch(() => ({}));
    fake.requests.push(body);
    fake.auth.push(req.headers.get("authorization") ?? "");
    const s = fake.scenario;
    // A client that went away leaves no timer behind.
    if (s.delayMs) await pause(s.delayMs, req.signal);
    if (s.status && s.status >= 400) {
      const headers: Record<string, string> = { "content-type": "application/json" };
      if (s.retryAfter) headers["retry-after"] = s.retryAfter;
      return new Response(
        JSON.stringify({ error: { message: `upstream failure echoing: ${lastUserText(body)}` } }),
        { status: s.status, headers },
      );
    }
    if (url.pathname.endsWith("/embeddings")) {
      const inputs = Array.isArray(body.input) ? body.input : [body.input];
      const tokens = s.usage?.prompt_tokens ??
        inputs.reduce((n: number, i: unknown) => n + Math.ceil(String(i).length / 4), 0);
      return Response.json({
        object: "list",
        data: inputs.map((_: unknown, index: number) => ({
          object: "embedding",
          index,
          embedding: [0.1, 0.2, 0.3],
        })),
        model: body.model,
        usage: { prompt_tokens: tokens, total_tokens: tokens },
      });
    }
    if (url.pathname.endsWith("/responses")) return responsesReply(body, s, fake);
    if (!url.pathname.endsWith("/chat/completions")) {
      return new Response("not found", {
        status: 404,
      });
    }
    const content = s.content ?? `Echo: ${lastUserText(body)}`;
    const usage: FakeUsage = s.usage ?? {
      prompt_tokens: Math.ceil(JSON.stringify(body.messages ?? []).length / 4),
      completion_tokens: Math.ceil(content.length / 4),
    };
    const full = { ...usage, total_tokens: usage.prompt_tokens + usage.completion_tokens };
    const id = `chatcmpl-${crypto.randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    if (!body.stream) {
      return Response.json({
        id,
        object: "chat.completion",
        created,
        model: body.model,
        choices: [{
          index: 0,
          message: { role: "assistant", content },
          finish_reason: "stop",
          logprobs: null,
        }],
        usage: full,
      });
    }
    const includeUsage =
      (body.stream_options as { include_usage?: boolean })?.include_usage === true;
    const n = Math.max(1, s.chunksFor?.(body) ?? s.chunks ?? 4);
    const size = Math.ceil(content.length / n);
    const parts = Array.from({ length: n }, (_, i) => content.slice(i * size, (i + 1) * size));
    /** The cumulative usage after `k` of the `n` content parts. */
    const runningUsage = (k: number) => {
      const completion = Math.ceil(usage.completion_tokens * k / n);
      const reasoning = usage.completion_tokens_details?.reasoning_tokens;
      return {
        ...full,
        completion_tokens: completion,
        total_tokens: usage.prompt_tokens + completion,
        ...(reasoning === undefined
          ? {}
          : { completion_tokens_details: { reasoning_tokens: Math.min(reasoning, completion) } }),
      };
    };
    const chunk = (delta: unknown, finish: string | null, k: number) => ({
      id,
      object: "chat.completion.chunk",
      created,
      model: body.model,
      choices: [{ index: 0, delta, finish_reason: finish }],
      ...(s.cumulativeUsage ? { usage: runningUsage(k) } : includeUsage ? { usage: null } : {}),
    });
    const events: string[] = [
      JSON.stringify(chunk({ role: "assistant", content: "" }, null, 0)),
      ...parts.map((p, i) => JSON.stringify(chunk({ content: p }, null, i + 1))),
      JSON.stringify(chunk({}, "stop", n)),
    ];
    if (includeUsage && !s.omitUsage) {
      events.push(
        JSON.stringify({
          id,
          object: "chat.completion.chunk",
          created,
          model: body.model,
          choices: [],
          usage: full,
        }),
      );
    }
    events.push("[DONE]");
    if (s.errorAfter !== undefined) {
      // As OpenAI's mid-stream failures: a chunk with `error` (no choices), then the end.
      events.splice(
        s.errorAfter,
        events.length,
        JSON.stringify({
          error: { ...STREAM_ERROR, type: "server_error", param: null, code: null },
        }),
      );
    }
    const enc = new TextEncoder();
    let i = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stream = new ReadableStream<Uint8Array>({
      async pull(ctrl) {
        if (s.stallAfter !== undefined && i >= s.stallAfter) {
          // Hold the connection open without sending, until the reader gives up.
          await new Promise<void>((r) => timer = setTimeout(r, 60_000));
          return;
        }
        if (s.dropAfter !== undefined && i >= s.dropAfter) {
          ctrl.error(new Error("connection lost"));
          return;
        }
        if (i >= events.length) {
          ctrl.close();
          return;
        }
        if (s.chunkDelayMs && i > 0) {
          // Cancelled by `cancel` when the reader goes away, so no timer outlives the stream.
          await new Promise<void>((r) => timer = setTimeout(r, s.chunkDelayMs));
        }
        ctrl.enqueue(enc.encode(`data: ${events[i++]}\n\n`));
      },
      cancel() {
        clearTimeout(timer);
        fake.streamsCancelled++;
      },
    });
    return new Response(stream, { headers: { "content-type": "text/event-stream" } });
  };
  fake.url = `${server.origin}/v1`;
  return fake;
}

/** The Responses API (`POST /responses`): a message output, streamed as typed events or not. */
function responsesReply(body: Record<string, unknown>, s: Scenario, fake: FakeOpenAI): Response {
  const input = typeof body.input === "string" ? body.input : JSON.stringify(body.input ?? "");
  const text = s.content ?? `Echo: ${input}`;
  const usage = s.responsesUsage ?? {
    input_tokens: Math.ceil(input.length / 4),
    input_tokens_details: { cached_tokens: 0 },
    output_tokens: Math.ceil(text.length / 4),
    output_tokens_details: { reasoning_tokens: 0 },
  };
  const id = `resp_${crypto.randomUUID().replaceAll("-", "")}`;
  const msgId = `msg_${crypto.randomUUID().replaceAll("-", "")}`;
  const created_at = Math.floor(Date.now() / 1000);
  const response = (status: string, output: unknown[], u: unknown) => ({
    id,
    object: "response",
    created_at,
    status,
    model: body.model,
    output,
    usage: u,
  });
  const message = {
    type: "message",
    id: msgId,
    status: "completed",
    role: "assistant",
    content: [{ type: "output_text", text, annotations: [] }],
  };
  const searches = Array.from({ length: s.webSearchCalls ?? 0 }, (_, i) => ({
    type: "web_search_call",
    id: `ws_${i}`,
    status: "completed",
    action: { type: "search", query: `query ${i}`, sources: [] },
  }));
  const output = [...searches, message];
  if (!body.stream) return Response.json(response("completed", output, usage));
  const n = Math.max(1, s.chunks ?? 3);
  const size = Math.ceil(text.length / n);
  let seq = 0;
  const events: Record<string, unknown>[] = [
    { type: "response.created", response: response("in_progress", [], null) },
    ...searches.flatMap((item, i) => [
      {
        type: "response.output_item.added",
        output_index: i,
        item: { ...item, status: "in_progress" },
      },
      { type: "response.web_search_call.completed", output_index: i, item_id: item.id },
      { type: "response.output_item.done", output_index: i, item },
    ]),
    ...Array.from({ length: n }, (_, i) => ({
      type: "response.output_text.delta",
      item_id: msgId,
      output_index: searches.length,
      content_index: 0,
      delta: text.slice(i * size, (i + 1) * size),
    })),
    {
      type: "response.output_text.done",
      item_id: msgId,
      output_index: searches.length,
      content_index: 0,
      text,
    },
    { type: "response.completed", response: response("completed", output, usage) },
  ];
  if (s.errorAfter !== undefined) {
    const failure = s.responsesFailure === "response.failed"
      ? {
        type: "response.failed",
        response: {
          ...response("failed", [], s.responsesUsage ?? null),
          error: { code: "server_error", ...STREAM_ERROR },
        },
      }
      : { type: "error", code: "server_error", ...STREAM_ERROR, param: null };
    events.splice(s.errorAfter, events.length, failure);
  }
  const enc = new TextEncoder();
  let i = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(ctrl) {
      const dropAt = s.stallAfter ?? s.dropAfter;
      if (dropAt !== undefined && i >= dropAt) {
        ctrl.error(new Error("connection lost"));
        return;
      }
      if (i >= events.length) {
        ctrl.close();
        return;
      }
      const e: Record<string, unknown> = { ...events[i++], sequence_number: seq++ };
      ctrl.enqueue(enc.encode(`event: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`));
    },
    cancel() {
      fake.streamsCancelled++;
    },
  });
  return new Response(stream, { headers: { "content-type": "text/event-stream" } });
}

/**
 * A real HTTP server on 127.0.0.1 that speaks Anthropic's Messages wire format (`POST
 * /v1/messages`, streaming and not, tool use included), standing in for the provider.
 */
import { serveLoopback } from "./serve.ts";
import { pause } from "../../lib/kv/util.ts";

export interface AnthropicScenario {
  /** Usage to report (Anthropic shape); by default derived from the text lengths. */
  usage?: Record<string, unknown>;
  /** Reply with this status and an error body (which must never reach the client). */
  status?: number;
  /** Apply `status` only to the first this many requests, then answer normally. */
  failFirst?: number;
  /** The reply's text; by default "Echo: " + the last user text, or the last tool result. */
  content?: string;
  /** Answer with a call of this tool (after any text) and stop_reason `tool_use`. */
  toolCall?: { id: string; name: string; input: Record<string, unknown> };
  /** Number of text deltas a stream is cut into. */
  chunks?: number;
  /** Close the stream abruptly (no message_delta) after this many events. */
  breakAfter?: number;
  /** Stop sending (but keep the connection open) after this many events. */
  stallAfter?: number;
  /** Milliseconds between stream events. */
  eventDelayMs?: number;
  /**
   * In a stream, server-side web searches run before the text: each a `server_tool_use` block
   * and its `web_search_tool_result` block (as Anthropic's; the count comes in `usage`).
   */
  webSearches?: number;
  /** In a stream, send an `error` event (echoing the request) after this many events, then end. */
  errorAfter?: number;
  /** Milliseconds to wait before answering anything (cut short when the caller goes away). */
  delayMs?: number;
}

export interface FakeAnthropic {
  url: string;
  scenario: AnthropicScenario;
  requests: Record<string, unknown>[];
  headers: Headers[];
  /** Streams the client (the router) cancelled before their end. */
  streamsCancelled: number;
  close(): Promise<void>;
}

type Block = Record<string, unknown>;

/** The text the fake answers: the last tool result if the conversation ends with one. */
function replyText(body: Record<string, unknown>): string {
  const messages = (body.messages ?? []) as { role: string; content: unknown }[];
  const last = [...messages].reverse().find((m) => m.role === "user");
  const c = last?.content;
  if (typeof c === "string") return `Echo: ${c}`;
  const blocks = (Array.isArray(c) ? c : []) as Block[];
  const result = blocks.find((b) => b.type === "tool_result");
  if (result) return `Tool said: ${typeof result.content === "string" ? result.content : ""}`;
  return `Echo: ${blocks.map((b) => b.type === "text" ? b.text : "").join(" ")}`;
}

export function startFakeAnthropic(): FakeAnthropic {
  const fake: FakeAnthropic = {
    url: "",
    scenario: {},
    requests: [],
    headers: [],
    streamsCancelled: 0,
    close: () => server.close(),
  };
  const server = serveLoopback(
    async (req) => {
      const url = new URL(req.url);
      const body = await req.json().catch(() => ({}));
      fake.requests.push(body);
      fake.headers.push(req.headers);
      const s = fake.scenario;
      if (s.delayMs) await pause(s.delayMs, req.signal);
      if (url.pathname === "/v1/messages/count_tokens") {
        return Response.json({ input_tokens: Math.ceil(JSON.stringify(body.messages).length / 4) });
      }
      if (url.pathname !== "/v1/messages") return new Response("not found", { status: 404 });
      const failing = s.failFirst === undefined || fake.requests.length <= s.failFirst;
      if (s.status && s.status >= 400 && failing) {
        return Response.json({
          type: "error",
          error: { type: "api_error", message: `failure echoing: ${JSON.stringify(body)}` },
        }, { status: s.status });
      }
      const text = s.content ?? replyText(body);
      const tool = s.toolCall && body.tools ? s.toolCall : undefined;
      const usage = s.usage ?? {
        input_tokens: Math.ceil(JSON.stringify(body.messages ?? []).length / 4),
        output_tokens: Math.ceil(text.length / 4),
        cache_read_input_tokens: 0,
        cache_creation_input_tokens: 0,
      };
      const id = `msg_${crypto.randomUUID().replaceAll("-", "")}`;
      const stopReason = tool ? "tool_use" : "end_turn";
      if (!body.stream) {
        const content: Block[] = [{ type: "text", text }];
        if (tool) content.push({ type: "tool_use", ...tool });
        return Response.json({
          id,
          type: "message",
          role: "assistant",
          model: body.model,
          content,
          stop_reason: stopReason,
          stop_sequence: null,
          usage,
        });
      }
      const n = Math.max(1, s.chunks ?? 3);
      const size = Math.ceil(text.length / n);
      const events: [string, Block][] = [
        ["message_start", {
          type: "message_start",
          message: {
            id,
            type: "message",
            role: "assistant",
            model: body.model,
            content: [],
            stop_reason: null,
            stop_sequence: null,
            // As Anthropic's: the searches are counted in message_delta, none at the start.
            usage: {
              ...usage,
              output_tokens: 1,
              ...(usage.server_tool_use ? { server_tool_use: { web_search_requests: 0 } } : {}),
            },
          },
        }],
        ...Array.from({ length: s.webSearches ?? 0 }, (_, i): [string, Block][] => {
          const id = `srvtoolu_${i}`;
          return [
            ["content_block_start", {
              type: "content_block_start",
              index: 2 * i,
              content_block: { type: "server_tool_use", id, name: "web_search", input: {} },
            }],
            ["content_block_delta", {
              type: "content_block_delta",
              index: 2 * i,
              delta: { type: "input_json_delta", partial_json: `{"query":"query ${i}"}` },
            }],
            ["content_block_stop", { type: "content_block_stop", index: 2 * i }],
            ["content_block_start", {
              type: "content_block_start",
              index: 2 * i + 1,
              content_block: {
                type: "web_search_tool_result",
                tool_use_id: id,
                content: [{ type: "web_search_result", title: "T", url: "https://example.com/" }],
              },
            }],
            ["content_block_stop", { type: "content_block_stop", index: 2 * i + 1 }],
          ];
        }).flat(),
        ["content_block_start", {
          type: "content_block_start",
          index: 2 * (s.webSearches ?? 0),
          content_block: { type: "text", text: "" },
        }],
        ["ping", { type: "ping" }],
        ...Array.from({ length: n }, (_, i): [string, Block] => [
          "content_block_delta",
          {
            type: "content_block_delta",
            index: 2 * (s.webSearches ?? 0),
            delta: { type: "text_delta", text: text.slice(i * size, (i + 1) * size) },
          },
        ]),
        ["content_block_stop", { type: "content_block_stop", index: 2 * (s.webSearches ?? 0) }],
      ];
      if (tool) {
        const json = JSON.stringify(tool.input);
        const half = Math.floor(json.length / 2);
        events.push(
          ["content_block_start", {
            type: "content_block_start",
            index: 1,
            content_block: { type: "tool_use", id: tool.id, name: tool.name, input: {} },
          }],
          ...[json.slice(0, half), json.slice(half)].map((part): [string, Block] => [
            "content_block_delta",
            {
              type: "content_block_delta",
              index: 1,
              delta: { type: "input_json_delta", partial_json: part },
            },
          ]),
          ["content_block_stop", { type: "content_block_stop", index: 1 }],
        );
      }
      events.push(
        ["message_delta", {
          type: "message_delta",
          delta: { stop_reason: stopReason, stop_sequence: null },
          usage: {
            output_tokens: usage.output_tokens,
            ...(usage.server_tool_use ? { server_tool_use: usage.server_tool_use } : {}),
          },
        }],
        ["message_stop", { type: "message_stop" }],
      );
      if (s.errorAfter !== undefined) {
        // As Anthropic's mid-stream failures (overloaded_error): an error event, then the end.
        events.splice(s.errorAfter, events.length, ["error", {
          type: "error",
          error: { type: "overloaded_error", message: `failure echoing: ${JSON.stringify(body)}` },
        }]);
      }
      const enc = new TextEncoder();
      let i = 0;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const stream = new ReadableStream<Uint8Array>({
        async pull(ctrl) {
          if (s.eventDelayMs && i > 0) {
            await new Promise((r) => timer = setTimeout(r, s.eventDelayMs));
          }
          if (s.stallAfter !== undefined && i >= s.stallAfter) {
            // Hold the connection open without sending, until the reader gives up.
            await new Promise<void>((r) => timer = setTimeout(r, 60_000));
            return;
          }
          if (s.breakAfter !== undefined && i >= s.breakAfter) {
            ctrl.error(new Error("connection lost"));
            return;
          }
          if (i >= events.length) {
            ctrl.close();
            return;
          }
          const [name, data] = events[i++];
          ctrl.enqueue(enc.encode(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`));
        },
        cancel() {
          clearTimeout(timer);
          fake.streamsCancelled++;
        },
      });
      return new Response(stream, { headers: { "content-type": "text/event-stream" } });
    },
  );
  fake.url = server.origin;
  return fake;
}

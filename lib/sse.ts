/**
 * Server-sent events: the project's one splitter, the codec of an event's data and name, a chunk
 * reader for fetch bodies, and stream translation (a provider's events mapped to another format's).
 */
import { nestsWithin } from "./json.ts";

const EVENT_END = /\r?\n\r?\n/g;

/**
 * The largest SSE event a provider's stream may send (`MAX_SSE_EVENT_BYTES`' default), counted in
 * characters as decoded. The largest real events carry a whole response (OpenAI Responses'
 * `response.completed`: every output item, generated images in base64, the echoed instructions
 * and tools) or an inline image (Gemini): a few MB.
 */
export const DEFAULT_MAX_SSE_EVENT_BYTES = 16 * 1024 * 1024;

/** An SSE event longer than its splitter's maximum (its text is dropped). */
export class SseEventTooLarge extends Error {
  override name = "SseEventTooLarge";
  constructor(max: number) {
    super(`An SSE event exceeded ${max} characters`);
  }
}

/**
 * Splits SSE text into complete events; keeps the incomplete tail for the next push. Each push
 * scans only its own text (and the tail's last three characters, where a terminator cut in two
 * begins), so an event that arrives in many pieces costs time linear in its size. An event longer
 * than `maxEvent` characters, complete or still buffered, throws `SseEventTooLarge`.
 */
export class SseSplitter {
  #rest = "";
  /** The last (up to) three characters of `#rest`. */
  #edge = "";

  constructor(readonly maxEvent: number = DEFAULT_MAX_SSE_EVENT_BYTES) {}

  /** Appends text and returns the events it completed (without their blank-line terminator). */
  push(text: string): string[] {
    const s = this.#edge + text;
    EVENT_END.lastIndex = 0;
    let m = EVENT_END.exec(s);
    if (!m) {
      // Appending makes a rope, flattened once when the event completes.
      this.#rest += text;
      this.#edge = s.slice(-3);
      if (this.#rest.length > this.maxEvent) this.#tooLarge();
      return [];
    }
    const events: string[] = [];
    // A terminator ends in `text`, so it begins at most three characters into the tail's edge.
    let event = this.#rest.slice(0, this.#rest.length - this.#edge.length) + s.slice(0, m.index);
    for (;;) {
      if (event.length > this.maxEvent) this.#tooLarge();
      events.push(event);
      const from = m.index + m[0].length;
      m = EVENT_END.exec(s);
      if (!m) {
        this.#rest = s.slice(from);
        this.#edge = this.#rest.slice(-3);
        break;
      }
      event = s.slice(from, m.index);
    }
    if (this.#rest.length > this.maxEvent) this.#tooLarge();
    return events;
  }

  #tooLarge(): never {
    this.#rest = "";
    this.#edge = "";
    throw new SseEventTooLarge(this.maxEvent);
  }

  /** The incomplete tail. */
  get rest(): string {
    return this.#rest;
  }

  /** The length of the incomplete tail (0 when the text so far ended with an event). */
  get buffered(): number {
    return this.#rest.length;
  }
}

/**
 * The JSON payload of an event's `data:` lines, or null (comments, `[DONE]`, non-JSON, and JSON
 * nested past `MAX_JSON_DEPTH`, which the router's walks over events could not take).
 */
export function eventData(event: string): unknown {
  let data = "";
  for (const line of event.split(/\r?\n/)) {
    if (line.startsWith("data:")) data += (data ? "\n" : "") + line.slice(line[5] === " " ? 6 : 5);
  }
  if (!data || data === "[DONE]" || !nestsWithin(data)) return null;
  try {
    return JSON.parse(data);
  } catch {
    return null;
  }
}

/** The event with its data replaced by `data` as JSON, keeping its other lines (`event:`). */
export function withData(event: string, data: unknown): string {
  const lines = event.split(/\r?\n/).filter((l) => l && !l.startsWith("data:"));
  return [...lines, `data: ${JSON.stringify(data)}`].join("\n");
}

/** The `event:` name of an SSE event, or "" when it has none. */
export function eventName(event: string): string {
  const m = /^event:\s*(.*)$/m.exec(event);
  return m ? m[1].trim() : "";
}

/**
 * The event format a translation writes: OpenAI chat chunks, ending with `[DONE]`; or Anthropic
 * events, named by their `type`.
 */
export type SseFormat = "openai" | "anthropic";

export interface TranslateOptions {
  /** The format written (OpenAI chat chunks by default). */
  format?: SseFormat;
  /** The largest upstream event (`SseSplitter`): a longer one fails the stream. */
  maxEventBytes?: number;
  /**
   * Whether the upstream's final usage has arrived: an upstream that breaks after it ends the
   * translation as if it had ended (`onEnd`'s events, `[DONE]`), so the client's stream ends
   * cleanly and is billed once.
   */
  final?: () => boolean;
}

/**
 * Translates a provider's SSE stream into another format's events (OpenAI chat chunks by
 * default): `onEvent` maps each upstream event (its JSON data and event name) to zero or more
 * events, `onEnd` adds the closing ones. An upstream failure (or an event over the maximum)
 * errors the result, unless `final`; cancelling the result cancels the upstream.
 */
export function translateSse(
  src: ReadableStream<Uint8Array>,
  onEvent: (data: Record<string, unknown>, name: string) => unknown[],
  onEnd: () => unknown[],
  opts: TranslateOptions = {},
): ReadableStream<Uint8Array> {
  const format = opts.format ?? "openai";
  const reader = chunkReader(src);
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  const splitter = new SseSplitter(opts.maxEventBytes);
  const emit = (chunks: unknown[]) =>
    chunks.map((c) =>
      format === "anthropic"
        ? `event: ${(c as { type?: string }).type}\ndata: ${JSON.stringify(c)}\n\n`
        : `data: ${JSON.stringify(c)}\n\n`
    ).join("");
  const handle = (events: string[]) => {
    let out = "";
    for (const event of events) {
      const data = eventData(event);
      if (data && typeof data === "object") {
        out += emit(onEvent(data as Record<string, unknown>, eventName(event)));
      }
    }
    return out;
  };
  const closing = () => emit(onEnd()) + (format === "openai" ? "data: [DONE]\n\n" : "");
  return new ReadableStream<Uint8Array>({
    async pull(ctrl) {
      let out: string;
      try {
        // Loop until something is enqueued: a pull that enqueues nothing is not called again.
        for (;;) {
          const r = await reader.read();
          if (r.done) {
            out = handle(splitter.push(decoder.decode() + "\n\n")) + closing();
            break;
          }
          out = handle(splitter.push(decoder.decode(r.value, { stream: true })));
          if (out) {
            ctrl.enqueue(encoder.encode(out));
            return;
          }
        }
      } catch (e) {
        reader.cancel(e).catch(() => {});
        if (!opts.final?.()) throw e;
        // The final usage is in: what broke came after the reply (its unfinished event is dropped).
        out = closing();
      }
      ctrl.enqueue(encoder.encode(out));
      ctrl.close();
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
}

const READ_BYTES = 16 * 1024;

/**
 * Reads a stream chunk by chunk. A byte stream (a fetch body) is read into one reused buffer and
 * each chunk copied out at its size: its default reader allocates 64 KiB per read, which each
 * chunk of a few hundred bytes would keep alive (the router's largest streaming cost in profiles).
 */
export function chunkReader(src: ReadableStream<Uint8Array>): {
  read(): Promise<ReadableStreamReadResult<Uint8Array>>;
  cancel(reason?: unknown): Promise<void>;
} {
  let byob: ReadableStreamBYOBReader;
  try {
    byob = src.getReader({ mode: "byob" });
  } catch {
    return src.getReader(); // not a byte stream
  }
  let buf = new ArrayBuffer(READ_BYTES);
  return {
    async read() {
      const r = await byob.read(new Uint8Array(buf));
      if (r.done || !r.value) return { done: true, value: undefined };
      buf = r.value.buffer as ArrayBuffer;
      return { done: false, value: r.value.slice() };
    },
    cancel: (reason) => byob.cancel(reason),
  };
}

/** The error a client gets in place of a stream its provider failed (never the provider's text). */
export const STREAM_FAILURE = {
  message: "The provider's stream failed",
  type: "api_error",
  code: "upstream_error",
};
/** The error a client gets in place of a stream still running at the shutdown deadline. */
export const STREAM_SHUTDOWN = {
  message:
    "The router is restarting: the stream was ended early and billed for what was delivered; retry",
  type: "api_error",
  code: "shutting_down",
};
/** The error a client gets in place of a stream that ran for `MAX_STREAM_MS`. */
export const STREAM_TOO_LONG = {
  message: "The stream reached the longest time this router allows a stream",
  type: "api_error",
  code: "stream_too_long",
};

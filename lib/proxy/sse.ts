/** The project's one SSE splitter, the usage tap over proxied streams, and stream translation. */
import { nestsWithin } from "../json.ts";
import type { LiveStreams } from "./live_streams.ts";

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
 * The event format a client reads: OpenAI chat chunks end with `[DONE]`; Anthropic events are
 * named by their `type` and end with `message_stop`; OpenAI Responses events end with the final
 * `response.*` event itself.
 */
export type SseFormat = "openai" | "anthropic" | "responses";

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

const USAGE = /"usage"\s*:\s*\{/;
const READ_BYTES = 16 * 1024;
/** Whether a chunk's text ends with an event's end. */
const ENDS_EVENT = /\n\n$|\r\n\r\n$/;

/**
 * Reads a stream chunk by chunk. A byte stream (a fetch body) is read into one reused buffer and
 * each chunk copied out at its size: its default reader allocates 64 KiB per read, which each
 * chunk of a few hundred bytes would keep alive (the router's largest streaming cost in profiles).
 */
function chunkReader(src: ReadableStream<Uint8Array>): {
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
/** The error a client gets in place of a stream that ran for `MAX_STREAM_MS`. */
export const STREAM_TOO_LONG = {
  message: "The stream reached the longest time this router allows a stream",
  type: "api_error",
  code: "stream_too_long",
};
/** The error a client gets in place of a stream still running at the shutdown deadline. */
export const STREAM_SHUTDOWN = {
  message:
    "The router is restarting: the stream was ended early and billed for what was delivered; retry",
  type: "api_error",
  code: "shutting_down",
};

/**
 * The event that ends a failed stream, per format: OpenAI's SDKs throw on a chunk with `error`;
 * Anthropic's read only named events, and throw on `event: error`.
 */
function errorEvent(format: SseFormat, error: typeof STREAM_FAILURE): string {
  return format === "anthropic"
    ? `event: error\ndata: ${JSON.stringify({ type: "error", error })}\n\n`
    : `data: ${JSON.stringify({ error })}\n\n`;
}

/**
 * How each format's stream ends once its reply is complete, and how to tell it was sent: what a
 * stream whose final usage arrived gets when its upstream breaks or ends before its own end.
 */
const CLOSING: Record<SseFormat, { event: string; sent: RegExp } | null> = {
  openai: { event: "data: [DONE]\n\n", sent: /^data: ?\[DONE\]/m },
  anthropic: {
    event: `event: message_stop\ndata: ${JSON.stringify({ type: "message_stop" })}\n\n`,
    sent: /"message_stop"/,
  },
  // The final usage comes in `response.completed` (or `.incomplete`, `.failed`): the last event.
  responses: null,
};

/**
 * What `onUsage` answers for an event carrying usage. Final usage: the event to send in its place
 * (`data: ...`), or null to drop it; either ends the watch. Usage that is not final: undefined
 * passes the event on unchanged, `{ interim }` sends `interim` in its place (null drops it); the
 * watch goes on (Anthropic's `message_start` carries the input usage and its `message_delta` the
 * final one; some OpenAI-compatible hosts put running usage on every chunk).
 */
export type UsageAnswer = string | null | undefined | { interim: string | null };

/**
 * How a tapped stream ended: `complete` after the upstream's last byte, `cancelled` when the
 * client went away, `error` when the upstream failed or stalled, `event_too_large` when it sent
 * an event over the maximum, `too_long` when the stream ran for its longest allowed time,
 * `shutdown` when the process ended its streams at the shutdown deadline.
 */
export type TapEnd =
  | "complete"
  | "cancelled"
  | "error"
  | "event_too_large"
  | "too_long"
  | "shutdown";

export interface TapHandlers {
  /** The format of the events ending the stream (default OpenAI's). */
  format?: SseFormat;
  /**
   * Called with each event that carries usage until one is final (see `UsageAnswer`). `event` is
   * the raw event text (with any `event:` line).
   */
  onUsage(chunk: Record<string, unknown>, event: string): Promise<UsageAnswer>;
  /** Called once when the stream ends, before the client sees its end. */
  onEnd(kind: TapEnd): Promise<void>;
  /**
   * Called with the text sent to the client, whole events at a time, until the final usage: what
   * a stream that ends without one is billed by.
   */
  delivered?(text: string): void;
  /**
   * Called with each event that carries usage after the final one, if set: the event to send in
   * its place, null to drop it, undefined to pass it on. Unset, such events pass on unchanged.
   */
  afterFinal?(chunk: Record<string, unknown>): string | null | undefined;
  /**
   * Events worth a look before the final usage though they carry none (a web search the
   * provider completed, a failure it reported): each whose text matches an observer's `pattern`
   * is parsed and handed to its `see`, and passes on unchanged.
   */
  observe?: Observer[];
}

/** See `TapHandlers.observe`. */
export interface Observer {
  pattern: RegExp;
  see(chunk: Record<string, unknown>, name: string): void;
}

/**
 * An event by which a provider reports, inside a stream, that it failed (Anthropic's
 * `event: error`, an OpenAI chunk with `error`): an event whose text matches `pattern` and whose
 * data (and `event:` name) `is` accepts.
 */
export interface FailureEvent {
  pattern: RegExp;
  is(chunk: Record<string, unknown>, name: string): boolean;
}

/** The bounds of a tapped stream. */
export interface TapLimits {
  /** A read that waits longer ends the stream as an upstream error (`UPSTREAM_TIMEOUT_MS`). */
  idleMs: number;
  /** The longest the stream may run before it is ended (`MAX_STREAM_MS`); unset, no limit. */
  maxStreamMs?: number;
  /** The largest event (`MAX_SSE_EVENT_BYTES`, see `SseSplitter`). */
  maxEventBytes?: number;
  /**
   * The process's live streams: the stream is counted among them until it has ended, and is
   * ended (`shutdown`) as soon as their signal is aborted.
   */
  live?: LiveStreams;
}

/**
 * Passes an SSE stream (OpenAI chat, Anthropic Messages or OpenAI Responses) through chunk by
 * chunk. Bytes go out untouched unless a chunk holds the usage event (or an event split across
 * chunks), which is handed to `onUsage`. Nothing is kept but an unfinished event: what was sent
 * goes to `delivered`. A stream that fails, stalls past `idleMs`, sends an event over the
 * maximum, runs past `maxStreamMs` or is ended by `live` is ended with the format's error event;
 * once the final usage has come, with the format's own end instead (billed once, nothing for an
 * SDK to throw on).
 */
export function tapStream(
  src: ReadableStream<Uint8Array>,
  handlers: TapHandlers,
  limits: TapLimits,
): ReadableStream<Uint8Array> {
  const { idleMs } = limits;
  const reader = chunkReader(src);
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  const splitter = new SseSplitter(limits.maxEventBytes);
  const format = handlers.format ?? "openai";
  const closing = CLOSING[format];
  const observers = handlers.observe ?? [];
  const observed = (text: string) => observers.some((o) => o.pattern.test(text));
  /** Shows an event to the observers that watch for it (before the final usage). */
  const observe = (event: string) => {
    for (const o of observers) {
      if (!o.pattern.test(event)) continue;
      const data = eventData(event);
      if (data && typeof data === "object") {
        o.see(data as Record<string, unknown>, eventName(event));
      }
    }
  };
  let usageSeen = false;
  /** Whether the format's own end has gone out (after the final usage). */
  let closed = false;
  let ended = false;
  let finished = false;
  let cancelled = false;
  let ctrl!: ReadableStreamDefaultController<Uint8Array>;
  // One idle watchdog per stream rather than a timer and a promise per chunk (a stream has tens
  // to thousands of chunks): it fires at most every `idleMs` and cancels a read that waited longer.
  let reading = false;
  let readStarted = 0;
  let stalled = false;
  let watchdog: ReturnType<typeof setTimeout> | undefined;
  const watch = () => {
    watchdog = undefined;
    if (!reading || ended) return; // the next read re-arms it
    const left = readStarted + idleMs - Date.now();
    if (left > 0) {
      watchdog = setTimeout(watch, left);
      return;
    }
    stalled = true;
    // Cancelling settles the pending read as done; `read` turns that into the stall error.
    reader.cancel().catch(() => {});
  };
  // At the deadline (or when the process ends its streams) a pull under way is woken (its read
  // settles as done) and ends the stream; with none under way (a client that stopped reading) the
  // stream is ended here, so its hold is settled, not renewed for as long as the connection stays
  // open.
  let pulling = false;
  let stopped: "too_long" | "shutdown" | null = null;
  const stop = (kind: "too_long" | "shutdown") => {
    if (stopped || ended) return;
    stopped = kind;
    if (pulling) reader.cancel().catch(() => {});
    else finish(kind).catch(() => {});
  };
  const deadline = limits.maxStreamMs === undefined
    ? undefined
    : setTimeout(() => stop("too_long"), limits.maxStreamMs);
  const live = limits.live;
  const unlive = live?.begin();
  const onShutdown = () => stop("shutdown");
  live?.signal.addEventListener("abort", onShutdown);

  const end = async (kind: TapEnd) => {
    if (ended) return;
    ended = true;
    clearTimeout(watchdog);
    clearTimeout(deadline);
    live?.signal.removeEventListener("abort", onShutdown);
    try {
      await handlers.onEnd(kind);
    } finally {
      unlive?.();
    }
  };

  /** Ends the stream: bills it (`onEnd`), then sends its last events and closes. */
  const finish = async (kind: Exclude<TapEnd, "cancelled">) => {
    if (finished) return;
    finished = true;
    let last = "";
    if (kind === "complete") {
      const tail = decoder.decode() + splitter.rest;
      // After the final usage an unfinished tail gives way to the format's end.
      if (usageSeen && !closed && closing) last = closing.event;
      else if (tail.trim()) last = tail;
      if (!usageSeen && last) {
        observe(last);
        handlers.delivered?.(last);
      }
    } else {
      reader.cancel().catch(() => {});
      if (!usageSeen) {
        last = errorEvent(
          format,
          kind === "too_long"
            ? STREAM_TOO_LONG
            : kind === "shutdown"
            ? STREAM_SHUTDOWN
            : STREAM_FAILURE,
        );
      } else if (!closed && closing) last = closing.event;
    }
    try {
      await end(kind);
    } finally {
      if (!cancelled) {
        if (last) ctrl.enqueue(encoder.encode(last));
        ctrl.close();
      }
    }
  };

  const read = async (): Promise<ReadableStreamReadResult<Uint8Array>> => {
    reading = true;
    readStarted = Date.now();
    watchdog ??= setTimeout(watch, idleMs);
    try {
      const r = await reader.read();
      if (stalled) throw new Error("upstream stalled");
      return r;
    } finally {
      reading = false;
    }
  };

  /** The events of one chunk as sent on: usage answered, observers shown what they watch. */
  const eventsOf = async (text: string): Promise<string> => {
    let out = "";
    const send = (s: string) => {
      out += s;
      if (!usageSeen) handlers.delivered?.(s);
      else if (!closed && closing?.sent.test(s)) closed = true;
    };
    for (const event of splitter.push(text)) {
      if (!usageSeen) observe(event);
      if (usageSeen && handlers.afterFinal && USAGE.test(event)) {
        const data = eventData(event);
        const answer = data && typeof data === "object"
          ? handlers.afterFinal(data as Record<string, unknown>)
          : undefined;
        if (answer !== undefined) {
          if (answer !== null) send(answer + "\n\n");
          continue;
        }
      }
      if (!usageSeen && USAGE.test(event)) {
        const data = eventData(event);
        if (data && typeof data === "object") {
          const answer = await handlers.onUsage(data as Record<string, unknown>, event);
          if (answer !== null && typeof answer === "object") {
            if (answer.interim !== null) send(answer.interim + "\n\n");
            continue;
          }
          if (answer !== undefined) {
            usageSeen = true;
            if (answer !== null) send(answer + "\n\n");
            continue;
          }
        }
      }
      send(event + "\n\n");
    }
    return out;
  };

  return new ReadableStream<Uint8Array>({
    start(c) {
      ctrl = c;
    },
    async pull() {
      if (finished) return;
      // Begun after the process ended its streams (its provider answered late): ended at once.
      if (live?.signal.aborted) stopped ??= "shutdown";
      if (stopped) return await finish(stopped);
      pulling = true;
      try {
        // Loop until something was enqueued: a pull that enqueues nothing is not called again.
        for (;;) {
          let r: ReadableStreamReadResult<Uint8Array>;
          try {
            r = await read();
          } catch (e) {
            // A translation reports its upstream's event over the maximum by this error.
            return await finish(e instanceof SseEventTooLarge ? "event_too_large" : "error");
          }
          if (stopped) return; // ended below
          if (r.done && cancelled) {
            // The client went away while this read waited: `cancel` settles it as such.
            return;
          }
          if (r.done) return await finish("complete");
          const text = decoder.decode(r.value, { stream: true });
          if (
            !usageSeen && splitter.buffered === 0 && text.length <= splitter.maxEvent &&
            !USAGE.test(text) && ENDS_EVENT.test(text) && !observed(text)
          ) {
            // Fast path: whole events without usage, none over the maximum, go out as they came.
            // After the final usage (an event or two) each event is looked at, for the usage
            // repeated and the format's end.
            handlers.delivered?.(text);
            ctrl.enqueue(r.value);
            return;
          }
          let out: string;
          try {
            out = await eventsOf(text);
          } catch (e) {
            if (e instanceof SseEventTooLarge) return await finish("event_too_large");
            throw e;
          }
          if (out) {
            ctrl.enqueue(encoder.encode(out));
            return;
          }
        }
      } finally {
        pulling = false;
        if (stopped) await finish(stopped);
      }
    },
    async cancel() {
      cancelled = true;
      clearTimeout(watchdog);
      clearTimeout(deadline);
      live?.signal.removeEventListener("abort", onShutdown);
      await reader.cancel().catch(() => {});
      await end("cancelled");
    },
  }, { highWaterMark: 0 });
}

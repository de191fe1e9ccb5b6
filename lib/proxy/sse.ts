/** The project's one SSE splitter, the usage tap over proxied streams, and stream translation. */

const EVENT_END = /\r?\n\r?\n/;

/** Splits SSE text into complete events; keeps the incomplete tail for the next push. */
export class SseSplitter {
  #rest = "";

  /** Appends text and returns the events it completed (without their blank-line terminator). */
  push(text: string): string[] {
    const parts = (this.#rest + text).split(EVENT_END);
    this.#rest = parts.pop() ?? "";
    return parts;
  }

  get rest(): string {
    return this.#rest;
  }
}

/** The JSON payload of an event's `data:` lines, or null (comments, `[DONE]`, non-JSON). */
export function eventData(event: string): unknown {
  let data = "";
  for (const line of event.split(/\r?\n/)) {
    if (line.startsWith("data:")) data += (data ? "\n" : "") + line.slice(line[5] === " " ? 6 : 5);
  }
  if (!data || data === "[DONE]") return null;
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

/** How a translated stream writes its events: OpenAI chunks end with `[DONE]`, Anthropic events
 * are named by their `type`. */
export type SseFormat = "openai" | "anthropic";

/**
 * Translates a provider's SSE stream into another format's events (OpenAI chat chunks by
 * default): `onEvent` maps each upstream event (its JSON data and event name) to zero or more
 * events, `onEnd` adds the closing ones. Cancelling the result cancels the upstream.
 */
export function translateSse(
  src: ReadableStream<Uint8Array>,
  onEvent: (data: Record<string, unknown>, name: string) => unknown[],
  onEnd: () => unknown[],
  format: SseFormat = "openai",
): ReadableStream<Uint8Array> {
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  const splitter = new SseSplitter();
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
  return buffered(src).pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, ctrl) {
        const out = handle(splitter.push(decoder.decode(chunk, { stream: true })));
        if (out) ctrl.enqueue(encoder.encode(out));
      },
      flush(ctrl) {
        const out = handle(splitter.push(decoder.decode() + "\n\n")) + emit(onEnd()) +
          (format === "openai" ? "data: [DONE]\n\n" : "");
        ctrl.enqueue(encoder.encode(out));
      },
    }),
  );
}

const USAGE = /"usage"\s*:\s*\{/;
const READ_BYTES = 16 * 1024;

/** The stream's chunks as read by `chunkReader` (for a fetch body: without 64 KiB per chunk). */
function buffered(src: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = chunkReader(src);
  return new ReadableStream<Uint8Array>({
    async pull(ctrl) {
      const r = await reader.read();
      if (r.done) ctrl.close();
      else ctrl.enqueue(r.value);
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
}

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
/**
 * The event that ends a stream whose upstream failed, per format: OpenAI's SDKs throw on a chunk
 * with `error`; Anthropic's read only named events, and throw on `event: error`.
 */
const STREAM_FAILED: Record<SseFormat, string> = {
  openai: `data: ${JSON.stringify({ error: STREAM_FAILURE })}\n\n`,
  anthropic: `event: error\ndata: ${JSON.stringify({ type: "error", error: STREAM_FAILURE })}\n\n`,
};

/**
 * What `onUsage` answers for an event carrying usage. Final usage: the event to send in its place
 * (`data: ...`), or null to drop it; either ends the watch. Usage that is not final: undefined
 * passes the event on unchanged, `{ interim }` sends `interim` in its place (null drops it); the
 * watch goes on (Anthropic's `message_start` carries the input usage and its `message_delta` the
 * final one; some OpenAI-compatible hosts put running usage on every chunk).
 */
export type UsageAnswer = string | null | undefined | { interim: string | null };

export interface TapHandlers {
  /** The format of the error event ending a stream whose upstream failed (default OpenAI's). */
  format?: SseFormat;
  /**
   * Called with each event that carries usage until one is final (see `UsageAnswer`). `event` is
   * the raw event text (with any `event:` line); `produced` decodes what was streamed so far.
   */
  onUsage(
    chunk: Record<string, unknown>,
    event: string,
    produced: () => string,
  ): Promise<UsageAnswer>;
  /**
   * Called once when the stream ends: `complete` after the upstream's last byte, `cancelled` when
   * the client went away, `error` when the upstream failed or stalled. `produced` decodes what was
   * streamed so far, for counting when no usage arrived.
   */
  onEnd(kind: "complete" | "cancelled" | "error", produced: () => string): Promise<void>;
  /**
   * Called with each event that carries usage after the final one, if set: the event to send in
   * its place, null to drop it, undefined to pass it on. Unset, such events pass on unchanged.
   */
  afterFinal?(chunk: Record<string, unknown>): string | null | undefined;
  /**
   * Events worth a look before the final usage though they carry none (a web search the
   * provider completed): each whose text matches `pattern` is parsed and handed to `see`, and
   * passes on unchanged.
   */
  observe?: Observer;
}

/** See `TapHandlers.observe`. */
export interface Observer {
  pattern: RegExp;
  see(chunk: Record<string, unknown>): void;
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

/**
 * Whether `sse` (a stream's text) holds a `FailureEvent`. Meant for the end of a stream that
 * went without final usage, so that streams going as usual are not searched chunk by chunk.
 */
export function holdsFailure(sse: string, failure: FailureEvent): boolean {
  if (!failure.pattern.test(sse)) return false;
  for (const event of new SseSplitter().push(sse + "\n\n")) {
    if (!failure.pattern.test(event)) continue;
    const data = eventData(event);
    if (
      data && typeof data === "object" &&
      failure.is(data as Record<string, unknown>, eventName(event))
    ) {
      return true;
    }
  }
  return false;
}

/**
 * Passes an SSE stream (OpenAI chat, Anthropic Messages or OpenAI Responses) through chunk by chunk. Bytes go out untouched unless a chunk
 * holds the usage event (or an event split across chunks), which is handed to `onUsage`. A read
 * that waits longer than `idleMs` ends the stream as an upstream error.
 */
export function tapStream(
  src: ReadableStream<Uint8Array>,
  handlers: TapHandlers,
  idleMs: number,
): ReadableStream<Uint8Array> {
  const reader = chunkReader(src);
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  const splitter = new SseSplitter();
  const seen: Uint8Array[] = [];
  let usageSeen = false;
  let ended = false;
  let cancelled = false;
  const produced = () => {
    const d = new TextDecoder();
    return seen.map((c) => d.decode(c, { stream: true })).join("") + d.decode();
  };
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
  const end = async (kind: "complete" | "cancelled" | "error") => {
    if (ended) return;
    ended = true;
    clearTimeout(watchdog);
    await handlers.onEnd(kind, produced);
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

  return new ReadableStream<Uint8Array>({
    async pull(ctrl) {
      // Loop until something was enqueued: a pull that enqueues nothing is not called again.
      for (;;) {
        let r: ReadableStreamReadResult<Uint8Array>;
        try {
          r = await read();
        } catch {
          reader.cancel().catch(() => {});
          await end("error");
          ctrl.enqueue(encoder.encode(STREAM_FAILED[handlers.format ?? "openai"]));
          ctrl.close();
          return;
        }
        if (r.done && cancelled) {
          // The client went away while this read waited: `cancel` settles it as such.
          return;
        }
        if (r.done) {
          const tail = decoder.decode() + splitter.rest;
          if (tail.trim()) ctrl.enqueue(encoder.encode(tail));
          await end("complete");
          ctrl.close();
          return;
        }
        seen.push(r.value);
        const text = decoder.decode(r.value, { stream: true });
        const watching = !usageSeen || handlers.afterFinal !== undefined;
        const observe = usageSeen ? undefined : handlers.observe;
        if (
          !splitter.rest && (!watching || (
            !USAGE.test(text) && !observe?.pattern.test(text) && /\n\n$|\r\n\r\n$/.test(text)
          ))
        ) {
          // Fast path: whole events without usage (or anything after it) go out as they came.
          ctrl.enqueue(r.value);
          return;
        }
        let out = "";
        for (const event of splitter.push(text)) {
          if (observe?.pattern.test(event)) {
            const data = eventData(event);
            if (data && typeof data === "object") observe.see(data as Record<string, unknown>);
          }
          if (usageSeen && handlers.afterFinal && USAGE.test(event)) {
            const data = eventData(event);
            const answer = data && typeof data === "object"
              ? handlers.afterFinal(data as Record<string, unknown>)
              : undefined;
            if (answer !== undefined) {
              if (answer !== null) out += answer + "\n\n";
              continue;
            }
          }
          if (!usageSeen && USAGE.test(event)) {
            const data = eventData(event);
            if (data && typeof data === "object") {
              const answer = await handlers.onUsage(
                data as Record<string, unknown>,
                event,
                produced,
              );
              if (answer !== null && typeof answer === "object") {
                if (answer.interim !== null) out += answer.interim + "\n\n";
                continue;
              }
              if (answer !== undefined) {
                usageSeen = true;
                if (answer !== null) out += answer + "\n\n";
                continue;
              }
            }
          }
          out += event + "\n\n";
        }
        if (out) {
          ctrl.enqueue(encoder.encode(out));
          return;
        }
      }
    },
    async cancel() {
      cancelled = true;
      clearTimeout(watchdog);
      await reader.cancel().catch(() => {});
      await end("cancelled");
    },
  }, { highWaterMark: 0 });
}

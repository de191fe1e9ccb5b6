/**
 * The billing tap over a proxied stream: bytes pass through to the client as they came, except the
 * events its format watches, which are parsed and answered one by one (see `TapHandlers`); the
 * stream is bounded in time between reads, in all, and per event.
 */
import {
  chunkReader,
  eventData,
  eventName,
  SseEventTooLarge,
  SseSplitter,
  STREAM_FAILURE,
  STREAM_SHUTDOWN,
  STREAM_TOO_LONG,
} from "../sse.ts";
import type { LiveStreams } from "./live_streams.ts";

/** Whether a chunk's text ends with an event's end. */
const ENDS_EVENT = /\n\n$|\r\n\r\n$/;

/**
 * How a client's stream ends, by its format: the closing event it gets when its upstream breaks or
 * ends after the final usage without its own (and how to tell that one was sent), and the event
 * that ends a failed stream (for an SDK to throw on).
 */
export interface StreamEnding {
  closing: { event: string; sent: RegExp } | null;
  error(error: typeof STREAM_FAILURE): string;
}

/** One SSE event: its JSON data, its `event:` name ("" without one) and its text. */
export interface SseEvent {
  data: Record<string, unknown>;
  name: string;
  text: string;
}

/**
 * What to do with a watched event: `out` replaces it (null drops it; unset, it passes as it came);
 * `final` says that the final usage is in (the tap then stops handing `delivered` what is sent and
 * ends the stream with the format's closing event, not its error event).
 */
export interface TapAnswer {
  out?: string | null;
  final?: boolean;
}

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
  /** How the client's stream ends (its format's events). */
  ending: StreamEnding;
  /**
   * The events to parse and hand to `onEvent` (a pattern of their text: the usage, a failure, a
   * web search done); every other event passes untouched, most chunks without being decoded.
   */
  watch: RegExp;
  /**
   * Called with each watched event, in order, before and after the final usage. `last` is true for
   * an unterminated event at the upstream's end: it passes as it came whatever the answer.
   */
  onEvent(event: SseEvent, last: boolean): TapAnswer | Promise<TapAnswer>;
  /** Called once when the stream ends, before the client sees its end. */
  onEnd(kind: TapEnd): Promise<void>;
  /**
   * Called with the text sent to the client, whole events at a time, until the final usage: what
   * a stream that ends without one is billed by.
   */
  delivered?(text: string): void;
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
 * chunk. Bytes go out untouched unless a chunk holds a watched event (or an event split across
 * chunks), which is handed to `onEvent`. Nothing is kept but an unfinished event: what was sent
 * goes to `delivered`. A stream that fails, stalls past `idleMs`, sends an event over the
 * maximum, runs past `maxStreamMs` or is ended by `live` is ended with the format's error event;
 * once the final usage has come, with the format's closing event instead (billed once, nothing for
 * an SDK to throw on).
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
  const { ending, watch } = handlers;
  const closing = ending.closing;
  /** Hands a watched event to `onEvent`; null for an event whose data is not a JSON object. */
  const answer = (event: string, last: boolean) => {
    const data = eventData(event);
    if (!data || typeof data !== "object") return null;
    return handlers.onEvent(
      { data: data as Record<string, unknown>, name: eventName(event), text: event },
      last,
    );
  };
  /** Whether the final usage is in (`TapAnswer.final`). */
  let final = false;
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
  const checkIdle = () => {
    watchdog = undefined;
    if (!reading || ended) return; // the next read re-arms it
    const left = readStarted + idleMs - Date.now();
    if (left > 0) {
      watchdog = setTimeout(checkIdle, left);
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
      if (final && !closed && closing) last = closing.event;
      else if (tail.trim()) last = tail;
      if (!final && last) {
        if (watch.test(last)) await answer(last, true);
        handlers.delivered?.(last);
      }
    } else {
      reader.cancel().catch(() => {});
      if (!final) {
        last = ending.error(
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
    watchdog ??= setTimeout(checkIdle, idleMs);
    try {
      const r = await reader.read();
      if (stalled) throw new Error("upstream stalled");
      return r;
    } finally {
      reading = false;
    }
  };

  /** The events of one chunk as sent on: watched events answered. */
  const eventsOf = async (text: string): Promise<string> => {
    let out = "";
    const send = (s: string) => {
      out += s;
      if (!final) handlers.delivered?.(s);
      else if (!closed && closing?.sent.test(s)) closed = true;
    };
    for (const event of splitter.push(text)) {
      const a = watch.test(event) ? await answer(event, false) : null;
      if (a?.final) final = true;
      if (a && a.out !== undefined) {
        if (a.out !== null) send(a.out + "\n\n");
        continue;
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
            !final && splitter.buffered === 0 && text.length <= splitter.maxEvent &&
            ENDS_EVENT.test(text) && !watch.test(text)
          ) {
            // Fast path: whole events none of which is watched, none over the maximum, go out as
            // they came. After the final usage (an event or two) each event is looked at, for the
            // usage repeated and the format's closing event.
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

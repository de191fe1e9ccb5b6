/** The project's one SSE splitter and the usage tap over OpenAI-format chat streams. */

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

const USAGE = /"usage"\s*:\s*\{/;
const STREAM_FAILED = `data: ${
  JSON.stringify({
    error: { message: "The provider's stream failed", type: "api_error", code: "upstream_error" },
  })
}\n\n`;

export interface TapHandlers {
  /**
   * Called once with the chunk that carries the stream's usage; returns the event to send in its
   * place (`data: ...`), or null to drop it.
   */
  onUsage(chunk: Record<string, unknown>): Promise<string | null>;
  /**
   * Called once when the stream ends: `complete` after the upstream's last byte, `cancelled` when
   * the client went away, `error` when the upstream failed or stalled. `produced` decodes what was
   * streamed so far, for counting when no usage arrived.
   */
  onEnd(kind: "complete" | "cancelled" | "error", produced: () => string): Promise<void>;
}

/**
 * Passes an OpenAI-format SSE stream through chunk by chunk. Bytes go out untouched unless a chunk
 * holds the usage event (or an event split across chunks), which is handed to `onUsage`. A read
 * that waits longer than `idleMs` ends the stream as an upstream error.
 */
export function tapStream(
  src: ReadableStream<Uint8Array>,
  handlers: TapHandlers,
  idleMs: number,
): ReadableStream<Uint8Array> {
  const reader = src.getReader();
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  const splitter = new SseSplitter();
  const seen: Uint8Array[] = [];
  let usageSeen = false;
  let ended = false;
  const produced = () => {
    const d = new TextDecoder();
    return seen.map((c) => d.decode(c, { stream: true })).join("") + d.decode();
  };
  const end = async (kind: "complete" | "cancelled" | "error") => {
    if (ended) return;
    ended = true;
    await handlers.onEnd(kind, produced);
  };

  const read = () =>
    new Promise<ReadableStreamReadResult<Uint8Array>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("upstream stalled")), idleMs);
      reader.read().then(resolve, reject).finally(() => clearTimeout(timer));
    });

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
          ctrl.enqueue(encoder.encode(STREAM_FAILED));
          ctrl.close();
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
        if (!splitter.rest && (usageSeen || (!USAGE.test(text) && /\n\n$|\r\n\r\n$/.test(text)))) {
          // Fast path: whole events without usage (or anything after it) go out as they came.
          ctrl.enqueue(r.value);
          return;
        }
        let out = "";
        for (const event of splitter.push(text)) {
          if (!usageSeen && USAGE.test(event)) {
            const data = eventData(event);
            if (data && typeof data === "object") {
              usageSeen = true;
              const replacement = await handlers.onUsage(data as Record<string, unknown>);
              if (replacement !== null) out += replacement + "\n\n";
              continue;
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
      await reader.cancel().catch(() => {});
      await end("cancelled");
    },
  }, { highWaterMark: 0 });
}

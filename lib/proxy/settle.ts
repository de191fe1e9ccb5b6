/**
 * The pipeline's last stage: a JSON reply settled as it is read, or a stream billed as it passes
 * (its format's reducer deciding when the usage is final).
 */
import { ApiError } from "../errors.ts";
import type { Config } from "../config.ts";
import { UsageReader, withSearches } from "../providers/usage.ts";
import type { NormalizedUsage } from "../pricing.ts";
import {
  type BilledStream,
  type InferenceRequest,
  type Step,
  withCost,
} from "../formats/format.ts";
import type { Billed, MeteredRequest } from "./metered.ts";
import { readUpstreamJson, type UpstreamReply } from "./upstream.ts";
import { type TapAnswer, type TapEnd, type TapHandlers, tapStream } from "./tap.ts";
import {
  countReplyOutput,
  countStreamedOutput,
  type TokenCounter,
  tokenCounter,
} from "./tokens.ts";
import { utf8Bytes } from "../tokenizer.ts";
import type { LiveStreams } from "./live_streams.ts";
import { FINISH, noteFinish, streamHandlers, streamWatch } from "../telemetry/inference.ts";

/**
 * Reads a JSON reply and settles it; the body's `usage` (in the request's shape) shows the
 * figures billed and gains the cost. Any failure releases (the shutdown deadline, `stop`, too:
 * nothing reached the client). A reply without usage is counted by the router, as a stream's is:
 * the request's prompt as the router counts it (`Prompt.count`, with the web searches the reply
 * reported) and the reply's output, both with the model's `tokenCounter`.
 */
export async function settleJson(
  m: MeteredRequest,
  req: InferenceRequest,
  reply: UpstreamReply,
  limits: Pick<Config, "upstreamTimeoutMs" | "maxUpstreamBodyBytes">,
  stop?: AbortSignal,
): Promise<Record<string, unknown>> {
  let json: unknown;
  try {
    json = await readUpstreamJson(
      reply,
      limits.upstreamTimeoutMs,
      limits.maxUpstreamBodyBytes,
      stop,
    );
  } catch (e) {
    const error = e instanceof ApiError ? e : null;
    await m.release(error?.status ?? 502, error?.code ?? "upstream_error");
    throw e;
  }
  const model = m.model;
  const reader = new UsageReader();
  const parsed = req.reply(model, json, reader);
  const body = parsed.body;
  let usage = parsed.usage;
  m.readAnomalies(reader.anomalies);
  const missing = usage.prompt === 0 && usage.completion === 0;
  if (missing) {
    // Searches the reply did report are still billed (they are not tokens).
    const searches = usage.webSearches ?? 0;
    const count = await tokenCounter(model);
    usage = withSearches(
      { ...req.prompt.count(model, count, searches), completion: countReplyOutput(body, count) },
      searches,
    );
    m.deps.log("warn", "reply without usage; counted by the router", {
      request_id: m.requestId,
      prompt_tokens: usage.prompt,
      completion_tokens: usage.completion,
    });
  }
  const billed = await m.settle(usage, { errorCode: missing ? "usage_missing" : null });
  noteFinish(body);
  body.usage = withCost(body.usage, billed, req.shape);
  return body;
}

/** Characters of a stream's delivered text kept before they are counted and let go. */
const KEEP_CHARS = 256 * 1024;

/**
 * The output a stream delivered, for billing one that ends without its final usage: its text,
 * counted (`countStreamedOutput`) and let go in pieces of whole events, so that however long the
 * stream runs it keeps at most about KEEP_CHARS of it.
 */
class StreamedOutput {
  #kept: string[] = [];
  #chars = 0;
  #counted = 0;
  /** How pieces are counted once let go: the model's tokenizer when loaded, else UTF-8 bytes. */
  counter: TokenCounter = utf8Bytes;

  add(text: string) {
    this.#kept.push(text);
    this.#chars += text.length;
    if (this.#chars < KEEP_CHARS) return;
    this.#counted = this.count(this.counter);
    this.#kept = [];
    this.#chars = 0;
  }

  count(count: TokenCounter): number {
    return this.#counted + (this.#chars ? countStreamedOutput(this.#kept.join(""), count) : 0);
  }
}

/** The audit reason of a stream that ended without final usage, by how it ended. */
const END_REASON: Record<TapEnd, string> = {
  complete: "usage_missing",
  cancelled: "client_disconnected",
  error: "upstream_stream_failed",
  event_too_large: "upstream_stream_failed",
  too_long: "stream_too_long",
  shutdown: "shutting_down",
};

/** The limit that ended a stream early, as logged. */
const LIMIT_OF: Partial<Record<TapEnd, string>> = {
  too_long: "MAX_STREAM_MS",
  event_too_large: "MAX_SSE_EVENT_BYTES",
  shutdown: "SHUTDOWN_GRACE_MS",
};

/**
 * Bills a proxied stream as it passes to the client. Its format's reducer is shown each watched
 * event and alone decides when the usage is final: that usage is settled, and the event sent once
 * it is (with the charge, where it shows one). A usage that is not final yet (a provider's running
 * count) is kept, the latest replacing the one before. When the stream ends without a final usage,
 * the latest such usage is settled (it is the provider's own count); without one the router
 * counts what was streamed with the model's `tokenCounter` and settles that on top of the
 * format's `unfinished` usage, or releases the hold if the upstream failed before producing
 * anything. Either is audited with the reason (`usage_missing`, `client_disconnected`,
 * `upstream_stream_failed`, `stream_too_long`; the third also after the provider reported a
 * failure). The stream is bounded by `UPSTREAM_TIMEOUT_MS` between chunks, `MAX_SSE_EVENT_BYTES`
 * per event and `MAX_STREAM_MS` in all, and ended among the process's `live` streams at the
 * shutdown deadline; ending it early sends the format's error event (or its closing event once the
 * final usage is in).
 */
export function billStream<S>(
  m: MeteredRequest,
  stream: BilledStream<S>,
  limits: Pick<Config, "upstreamTimeoutMs" | "maxStreamMs" | "maxSseEventBytes">,
  live?: LiveStreams,
): ReadableStream<Uint8Array> {
  const { log } = m.deps;
  m.streamed();
  const { reducer } = stream;
  let state = reducer.init;
  let settled = false;
  let billed: Billed | null = null;
  let latest: NormalizedUsage | null = null;
  let failed = false;
  const output = new StreamedOutput();
  // The model's tokenizer, loaded once per process: pieces counted before it is ready are counted
  // by their UTF-8 bytes, never fewer than its tokens.
  const counter = tokenCounter(m.model);
  counter.then((count) => output.counter = count, () => {});
  /** The usage the router counts: the input side, and the output streamed unless reported. */
  const counted = async () => {
    const count = await counter;
    const input = stream.unfinished(state, count);
    if (input.completion > 0) return input;
    return { ...input, completion: output.count(count), reasoning: 0 };
  };
  // A final usage of no tokens at all is no count (a provider left it empty): as in a reply
  // without usage, the latest interim usage or the router's own count is settled instead.
  const settle = async (u: NormalizedUsage, errorCode?: string) => {
    settled = true;
    if (u.prompt !== 0 || u.completion !== 0) return await m.settle(u, { errorCode });
    const usage = withSearches(latest ?? await counted(), u.webSearches ?? 0);
    log("warn", "stream's final usage is empty; counted by the router", {
      request_id: m.requestId,
      prompt_tokens: usage.prompt,
      completion_tokens: usage.completion,
    });
    return await m.settle(usage, { errorCode: errorCode ?? "usage_missing" });
  };
  /**
   * The settlement failed (a bug, or a commit that could not be made): the hold is not left renewed
   * for the process's life with no audit row, but released unbilled and audited (or, if that fails
   * too, no longer this process's: the sweeper releases it).
   */
  const fail = async (e: unknown) => {
    log("error", "stream's settlement failed; its hold released, nothing charged", {
      request_id: m.requestId,
      error: e instanceof Error ? e.name : "unknown",
    });
    await m.release(500, "internal_error").catch(() => {});
    m.drop();
  };
  /** What the client gets for a step's event (one showing the charge: once there is one). */
  const render = (out: Step<S>["out"]) =>
    typeof out === "function" ? (billed ? out(billed) : undefined) : out;
  /** The event's step taken: the state moved on, the usage kept, settled when final. */
  const onEvent = async (step: Step<S>): Promise<TapAnswer> => {
    state = step.state;
    if (settled) return { out: render(step.out) };
    if (!step.final) {
      failed ||= step.failed === true;
      if (step.usage) latest = step.usage;
      return { out: render(step.out) };
    }
    try {
      billed = await settle(step.usage!, step.failed ? "upstream_stream_failed" : undefined);
    } catch (e) {
      await fail(e);
      throw e;
    }
    m.readAnomalies(step.anomalies ?? []);
    return { final: true, out: render(step.out) };
  };
  // Its time to first token and finish reasons, on the request's span and metrics.
  const seen = streamWatch(m.model, m.deps.audit.startedAt, m.deps.audit.now);
  const handlers: TapHandlers = {
    ending: stream.ending,
    // The format's events, and those that carry a finish reason (at most a few per stream).
    watch: new RegExp(`${stream.watch.source}|${FINISH.source}`),
    delivered: (text) => {
      seen.delivered();
      output.add(text);
    },
    onEvent(event, last) {
      if (FINISH.test(event.text)) seen.finish(event.data);
      if (!stream.watch.test(event.text)) return {};
      const step = reducer.step(state, event);
      if (!last) return onEvent(step);
      // An unterminated event at the end passes as it came: what it tells is kept, no more.
      state = step.state;
      failed ||= !settled && step.failed === true;
      return {};
    },
    async onEnd(kind) {
      try {
        await end(kind);
      } catch (e) {
        await fail(e);
      }
    },
  };
  /** The stream's end settled: its final usage if it came, else what the stream tells. */
  async function end(kind: TapEnd) {
    const limit = LIMIT_OF[kind];
    if (limit) {
      log("warn", "stream ended at a limit", {
        request_id: m.requestId,
        limit,
        usage_settled: settled,
      });
    }
    if (settled) return;
    const errorCode = failed ? "upstream_stream_failed" : END_REASON[kind];
    if (latest) {
      await m.settle(latest, { errorCode });
      log("warn", "stream ended without final usage; its latest usage settled", {
        request_id: m.requestId,
        reason: errorCode,
        prompt_tokens: latest.prompt,
        completion_tokens: latest.completion,
      });
      return;
    }
    const usage = await counted();
    // Searches the provider already ran are billed even when no output came before the failure.
    const broke = kind === "error" || kind === "event_too_large";
    if (broke && usage.completion === 0 && !usage.webSearches) {
      await m.release(502, "upstream_error");
      return;
    }
    const billed = await m.settle(usage, { errorCode });
    log("warn", "stream ended without usage; counted by the router", {
      request_id: m.requestId,
      reason: errorCode,
      prompt_tokens: billed.usage.prompt,
      completion_tokens: billed.usage.completion,
      web_searches: billed.usage.webSearches ?? 0,
    });
  }
  // Bound to the request's trace; ended among the others at the shutdown deadline (`live`).
  return tapStream(stream.body, streamHandlers(handlers), {
    idleMs: limits.upstreamTimeoutMs,
    maxStreamMs: limits.maxStreamMs,
    maxEventBytes: limits.maxSseEventBytes,
    live,
  });
}

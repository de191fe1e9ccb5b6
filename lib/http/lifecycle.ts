/**
 * The server's life as a load balancer sees it: starting (KV opened, migrations running), serving,
 * then draining after SIGTERM. `fetch` is the handler given to `Deno.serve` from the start: it
 * answers `/readyz` itself (200 only while serving), keeps `/healthz` answering in every state, and
 * counts the requests in flight until their response (a stream's last byte) is sent.
 */
import { errorBody } from "./errors.ts";
import { pause } from "../kv/util.ts";

export type LifecycleState = "starting" | "serving" | "draining";

// After the streams still running at the deadline are told to end, how long they get to settle.
const END_STREAMS_WAIT_MS = 5_000;

/** The path of a request URL, without parsing all of it (every request passes here). */
function pathOf(url: string): string {
  const start = url.indexOf("/", url.indexOf("//") + 2);
  if (start < 0) return "/";
  const q = url.indexOf("?", start);
  return q < 0 ? url.slice(start) : url.slice(start, q);
}

const json = (body: unknown, status: number, headers: Record<string, string> = {}) =>
  Response.json(body, { status, headers });

export class Lifecycle {
  #state: LifecycleState = "starting";
  #handler: Deno.ServeHandler | null = null;
  #inFlight = 0;
  #idle: (() => void)[] = [];

  get state(): LifecycleState {
    return this.#state;
  }

  /** Requests being answered: their response is not yet sent in full. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Starts serving with `handler`: `/readyz` answers 200 from now on. */
  ready(handler: Deno.ServeHandler) {
    if (this.#state !== "starting") return;
    this.#handler = handler;
    this.#state = "serving";
  }

  /** The handler for `Deno.serve`. */
  readonly fetch = async (req: Request, info: Deno.ServeHandlerInfo): Promise<Response> => {
    const path = pathOf(req.url);
    if (path === "/readyz") {
      return this.#state === "serving"
        ? json({ ok: true }, 200)
        : json({ ok: false, state: this.#state }, 503, { "retry-after": "1" });
    }
    if (this.#state !== "serving" || this.#handler === null) {
      // Liveness holds in every state; anything else is refused, retryable, with nothing done.
      if (path === "/healthz") return json({ ok: true }, 200);
      // Metrics are read while draining too: how the streams in flight end is worth watching.
      if (path === "/metrics" && this.#handler) return await this.#handler(req, info);
      return this.#state === "starting"
        ? json(errorBody(503, "starting", "The router is starting; retry shortly"), 503, {
          "retry-after": "1",
        })
        : json(errorBody(503, "shutting_down", "The router is shutting down; retry"), 503, {
          "retry-after": "1",
          connection: "close",
        });
    }
    this.#inFlight++;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      if (--this.#inFlight === 0) { for (const wake of this.#idle.splice(0)) wake(); }
    };
    // Settles once the whole response, a stream's last byte included, is sent or the client left.
    // A runtime without it (an older Deno) counts the request until its handler answers.
    const completed = info.completed as Promise<void> | undefined;
    completed?.then(finish, finish);
    try {
      const res = await this.#handler(req, info);
      if (!completed) finish();
      return res;
    } catch (e) {
      finish();
      throw e;
    }
  };

  /**
   * Drains: from now on `/readyz` answers 503 and new requests a retryable 503; resolves once every
   * request in flight has been answered, or `graceMs` has passed. At that deadline
   * `endStreamsAtDeadline` (when given) is called to end the streams still running (and to wait at
   * most the time it is given for them to be billed), which then get as long again to reach their
   * clients. Resolves with how many requests are still running.
   */
  async drain(
    graceMs: number,
    endStreamsAtDeadline?: (waitMs: number) => Promise<void>,
  ): Promise<{ left: number }> {
    this.#state = "draining";
    await this.#untilIdle(graceMs);
    if (this.#inFlight > 0 && endStreamsAtDeadline) {
      await endStreamsAtDeadline(END_STREAMS_WAIT_MS);
      await this.#untilIdle(END_STREAMS_WAIT_MS);
    }
    return { left: this.#inFlight };
  }

  async #untilIdle(ms: number) {
    if (this.#inFlight === 0) return;
    const timer = new AbortController();
    const idle = new Promise<void>((resolve) => this.#idle.push(resolve));
    await Promise.race([idle, pause(ms, timer.signal)]);
    timer.abort();
  }
}

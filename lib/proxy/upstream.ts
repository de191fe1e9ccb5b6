import { ApiError } from "../errors.ts";
import { nestsWithin } from "../json.ts";
import type { UpstreamCall } from "../providers/types.ts";

/** An upstream reply that arrived, with a way to abort its body. */
export interface UpstreamReply {
  res: Response;
  abort: () => void;
}

/**
 * The 503 of a request whose provider had not answered by the shutdown deadline: nothing reached
 * the client, so nothing is billed; retried, it reaches another process.
 */
export const shuttingDown = () =>
  new ApiError(
    503,
    "shutting_down",
    "The router is restarting before the provider answered; retry",
    {
      "retry-after": "1",
    },
  );

/**
 * Calls `onStop` when `stop` aborts (at once if it has); the function returned stops listening.
 */
function whenStopped(stop: AbortSignal | undefined, onStop: () => void): () => void {
  if (!stop) return () => {};
  if (stop.aborted) {
    onStop();
    return () => {};
  }
  stop.addEventListener("abort", onStop, { once: true });
  return () => stop.removeEventListener("abort", onStop);
}

/**
 * Sends a request to a provider. Waits at most `timeoutMs` for the reply's headers; connection
 * failures are 502 and time-outs 504; `stop` (the shutdown deadline) aborts the wait with a 503
 * `shutting_down`. Provider error replies map to the API's errors without echoing their body (it
 * may contain prompt text); a success without a body is a 502 too.
 */
export async function callUpstream(
  fetchFn: typeof fetch,
  call: UpstreamCall,
  timeoutMs: number,
  stop?: AbortSignal,
): Promise<UpstreamReply> {
  const ac = new AbortController();
  let ended: "timeout" | "stop" | null = null;
  const end = (why: "timeout" | "stop") => () => {
    ended ??= why;
    ac.abort();
  };
  const timer = setTimeout(end("timeout"), timeoutMs);
  const unlisten = whenStopped(stop, end("stop"));
  let res: Response;
  try {
    res = await fetchFn(call.url, { ...call.init, signal: ac.signal });
  } catch {
    if (ended === "stop") throw shuttingDown();
    throw ended === "timeout"
      ? new ApiError(504, "upstream_timeout", "The provider did not answer in time")
      : new ApiError(502, "upstream_error", "The provider could not be reached");
  } finally {
    clearTimeout(timer);
    unlisten();
  }
  if (!res.ok) {
    await res.body?.cancel().catch(() => {});
    throw upstreamError(res);
  }
  // A success without a body (204) is no reply: a failure to retry or fall back from.
  if (!res.body) throw new ApiError(502, "upstream_error", "The provider's reply has no body");
  return { res, abort: () => ac.abort() };
}

/** Maps a provider's error status to the router's error, keeping its Retry-After. */
export function upstreamError(res: Response): ApiError {
  const s = res.status;
  if (s === 429) {
    const retry = res.headers.get("retry-after");
    return new ApiError(
      429,
      "upstream_rate_limited",
      "The provider is rate limiting requests; retry later",
      retry ? { "retry-after": retry } : {},
    );
  }
  if (s === 400 || s === 404 || s === 413 || s === 422) {
    return new ApiError(
      400,
      "upstream_invalid_request",
      `The provider rejected the request as invalid (HTTP ${s})`,
    );
  }
  if (s === 408 || s === 504) {
    return new ApiError(504, "upstream_timeout", `The provider timed out (HTTP ${s})`);
  }
  return new ApiError(502, "upstream_error", `The provider failed (HTTP ${s})`);
}

/**
 * Reads a JSON reply body within the time left and at most `maxBytes` long (counted as it is
 * read: a Content-Length is only believed when it already says too much). A stall, a longer body,
 * bad JSON or JSON nested past `MAX_JSON_DEPTH` (which the router's walks over a reply could not
 * take) is an upstream failure; reading stops at the limit. `stop` (the shutdown deadline) aborts
 * the read with a 503 `shutting_down`.
 */
export async function readUpstreamJson(
  reply: UpstreamReply,
  timeoutMs: number,
  maxBytes: number,
  stop?: AbortSignal,
): Promise<unknown> {
  const timer = setTimeout(reply.abort, timeoutMs);
  let stopped = false;
  const unlisten = whenStopped(stop, () => {
    stopped = true;
    reply.abort();
  });
  try {
    const bytes = await readAtMost(reply.res, maxBytes);
    if (!bytes) {
      reply.abort();
      throw new ApiError(502, "upstream_error", "The provider's reply is too large");
    }
    const text = new TextDecoder().decode(bytes);
    if (!nestsWithin(text)) {
      throw new ApiError(502, "upstream_error", "The provider's reply nests too deep");
    }
    return JSON.parse(text);
  } catch (e) {
    if (stopped) throw shuttingDown();
    if (e instanceof ApiError) throw e;
    throw new ApiError(502, "upstream_error", "The provider's reply could not be read");
  } finally {
    clearTimeout(timer);
    unlisten();
  }
}

/** A body's bytes, or null (its stream cancelled) once it is over `maxBytes`. */
async function readAtMost(res: Response, maxBytes: number): Promise<Uint8Array | null> {
  if (Number(res.headers.get("content-length")) > maxBytes) {
    await res.body?.cancel().catch(() => {});
    return null;
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = res.body?.getReader();
  for (;;) {
    const r = await reader?.read();
    if (!r || r.done) break;
    size += r.value.length;
    if (size > maxBytes) {
      await reader!.cancel().catch(() => {});
      return null;
    }
    chunks.push(r.value);
  }
  if (chunks.length === 1) return chunks[0];
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

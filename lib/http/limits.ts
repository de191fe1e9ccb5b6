/**
 * Limits every request meets before a route reads it: the length of its URL, and the size and
 * arrival time of its body, by the kind of route (API, Stripe webhook, pages). A declared
 * Content-Length over the limit is refused at once; every other body is handed to the route as a
 * stream that counts its bytes as they arrive. Bodies are never read through the runtime's
 * whole-body read (`Request.text()` on the server's own body), which reserves the declared
 * Content-Length before a byte has come.
 */
import { createMiddleware } from "hono/factory";
import type { AppEnv } from "../services.ts";
import { ApiError, CLIENT_CLOSED } from "../errors.ts";

/**
 * The longest request target (path and query) the router reads. The HTTP server in Deno refuses
 * a request line of 64 KiB or more itself, with a bare 400, before any router code runs.
 */
export const MAX_URL_BYTES = 16 * 1024;

const WEBHOOK_PATH = "/v1/stripe/webhook";

/** The body limits, each a number of bytes, and how long a body may take to arrive. */
export interface BodyLimits {
  /** `/v1/*` (MAX_BODY_BYTES). */
  apiBytes: number;
  /** The Stripe webhook (WEBHOOK_BODY_BYTES). */
  webhookBytes: number;
  /** Pages' forms and every other path (PAGE_BODY_BYTES). */
  pageBytes: number;
  /** From the first read of a body to its last byte (BODY_TIMEOUT_MS). */
  timeoutMs: number;
}

/** The body limit of a path: the webhook's own, the API's, or the pages' (everything else). */
function bodyLimitOf(path: string, limits: BodyLimits): number {
  if (path === WEBHOOK_PATH) return limits.webhookBytes;
  return path.startsWith("/v1/") ? limits.apiBytes : limits.pageBytes;
}

/** The length of a URL's path and query (its request target). */
function targetLength(url: string): number {
  const start = url.indexOf("/", url.indexOf("//") + 2);
  return start < 0 ? 0 : url.length - start;
}

/** What a body's deadline rejects with: told apart from the read's own failures. */
const EXPIRED = Symbol("expired");

/**
 * The most of a body left unread that the server may drain to keep the connection: a longer one
 * (or one of unknown length) closes the connection after the answer rather than be waited for.
 */
const DRAIN_BYTES = 64 * 1024;

const CLOSE = { connection: "close" };

const tooLarge = (bytes: number, close: boolean) =>
  new ApiError(
    413,
    "request_too_large",
    `The request body is over ${bytes} bytes`,
    close ? CLOSE : {},
  );

/**
 * A request body read as a stream, at most `bytes` of it and within `timeoutMs` of the first
 * read. Its stream fails with the ApiError the request is answered with: 413 past the limit, 408
 * past the deadline, 499 when the client's connection broke (closed, reset or malformed).
 */
class LimitedBody {
  readonly stream: ReadableStream<Uint8Array>;
  /** Whether the body was read to its end. */
  complete = false;
  /** Whether reading failed: over the limit, past the deadline, or the connection broke. */
  failed = false;
  /** Whether the client's connection broke while the body was read. */
  disconnected = false;

  constructor(source: ReadableStream<Uint8Array>, bytes: number, timeoutMs: number) {
    const reader = source.getReader();
    let size = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let expired: Promise<never> | undefined;
    const fail = (controller: ReadableStreamDefaultController<Uint8Array>, error: ApiError) => {
      this.failed = true;
      clearTimeout(timer);
      reader.cancel().catch(() => {});
      controller.error(error);
    };
    this.stream = new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        // The deadline starts with the first read: a route that never reads sets no timer.
        expired ??= new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(EXPIRED), timeoutMs);
        });
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await Promise.race([reader.read(), expired]);
        } catch (e) {
          if (e === EXPIRED) {
            return fail(
              controller,
              new ApiError(
                408,
                "request_timeout",
                `The request body did not arrive within ${timeoutMs} ms`,
                CLOSE,
              ),
            );
          }
          this.disconnected = true;
          return fail(
            controller,
            new ApiError(
              CLIENT_CLOSED,
              "client_disconnected",
              "The client closed the connection during the upload",
            ),
          );
        }
        if (chunk.done) {
          clearTimeout(timer);
          this.complete = true;
          return controller.close();
        }
        size += chunk.value.byteLength;
        if (size > bytes) return fail(controller, tooLarge(bytes, true));
        controller.enqueue(chunk.value);
      },
      cancel: (reason) => {
        clearTimeout(timer);
        return reader.cancel(reason);
      },
    }, { highWaterMark: 0 });
  }
}

/** Whether a request carries a body: chunked, or a Content-Length above zero. */
function hasBody(req: Request): boolean {
  if (req.headers.has("transfer-encoding")) return req.body !== null;
  const declared = req.headers.get("content-length");
  return declared !== null && declared !== "0" && req.body !== null;
}

/**
 * The first middleware: a URL over `MAX_URL_BYTES` is 414; a body declared over its route's limit
 * is 413 before anything else runs (the inference audit, registered before, records either); any other
 * body reaches the route as a `LimitedBody`. A body that failed, or was left unread with more
 * than `DRAIN_BYTES` (or an unknown length) to come, closes the connection after the answer
 * (`Connection: close`) instead of being waited for.
 */
export function requestLimits(limits: BodyLimits) {
  return createMiddleware<AppEnv>(async (c, next) => {
    if (targetLength(c.req.url) > MAX_URL_BYTES) {
      throw new ApiError(414, "uri_too_long", `The request URL is over ${MAX_URL_BYTES} bytes`);
    }
    const req = c.req.raw;
    if (!hasBody(req)) return await next();
    const bytes = bodyLimitOf(c.req.path, limits);
    // The server has checked the header's syntax; chunked framing wins over a length.
    const declared = req.headers.has("transfer-encoding")
      ? Infinity
      : Number(req.headers.get("content-length"));
    if (declared !== Infinity && declared > bytes) {
      throw tooLarge(bytes, declared > DRAIN_BYTES);
    }
    const body = new LimitedBody(req.body!, bytes, limits.timeoutMs);
    c.req.raw = new Request(req, { body: body.stream, duplex: "half" } as RequestInit);
    await next();
    if (!body.complete && (body.failed || declared > DRAIN_BYTES)) {
      c.res.headers.set("connection", "close");
    }
    if (body.disconnected) {
      c.get("svc").log("info", "client disconnected during the upload", {
        request_id: c.get("requestId"),
        path: c.req.path,
      });
    }
  });
}

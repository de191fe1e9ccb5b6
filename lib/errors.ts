/**
 * The errors the router throws. Domain modules throw the typed domain errors (what went wrong, in
 * the domain's words); routes and middleware may throw `ApiError` (a status and an API code). The
 * app's one `onError` maps both to the JSON error every endpoint answers (lib/http/errors.ts).
 */
import type { ContentfulStatusCode } from "hono/utils/http-status";

/** The input breaks a rule of the domain (an edited cursor, a period out of range): a 400. */
export class InvalidInput extends Error {
  override name = "InvalidInput";
}

/** What was named does not exist, or belongs to another account: a 404. */
export class NotFound extends Error {
  override name = "NotFound";
  /**
   * @example
   * ```ts
   * throw new NotFound("The key"); // "The key was not found"
   * ```
   */
  constructor(what = "The resource") {
    super(`${what} was not found`);
  }
}

/** A concurrent change won every attempt, or the state forbids the change: a 409 with `code`. */
export class Conflict extends Error {
  override name = "Conflict";
  constructor(message: string, readonly code = "conflict") {
    super(message);
  }
}

/** Cannot be applied yet (a refund before its purchase): the sender should try again later. */
export class RetryLater extends Error {
  override name = "RetryLater";
}

/** Too many of something in a window: a 429 `rate_limited` with Retry-After. */
export class TooManyRequests extends Error {
  override name = "TooManyRequests";
  constructor(message: string, readonly retryAfterSeconds: number) {
    super(message);
  }
}

/** Thrown for bad configuration; the message is one line naming the variable. */
export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(message: string) {
    // One line, whatever the value or a parser's message quoted (an env value may hold newlines).
    super(message.replace(/\s*[\r\n]+\s*/g, " "));
  }
}

/**
 * An error with its HTTP status and API code, for the HTTP layer (and the pipeline); rendered as
 * OpenAI-style JSON by `onError`.
 *
 * @example
 * ```ts
 * throw new ApiError(402, "insufficient_credits", "The request may cost $0.2; $0.1 is available");
 * ```
 */
export class ApiError extends Error {
  override name = "ApiError";
  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/**
 * A 400 `invalid_request` naming what was wrong.
 *
 * @example
 * ```ts
 * throw badRequest("Invalid 'limit': must be a whole number from 1 to 1000");
 * ```
 */
export const badRequest = (message: string) => new ApiError(400, "invalid_request", message);
/**
 * A 404 `not_found`: "`what` was not found".
 *
 * @example
 * ```ts
 * throw notFound("The key"); // 404 "The key was not found"
 * ```
 */
export const notFound = (what = "The resource") =>
  new ApiError(404, "not_found", `${what} was not found`);

/**
 * The status recorded for a request whose client went away before any reply: nginx's "client
 * closed request", since no status was ever answered.
 */
export const CLIENT_CLOSED = 499 as ContentfulStatusCode;

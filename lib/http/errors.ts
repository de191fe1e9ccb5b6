/** Errors as HTTP answers: the JSON error body, domain errors mapped to statuses, JSON bodies read. */
import type { Context } from "hono";
import type { z } from "zod";
import { MAX_JSON_DEPTH, nestsWithin } from "../json.ts";
import {
  ApiError,
  badRequest,
  Conflict,
  InvalidInput,
  NotFound,
  RetryLater,
  TooManyRequests,
} from "../errors.ts";

// The pipeline's modules still import these from here; the rest import them from lib/errors.ts.
export { ApiError, badRequest, CLIENT_CLOSED, notFound } from "../errors.ts";

const TYPES: Record<number, string> = {
  400: "invalid_request_error",
  401: "authentication_error",
  402: "insufficient_quota",
  403: "permission_error",
  404: "not_found_error",
  408: "invalid_request_error",
  409: "conflict_error",
  413: "invalid_request_error",
  414: "invalid_request_error",
  429: "rate_limit_error",
  502: "api_error",
  503: "api_error",
  504: "api_error",
};

/**
 * The HTTP answer to a thrown error: an `ApiError` as it is, a domain error by its kind; null for
 * anything else.
 *
 * @example
 * ```ts
 * apiErrorOf(new NotFound("The key"))?.status; // 404
 * ```
 */
export function apiErrorOf(err: unknown): ApiError | null {
  if (err instanceof ApiError) return err;
  if (err instanceof InvalidInput) return badRequest(err.message);
  if (err instanceof NotFound) return new ApiError(404, "not_found", err.message);
  if (err instanceof Conflict) return new ApiError(409, err.code, err.message);
  if (err instanceof RetryLater) return new ApiError(503, "retry_later", err.message);
  if (err instanceof TooManyRequests) {
    return new ApiError(429, "rate_limited", err.message, {
      "retry-after": String(err.retryAfterSeconds),
    });
  }
  return null;
}

/**
 * The JSON body of an error, as every endpoint answers it.
 *
 * @example
 * ```ts
 * c.json(errorBody(404, "not_found", "No route"), 404);
 * ```
 */
export function errorBody(status: number, code: string, message: string) {
  return { error: { message, type: TYPES[status] ?? "api_error", code } };
}

/**
 * An ApiError as its JSON answer, its headers (Retry-After…) set.
 *
 * @example
 * ```ts
 * return errorResponse(c, badRequest("Invalid 'cursor'"));
 * ```
 */
export function errorResponse(c: Context, err: ApiError): Response {
  for (const [k, v] of Object.entries(err.headers)) c.header(k, v);
  return c.json(errorBody(err.status, err.code, err.message), err.status);
}

/** A zod failure as one sentence naming the first bad field. */
export function describeZod(error: z.ZodError): string {
  const i = error.issues[0];
  const path = i.path.length ? i.path.join(".") : "body";
  return `Invalid '${path}': ${i.message}`;
}

/**
 * Parses raw JSON text against a schema; malformed JSON, nesting deeper than MAX_JSON_DEPTH and
 * violations are 400 (naming the field).
 *
 * @example
 * ```ts
 * const body = parseJson(await c.req.text(), Adjustment); // 400 naming the field
 * ```
 */
export function parseJson<T extends z.ZodType>(raw: string, schema: T): z.output<T> {
  if (!nestsWithin(raw)) {
    throw badRequest(`The request body nests arrays and objects over ${MAX_JSON_DEPTH} deep`);
  }
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    throw badRequest("The request body is not valid JSON");
  }
  const r = schema.safeParse(json);
  if (!r.success) throw badRequest(describeZod(r.error));
  return r.data;
}

/**
 * Reads and parses a JSON request body (see `parseJson`).
 *
 * @example
 * ```ts
 * const body = await readJson(c, KeyCreate);
 * ```
 */
export async function readJson<T extends z.ZodType>(c: Context, schema: T): Promise<z.output<T>> {
  return parseJson(await c.req.text(), schema);
}

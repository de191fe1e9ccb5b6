/**
 * The API described by its own schemas: each documented route is declared once, with the zod
 * schemas its handler reads the request with and the presenters' schemas of its answers
 * (lib/http/presenters.ts); `@hono/zod-openapi` gathers the declarations of every API module into
 * the OpenAPI 3.1 document at `GET /v1/openapi.json`, which `/docs` shows as a page.
 */
import { OpenAPIHono, type RouteConfig } from "@hono/zod-openapi";
import type { Context, Handler } from "hono";
import type { z } from "zod";
import type { AppEnv } from "../services.ts";
import { ErrorSchema } from "./presenters.ts";
import { badRequest } from "../errors.ts";
import { describeZod } from "./errors.ts";

/** An API module's app: what it mounts, it documents (`documented`). */
export const apiRoutes = () => new OpenAPIHono<AppEnv>();
export type ApiRoutes = OpenAPIHono<AppEnv>;

/** The credentials a route takes, as the document's security requirements. */
export const SECURITY: Record<string, { [scheme: string]: string[] }[]> = {
  /** A management key, or a dashboard session (writes: with its CSRF token). */
  management: [{ managementKey: [] }, { session: [] }],
  inference: [{ inferenceKey: [] }],
  admin: [{ adminToken: [] }],
  /** Stripe signs the body instead; the document itself is public. */
  none: [],
};

const SCHEMES = {
  managementKey: {
    type: "http",
    scheme: "bearer",
    description: "A management key (`er-…`), as `Authorization: Bearer` or `x-api-key`",
  },
  inferenceKey: {
    type: "http",
    scheme: "bearer",
    description: "An inference key (`er-…`), as `Authorization: Bearer` or `x-api-key`",
  },
  adminToken: { type: "http", scheme: "bearer", description: "The operator's `ADMIN_TOKEN`" },
  session: {
    type: "apiKey",
    in: "cookie",
    name: "__Host-session",
    description: "A dashboard session; writes also send its CSRF token as `x-csrf-token`",
  },
} as const;

const ERROR_TEXT: Record<number, string> = {
  400: "A bad parameter or body (the message names it)",
  401: "No credential, or an unknown, revoked or expired one",
  402: "The hold does not fit the credit or the key's limit",
  403: "A credential of the other scope, a disabled key, or a write without its CSRF token",
  404: "Nothing of that id in this account",
  409: "A conflicting concurrent change or a reused Idempotency-Key",
  413: "The body is over its limit",
  429: "A rate limit is spent (`Retry-After`)",
  502: "The provider (or Stripe) failed",
  503: "Not configured, or try again later",
  504: "The provider (or Stripe) did not answer in time",
};

/** A JSON answer of `schema`. */
export const jsonResponse = (schema: z.ZodType, description: string) => ({
  description,
  content: { "application/json": { schema } },
});

/** The JSON error answers a route gives, by status. */
export const errorResponses = (...statuses: (keyof typeof ERROR_TEXT)[]) =>
  Object.fromEntries(statuses.map((s) => [s, jsonResponse(ErrorSchema, ERROR_TEXT[s])]));

/** A JSON request body of `schema`. */
export const jsonBody = (schema: z.ZodType) => ({
  required: true,
  content: { "application/json": { schema } },
});

/**
 * Declares a route in the module's document and mounts its handler there (OpenAPI's `{id}` is
 * Hono's `:id`). The handler reads the request with the schemas declared here (`readJson`,
 * `readQuery`), so what the document says is what the route takes.
 *
 * @example
 * ```ts
 * documented(app, {
 *   method: "get", path: "/credits", tags: ["Credits"], security: SECURITY.management,
 *   responses: { 200: jsonResponse(CreditsSchema, "The balance") },
 * }, (c) => c.json(creditsJson(balance)));
 * ```
 */
export function documented(
  app: ApiRoutes,
  route: RouteConfig,
  handler: Handler<AppEnv>,
): void {
  app.openAPIRegistry.registerPath({ ...route, security: route.security ?? [] });
  app.on(route.method.toUpperCase(), route.path.replace(/\{(\w+)\}/g, ":$1"), handler);
}

/**
 * The request's query parameters read with `schema` (each a string, or absent): 400 naming the
 * first bad one. Parameters the schema does not name are ignored, as they always were.
 *
 * @example
 * ```ts
 * const q = readQuery(c, PageQuery); // { limit?: string, cursor?: string }
 * ```
 */
export function readQuery<T extends z.ZodType>(c: Context, schema: T): z.output<T> {
  const r = schema.safeParse(c.req.query());
  if (!r.success) throw badRequest(describeZod(r.error));
  return r.data;
}

/**
 * Publishes the document of every documented route mounted on `app` at `GET /v1/openapi.json`,
 * worked out once; `document()` gives it to other readers (the `/docs` page).
 */
export function publishOpenApi(app: ApiRoutes) {
  for (const [name, scheme] of Object.entries(SCHEMES)) {
    app.openAPIRegistry.registerComponent("securitySchemes", name, scheme);
  }
  let doc: ReturnType<typeof app.getOpenAPI31Document> | null = null;
  const document = () =>
    doc ??= app.getOpenAPI31Document({
      openapi: "3.1.0",
      info: {
        title: "Enterprise Router",
        version: "1",
        description:
          "An LLM API gateway sold on prepaid credit. Money is USD as decimal strings, exact to " +
          "the nano-dollar; every error is `{error: {message, type, code}}`.",
      },
      tags: [
        { name: "Inference", description: "OpenAI and Anthropic formats (inference keys)" },
        { name: "Keys", description: "The account's API keys" },
        { name: "Credits", description: "Balance and ledger" },
        { name: "Usage", description: "Usage from rollups; the audit trail" },
        { name: "Billing", description: "Credit packages, checkout, statements" },
        { name: "Webhooks", description: "Customer webhook endpoints and deliveries" },
        { name: "Stripe", description: "Stripe's signed webhook" },
        { name: "Admin", description: "The operator (ADMIN_TOKEN)" },
      ],
    });
  app.get("/v1/openapi.json", (c) => c.json(document()));
  return document;
}

import type { Context } from "hono";
import { z } from "zod";
import type { AppEnv } from "../../lib/services.ts";
import { requireKey } from "../../lib/http/auth.ts";
import { ApiError, badRequest, notFound } from "../../lib/errors.ts";
import { readJson } from "../../lib/http/errors.ts";
import { idParam, PageQuery, parseCursor, parseLimit } from "../../lib/http/params.ts";
import {
  apiRoutes,
  documented,
  errorResponses,
  jsonBody,
  jsonResponse,
  readQuery,
  SECURITY,
} from "../../lib/http/openapi.ts";
import { newId } from "../../lib/ids.ts";
import { pageNewestFirst } from "../../lib/kv/util.ts";
import { webhookDeliveriesPrefix } from "../../lib/kv/schema.ts";
import { EVENT_TYPES } from "../../lib/webhooks/events.ts";
import {
  changeEndpoints,
  getEndpoint,
  getEndpoints,
  MAX_ENDPOINTS,
  MAX_URL_CHARS,
  newSecret,
  type WebhookEndpoint,
} from "../../lib/webhooks/endpoints.ts";
import type { Delivery } from "../../lib/webhooks/dispatcher.ts";
import {
  DeletedSchema,
  deliveryJson,
  DeliveryPageSchema,
  DeliverySchema,
  endpointJson,
  listOf,
  WebhookEndpointCreatedSchema,
  WebhookEndpointSchema,
} from "../../lib/http/presenters.ts";

/** The URL as stored and delivered to: normalised (percent-encoded, punycode), no fragment. */
const normalisedUrl = (v: string) => {
  const u = URL.parse(v);
  if (u) u.hash = "";
  return u;
};
const url = z.string().trim().max(MAX_URL_CHARS).refine((v) => {
  const u = URL.parse(v);
  return u !== null && (u.protocol === "https:" || u.protocol === "http:") && !u.username &&
    !u.password;
}, "must be an http(s) URL without user name or password")
  // Normalising grows a URL (a CJK character becomes 9 characters): the stored form is what is
  // bounded, so that ten endpoints always fit in the account's one KV record.
  .refine(
    (v) => (normalisedUrl(v)?.href.length ?? 0) <= MAX_URL_CHARS,
    `must be at most ${MAX_URL_CHARS} characters once percent-encoded`,
  );
const events = z.array(z.enum(EVENT_TYPES)).min(1, "must name at least one event")
  .refine((v) => new Set(v).size === v.length, "must not repeat an event");

export const WebhookCreate = z.strictObject({ url, events }).meta({ id: "WebhookCreate" });
export const WebhookPatch = z.strictObject({
  url: url.optional(),
  events: events.optional(),
  disabled: z.boolean().optional(),
}).meta({ id: "WebhookPatch" });
const EndpointPath = z.object({ id: idParam("we") });

/** The endpoint URL, normalised (no fragment), if this router may deliver to it; else 400. */
async function deliverableUrl(c: Context<AppEnv>, raw: string): Promise<string> {
  const u = normalisedUrl(raw)!;
  const dest = await c.get("svc").webhooks.destination(u);
  if (!dest.ok) {
    throw badRequest(
      dest.reason === "unresolvable"
        ? "Invalid 'url': its host name does not resolve"
        : "Invalid 'url': it reaches a private, loopback or link-local address",
    );
  }
  return u.href;
}

async function ownEndpoint(c: Context<AppEnv>): Promise<WebhookEndpoint> {
  const e = await getEndpoint(c.get("svc").kv, c.get("accountId"), c.req.param("id") ?? "");
  if (!e) throw notFound("The webhook endpoint");
  return e;
}

/** Customer webhooks: endpoints, test events and the delivery log. */
export default function webhookRoutes() {
  const app = apiRoutes();
  for (const path of ["/webhooks", "/webhooks/*"]) app.use(path, requireKey("management"));
  const security = SECURITY.management;
  const refusals = errorResponses(400, 401, 403);

  documented(app, {
    method: "get",
    path: "/webhooks",
    tags: ["Webhooks"],
    summary: "The account's webhook endpoints",
    security,
    responses: {
      200: jsonResponse(listOf(WebhookEndpointSchema), "The endpoints"),
      ...refusals,
    },
  }, async (c) => {
    const list = (await getEndpoints(c.get("svc").kv, c.get("accountId"))).value ?? [];
    return c.json({ data: list.map(endpointJson) });
  });

  documented(app, {
    method: "post",
    path: "/webhooks",
    tags: ["Webhooks"],
    summary: "A new endpoint; its signing secret is shown this once",
    security,
    request: { body: jsonBody(WebhookCreate) },
    responses: {
      201: jsonResponse(WebhookEndpointCreatedSchema, "The endpoint and its secret"),
      ...refusals,
      ...errorResponses(409),
    },
  }, async (c) => {
    const svc = c.get("svc");
    const body = await readJson(c, WebhookCreate);
    const at = new Date(svc.now()).toISOString();
    const endpoint: WebhookEndpoint = {
      id: newId("we"),
      url: await deliverableUrl(c, body.url),
      events: body.events,
      secret: newSecret(),
      disabled: false,
      created_at: at,
      updated_at: at,
    };
    await changeEndpoints(svc.kv, c.get("accountId"), (list) => {
      if (list.length >= MAX_ENDPOINTS) {
        throw badRequest(`An account has at most ${MAX_ENDPOINTS} webhook endpoints`);
      }
      return [...list, endpoint];
    });
    // The secret is shown this once: nothing between here and the client may keep it.
    c.header("cache-control", "no-store");
    return c.json({ ...endpointJson(endpoint), secret: endpoint.secret }, 201);
  });

  documented(app, {
    method: "get",
    path: "/webhooks/{id}",
    tags: ["Webhooks"],
    summary: "One endpoint",
    security,
    request: { params: EndpointPath },
    responses: {
      200: jsonResponse(WebhookEndpointSchema, "The endpoint"),
      ...refusals,
      ...errorResponses(404),
    },
  }, async (c) => c.json(endpointJson(await ownEndpoint(c))));

  documented(app, {
    method: "patch",
    path: "/webhooks/{id}",
    tags: ["Webhooks"],
    summary: "Changes an endpoint's URL, events or disabled flag",
    security,
    request: { params: EndpointPath, body: jsonBody(WebhookPatch) },
    responses: {
      200: jsonResponse(WebhookEndpointSchema, "The endpoint as changed"),
      ...refusals,
      ...errorResponses(404, 409),
    },
  }, async (c) => {
    const svc = c.get("svc");
    const patch = await readJson(c, WebhookPatch);
    const id = (await ownEndpoint(c)).id;
    const newUrl = patch.url === undefined ? undefined : await deliverableUrl(c, patch.url);
    const list = await changeEndpoints(
      svc.kv,
      c.get("accountId"),
      (list) =>
        list.map((e) =>
          e.id !== id ? e : {
            ...e,
            url: newUrl ?? e.url,
            events: patch.events ?? e.events,
            disabled: patch.disabled ?? e.disabled,
            updated_at: new Date(svc.now()).toISOString(),
          }
        ),
    );
    const updated = list.find((e) => e.id === id);
    // Deleted meanwhile.
    if (!updated) throw notFound("The webhook endpoint");
    return c.json(endpointJson(updated));
  });

  documented(app, {
    method: "delete",
    path: "/webhooks/{id}",
    tags: ["Webhooks"],
    summary: "Deletes an endpoint",
    security,
    request: { params: EndpointPath },
    responses: { 200: jsonResponse(DeletedSchema, "Deleted"), ...refusals, ...errorResponses(404) },
  }, async (c) => {
    const id = (await ownEndpoint(c)).id;
    await changeEndpoints(c.get("svc").kv, c.get("accountId"), (l) => l.filter((e) => e.id !== id));
    return c.json({ id, deleted: true });
  });

  documented(app, {
    method: "post",
    path: "/webhooks/{id}/test",
    tags: ["Webhooks"],
    summary: "Sends a webhook.test event now; answers its delivery after the first attempt",
    security,
    request: { params: EndpointPath },
    responses: {
      200: jsonResponse(DeliverySchema, "The delivery"),
      ...refusals,
      ...errorResponses(404, 409, 429),
    },
  }, async (c) => {
    const endpoint = await ownEndpoint(c);
    if (endpoint.disabled) {
      throw new ApiError(409, "endpoint_disabled", "The webhook endpoint is disabled");
    }
    const delivery = await c.get("svc").webhooks.test(c.get("accountId"), endpoint);
    return c.json(deliveryJson(delivery));
  });

  documented(app, {
    method: "get",
    path: "/webhooks/{id}/deliveries",
    tags: ["Webhooks"],
    summary: "The endpoint's delivery log, newest first",
    security,
    request: { params: EndpointPath, query: PageQuery },
    responses: {
      200: jsonResponse(DeliveryPageSchema, "A page of deliveries"),
      ...refusals,
      ...errorResponses(404),
    },
  }, async (c) => {
    const endpoint = await ownEndpoint(c);
    const q = readQuery(c, PageQuery);
    const page = await pageNewestFirst<Delivery, ReturnType<typeof deliveryJson>>(
      c.get("svc").kv,
      { prefix: webhookDeliveriesPrefix(c.get("accountId"), endpoint.id) },
      { limit: parseLimit(q.limit), cursor: parseCursor(q.cursor) },
      deliveryJson,
    );
    return c.json(page);
  });

  return app;
}

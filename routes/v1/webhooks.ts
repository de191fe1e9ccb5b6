import { Hono } from "hono";
import type { Context } from "hono";
import { z } from "zod";
import type { AppEnv } from "../../lib/services.ts";
import { requireKey } from "../../lib/http/auth.ts";
import { ApiError, badRequest, notFound } from "../../lib/errors.ts";
import { readJson } from "../../lib/http/errors.ts";
import { parseCursor, parseLimit } from "../../lib/http/params.ts";
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
import { deliveryJson, endpointJson } from "../../lib/http/presenters.ts";

const url = z.string().trim().max(MAX_URL_CHARS).refine((v) => {
  const u = URL.parse(v);
  return u !== null && (u.protocol === "https:" || u.protocol === "http:") && !u.username &&
    !u.password;
}, "must be an http(s) URL without user name or password");
const events = z.array(z.enum(EVENT_TYPES)).min(1, "must name at least one event")
  .refine((v) => new Set(v).size === v.length, "must not repeat an event");

const createSchema = z.strictObject({ url, events });
const patchSchema = z.strictObject({
  url: url.optional(),
  events: events.optional(),
  disabled: z.boolean().optional(),
});

/** The endpoint URL, normalised (no fragment), if this router may deliver to it; else 400. */
async function deliverableUrl(c: Context<AppEnv>, raw: string): Promise<string> {
  const u = new URL(raw);
  u.hash = "";
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
  const app = new Hono<AppEnv>();
  for (const path of ["/webhooks", "/webhooks/*"]) app.use(path, requireKey("management"));

  app.get("/webhooks", async (c) => {
    const list = (await getEndpoints(c.get("svc").kv, c.get("accountId"))).value ?? [];
    return c.json({ data: list.map(endpointJson) });
  });

  app.post("/webhooks", async (c) => {
    const svc = c.get("svc");
    const body = await readJson(c, createSchema);
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

  app.get("/webhooks/:id", async (c) => c.json(endpointJson(await ownEndpoint(c))));

  app.patch("/webhooks/:id", async (c) => {
    const svc = c.get("svc");
    const patch = await readJson(c, patchSchema);
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

  app.delete("/webhooks/:id", async (c) => {
    const id = (await ownEndpoint(c)).id;
    await changeEndpoints(c.get("svc").kv, c.get("accountId"), (l) => l.filter((e) => e.id !== id));
    return c.json({ id, deleted: true });
  });

  app.post("/webhooks/:id/test", async (c) => {
    const endpoint = await ownEndpoint(c);
    if (endpoint.disabled) {
      throw new ApiError(409, "endpoint_disabled", "The webhook endpoint is disabled");
    }
    const delivery = await c.get("svc").webhooks.test(c.get("accountId"), endpoint);
    return c.json(deliveryJson(delivery));
  });

  app.get("/webhooks/:id/deliveries", async (c) => {
    const endpoint = await ownEndpoint(c);
    const page = await pageNewestFirst<Delivery, ReturnType<typeof deliveryJson>>(
      c.get("svc").kv,
      { prefix: webhookDeliveriesPrefix(c.get("accountId"), endpoint.id) },
      { limit: parseLimit(c.req.query("limit")), cursor: parseCursor(c.req.query("cursor")) },
      deliveryJson,
    );
    return c.json(page);
  });

  return app;
}

/** Helpers of the customer webhook tests. */
import assert from "node:assert/strict";
import { json, type TestRouter } from "./_helpers.ts";
import type { Receiver } from "./_fakes/receiver.ts";
import type { DeliveryView } from "../islands/WebhooksManager.tsx";

/** A delivery as GET /v1/webhooks/{id}/deliveries shows it. */
export type DeliveryRow = DeliveryView & { endpoint_id: string };

/** Adds an endpoint of `rx` for `events`; the receiver learns its secret. Returns its id. */
export async function addEndpoint(
  t: TestRouter,
  mgmt: string,
  rx: Receiver,
  events: string[],
): Promise<string> {
  const res = await t.call(mgmt, "POST", "/v1/webhooks", { url: rx.url, events });
  assert.equal(res.headers.get("cache-control"), "no-store");
  const ep = await json(res, 201);
  assert.match(ep.secret, /^whsec_[A-Za-z0-9+/]{43}=$/);
  rx.secret = ep.secret;
  return ep.id;
}

/** The endpoint's deliveries, newest first. */
export async function deliveries(
  t: TestRouter,
  mgmt: string,
  endpointId: string,
): Promise<DeliveryRow[]> {
  return (await json(await t.call(mgmt, "GET", `/v1/webhooks/${endpointId}/deliveries`), 200))
    .data;
}

/** Waits (bounded) until every delivery of the endpoint is in a final state; returns them. */
export async function settled(
  t: TestRouter,
  mgmt: string,
  endpointId: string,
  count: number,
): Promise<DeliveryRow[]> {
  for (let i = 0; i < 200; i++) {
    const rows = await deliveries(t, mgmt, endpointId);
    if (rows.length >= count && rows.every((d) => d.state !== "pending")) return rows;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(
    `deliveries not settled: ${JSON.stringify(await deliveries(t, mgmt, endpointId))}`,
  );
}

/** A loopback port nothing listens on: a receiver down for the whole test. */
export function closedPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

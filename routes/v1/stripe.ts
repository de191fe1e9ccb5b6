import { z } from "zod";
import { ApiError } from "../../lib/errors.ts";
import { apiErrorOf } from "../../lib/http/errors.ts";
import { EVENT_RESULTS } from "../../lib/billing/stripe/types.ts";
import { apiRoutes, documented, errorResponses, jsonResponse } from "../../lib/http/openapi.ts";
import { handleStripeEvent } from "../../lib/billing/stripe/events.ts";
import { verifyWebhook } from "../../lib/billing/stripe/client.ts";
import { ledgerJson } from "../../lib/http/presenters.ts";
import { handleTopupEvent, TOPUP_EVENT_RESULTS } from "../../lib/billing/topup/charge.ts";
import { stripeWebhooks } from "../../lib/metrics.ts";

/**
 * Stripe's webhook. It takes no API key: the signature over the raw body is the credential, so
 * the body is read as text exactly as sent, before anything parses it. Its size was checked
 * before that (`WEBHOOK_BODY_BYTES`, lib/http/limits.ts): a body too large is never read whole.
 */
export default function stripeRoutes() {
  const app = apiRoutes();
  // A refused delivery is counted by its error code (an applied one by its result, below).
  app.use("/stripe/webhook", async (c, next) => {
    await next();
    if (c.res.status >= 400) {
      stripeWebhooks.inc({ outcome: apiErrorOf(c.error)?.code ?? "error" });
    }
  });
  documented(app, {
    method: "post",
    path: "/stripe/webhook",
    tags: ["Stripe"],
    summary: "Stripe's events, signed (`Stripe-Signature`): purchases credited, refunds and " +
      "disputes taken back, each once",
    request: {
      body: {
        required: true,
        content: {
          "application/json": { schema: z.looseObject({ id: z.string(), type: z.string() }) },
        },
      },
    },
    responses: {
      200: jsonResponse(
        z.strictObject({
          received: z.literal(true),
          result: z.enum([...new Set([...EVENT_RESULTS, ...TOPUP_EVENT_RESULTS])]),
        }),
        "What the event did",
      ),
      ...errorResponses(400, 503),
    },
  }, async (c) => {
    const svc = c.get("svc");
    const secrets = svc.config.stripeWebhookSecrets;
    if (secrets.length === 0) {
      // 503, not 400: Stripe keeps the event and retries once the secret is configured.
      throw new ApiError(503, "webhook_unconfigured", "Set STRIPE_WEBHOOK_SECRET to accept events");
    }
    const raw = await c.req.text();
    const event = await verifyWebhook(raw, c.req.header("stripe-signature"), secrets, svc.now());
    if (!event) {
      throw new ApiError(
        400,
        "invalid_signature",
        "The Stripe-Signature header is missing, stale or does not match the body",
      );
    }
    // An event that must wait for another (RetryLater) is answered 503: Stripe delivers it again.
    // The saved card and auto top-up take their events first; purchases take the rest.
    const result = (await handleTopupEvent(svc, event)) ?? await handleStripeEvent({
      kv: svc.kv,
      actors: svc.actors,
      stripe: svc.stripe,
      packages: svc.config.packages,
      now: svc.now,
      log: svc.log,
      entryData: ledgerJson,
    }, event);
    stripeWebhooks.inc({ outcome: result });
    svc.log("info", "stripe event", { event_id: event.id, type: event.type, result });
    return c.json({ received: true, result });
  });
  return app;
}

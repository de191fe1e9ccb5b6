import { Hono } from "hono";
import type { AppEnv } from "../../lib/services.ts";
import { ApiError } from "../../lib/http/errors.ts";
import { handleStripeEvent, RetryLater, verifyWebhook } from "../../lib/billing/stripe.ts";
import { stripeWebhooks } from "../../lib/metrics.ts";

/**
 * Stripe's webhook. It takes no API key: the signature over the raw body is the credential, so
 * the body is read as text exactly as sent, before anything parses it. Its size was checked
 * before that (`WEBHOOK_BODY_BYTES`, lib/http/limits.ts): a body too large is never read whole.
 */
export function stripeRoutes() {
  const app = new Hono<AppEnv>();
  // A refused delivery is counted by its error code (an applied one by its result, below).
  app.use("/stripe/webhook", async (c, next) => {
    await next();
    if (c.res.status >= 400) stripeWebhooks.inc({ outcome: c.get("errorCode") ?? "error" });
  });
  app.post("/stripe/webhook", async (c) => {
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
    try {
      const result = await handleStripeEvent(svc, event);
      stripeWebhooks.inc({ outcome: result });
      svc.log("info", "stripe event", { event_id: event.id, type: event.type, result });
      return c.json({ received: true, result });
    } catch (e) {
      if (e instanceof RetryLater) throw new ApiError(503, "retry_later", e.message);
      throw e;
    }
  });
  return app;
}

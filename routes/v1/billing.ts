import { z } from "zod";
import type { Services } from "../../lib/services.ts";
import { requireKey } from "../../lib/http/auth.ts";
import { ApiError, notFound } from "../../lib/errors.ts";
import { readJson } from "../../lib/http/errors.ts";
import {
  LedgerEntrySchema,
  ledgerJson,
  listOf,
  packageJson,
  PackageSchema,
} from "../../lib/http/presenters.ts";
import {
  apiRoutes,
  documented,
  errorResponses,
  jsonBody,
  jsonResponse,
  SECURITY,
} from "../../lib/http/openapi.ts";
import { newId } from "../../lib/ids.ts";
import {
  checkoutIdempotencyKey,
  createCheckoutSession,
} from "../../lib/billing/stripe/checkout.ts";
import Stripe from "stripe";
import { creditEvent } from "../../lib/webhooks/events.ts";

/** Stripe's client gave up waiting (its `timeout`, after its retries): a 504, not a failure. */
const isStripeTimeout = (e: Stripe.errors.StripeError) =>
  e instanceof Stripe.errors.StripeConnectionError &&
  (e.detail as { code?: unknown } | undefined)?.code === "ETIMEDOUT";

/**
 * The API error for a Stripe call that failed while creating a Checkout Session (`what`: for the
 * log): 409 for a reused Idempotency-Key, 504 when Stripe did not answer, 502 otherwise; anything
 * that is not Stripe's error is returned as it is.
 */
export function stripeFailure(svc: Services, e: unknown, what: string): unknown {
  if (e instanceof Stripe.errors.StripeIdempotencyError) {
    return new ApiError(
      409,
      "idempotency_conflict",
      "This Idempotency-Key was already used with a different request body",
    );
  }
  if (!(e instanceof Stripe.errors.StripeError)) return e;
  // Stripe's message may describe its own configuration: log its type, not the text.
  svc.log("error", `stripe ${what} failed`, { type: e.type, status: e.statusCode });
  if (isStripeTimeout(e)) {
    return new ApiError(504, "upstream_timeout", "Stripe did not answer in time");
  }
  return new ApiError(502, "upstream_error", "Stripe did not create the Checkout Session");
}

export const Checkout = z.strictObject({ package_id: z.string().min(1, "is required").max(100) })
  .meta({ id: "Checkout" });

/** Credit packages and their purchase. */
export default function billingRoutes() {
  const app = apiRoutes();
  // Exact paths: the saved card and auto top-up (routes/v1/spend.ts) are under /billing/ too.
  app.use("/billing/packages", requireKey("management"));
  app.use("/billing/checkout", requireKey("management"));

  documented(app, {
    method: "get",
    path: "/billing/packages",
    tags: ["Billing"],
    summary: "The credit packages on sale",
    security: SECURITY.management,
    responses: {
      200: jsonResponse(listOf(PackageSchema), "The packages"),
      ...errorResponses(401, 403),
    },
  }, (c) => c.json({ data: c.get("svc").config.packages.map(packageJson) }));

  documented(app, {
    method: "post",
    path: "/billing/checkout",
    tags: ["Billing"],
    summary: "Buys a package: a Stripe Checkout Session (production), or the credit at once " +
      "(development billing)",
    security: SECURITY.management,
    request: { body: jsonBody(Checkout) },
    responses: {
      200: jsonResponse(
        z.strictObject({ url: z.string() }),
        "Production: the Checkout Session to send the customer to",
      ),
      201: jsonResponse(
        z.strictObject({ transaction: LedgerEntrySchema }),
        "Development: the credit granted",
      ),
      ...errorResponses(400, 401, 403, 404, 409, 502, 503, 504),
    },
  }, async (c) => {
    const svc = c.get("svc");
    const { package_id } = await readJson(c, Checkout);
    const pkg = svc.config.packages.find((p) => p.id === package_id);
    if (!pkg) throw notFound(`The package '${package_id}'`);
    if (svc.config.billingMode === "production") {
      const stripe = svc.stripe;
      if (!stripe) {
        throw new ApiError(503, "checkout_unavailable", "Stripe Checkout is not configured");
      }
      const accountId = c.get("accountId");
      try {
        const session = await createCheckoutSession(svc, stripe, {
          accountId,
          pkg,
          origin: svc.config.publicUrl ?? new URL(c.req.url).origin,
          idempotencyKey: await checkoutIdempotencyKey(
            accountId,
            c.req.header("idempotency-key"),
            c.get("requestId"),
          ),
        });
        return c.json({ url: session.url });
      } catch (e) {
        throw stripeFailure(svc, e, "checkout");
      }
    }
    // Development mode: the credit is granted at once, marked as a development grant.
    const r = await svc.actors.submit(c.get("accountId"), {
      kind: "credit",
      type: "purchase",
      amount: pkg.credits,
      description: `Development grant: ${pkg.name} package (no payment)`,
      reference: newId("devgrant"),
      event: creditEvent(c.get("accountId"), "credits.purchased", ledgerJson),
    });
    if (r.replayed) throw new Error("a development grant cannot replay");
    return c.json({ transaction: ledgerJson(r.entry) }, 201);
  });
  return app;
}

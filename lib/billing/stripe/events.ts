/**
 * Stripe's webhook events, each to its family's handler: the paid Checkout Session grants credit
 * (checkout.ts), refunds and failed refunds take it back and give it back (refunds.ts), disputes
 * take back the disputed share and give it back when reinstated (disputes.ts); each exactly once,
 * however often or in whatever order Stripe delivers.
 */
import type Stripe from "stripe";
import type { EventResult, StripeDeps } from "./types.ts";
import { creditSession } from "./checkout.ts";
import { refundCharge, refundFailed } from "./refunds.ts";
import { disputeEvent } from "./disputes.ts";

/**
 * Applies one verified Stripe event. A paid Checkout Session grants its package's credit once per
 * session; a refunded charge takes back the refunded share once per refund; a refund that
 * failed gives back what it took, once; a dispute whose funds are withdrawn takes back the
 * disputed share once, and gives it back once if the funds are reinstated; anything else is
 * ignored. Throws `RetryLater` when the event must wait for another one.
 *
 * @example
 * ```ts
 * const event = await verifyWebhook(raw, signature, config.stripeWebhookSecrets, now);
 * if (event) await handleStripeEvent(deps, event); // "credited", "already_credited", …
 * ```
 */
export async function handleStripeEvent(
  deps: StripeDeps,
  event: Stripe.Event,
): Promise<EventResult> {
  switch (event.type) {
    case "checkout.session.completed":
    case "checkout.session.async_payment_succeeded":
      return await creditSession(deps, event.data.object);
    case "charge.refunded":
      return await refundCharge(deps, event.data.object);
    // Which of these an endpoint receives depends on its API version and the payment method.
    case "charge.refund.updated":
    case "refund.updated":
    case "refund.failed":
      return await refundFailed(deps, event.data.object);
    case "charge.dispute.created":
    case "charge.dispute.updated":
    case "charge.dispute.funds_withdrawn":
    case "charge.dispute.funds_reinstated":
    case "charge.dispute.closed":
      return await disputeEvent(deps, event.type, event.data.object);
    default:
      return "ignored";
  }
}

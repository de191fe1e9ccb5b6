/** The Stripe client (built once by `createApp` and handed to whatever calls Stripe) and webhook signatures. */
import Stripe from "stripe";
import type { Config } from "../../config.ts";

/** Nano-USD in one US cent: Stripe amounts are integer cents. */
export const NANOS_PER_CENT = 10_000_000n;
/** How old a webhook signature may be, in seconds (Stripe's own default). */
export const WEBHOOK_TOLERANCE_S = 300;

/** The Stripe client options for a configuration: `STRIPE_API_BASE` becomes host/port/protocol. */
export function stripeOptions(config: Config): Stripe.StripeConfig {
  const opts: Stripe.StripeConfig = {
    httpClient: Stripe.createFetchHttpClient(),
    // Every POST carries an idempotency key, so retrying a network failure cannot buy twice.
    maxNetworkRetries: 2,
    timeout: 20_000,
    telemetry: false,
  };
  if (config.stripeApiBase) {
    const u = new URL(config.stripeApiBase);
    const protocol = u.protocol === "http:" ? "http" : "https";
    opts.host = u.hostname;
    opts.port = u.port ? Number(u.port) : protocol === "http" ? 80 : 443;
    opts.protocol = protocol;
  }
  return opts;
}

/**
 * The Stripe client of a configuration, or null without `STRIPE_SECRET_KEY`. `createApp` builds
 * one and passes it on (tests pass their own).
 *
 * @example
 * ```ts
 * const stripe = createStripeClient(config); // null in development billing
 * ```
 */
export function createStripeClient(config: Config): Stripe | null {
  return config.stripeSecretKey ? new Stripe(config.stripeSecretKey, stripeOptions(config)) : null;
}

const cryptoProvider = Stripe.createSubtleCryptoProvider();

/**
 * The event, if `header` is a valid Stripe signature of `raw` by one of `secrets` (several while
 * one is rotated) and at most five minutes old; otherwise null.
 */
export async function verifyWebhook(
  raw: string,
  header: string | undefined,
  secrets: string[],
  nowMs: number,
): Promise<Stripe.Event | null> {
  if (!header) return null;
  for (const secret of secrets) {
    try {
      // Only the async variant works on Deno: SubtleCrypto has no synchronous HMAC.
      return await Stripe.webhooks.constructEventAsync(
        raw,
        header,
        secret,
        WEBHOOK_TOLERANCE_S,
        cryptoProvider,
        nowMs,
      );
    } catch (e) {
      if (!(e instanceof Stripe.errors.StripeSignatureVerificationError)) throw e;
    }
  }
  return null;
}

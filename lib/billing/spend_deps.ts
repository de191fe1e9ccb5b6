/** What the spend controls (auto top-up, saved card, alerts) use of the router's services. */
import type Stripe from "stripe";
import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import type { AccountActors } from "./actor.ts";

/**
 * The narrow dependencies of lib/billing/topup/, alerts.ts and spend_watch.ts: the services
 * object satisfies it, and tests may pass any object that does.
 */
export interface SpendDeps {
  kv: Deno.Kv;
  config: Config;
  actors: AccountActors;
  /** The Stripe client; null without `STRIPE_SECRET_KEY`. */
  stripe: Stripe | null;
  now: () => number;
  log: Logger;
}

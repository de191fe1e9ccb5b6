import type { Config } from "./config.ts";
import type { Providers } from "./providers/registry.ts";
import type { AccountActors } from "./billing/actor.ts";
import type { KeyResolver } from "./auth/keys.ts";
import type { Background } from "./billing/background.ts";
import type { ApiKey } from "./billing/types.ts";
import type { Logger } from "./log.ts";
import type { Webhooks } from "./webhooks/dispatcher.ts";
import type Stripe from "stripe";
import type { KvStats } from "./kv/instrument.ts";
import type { SpendWatch } from "./billing/spend_watch.ts";
import type { LiveStreams } from "./proxy/live_streams.ts";

/** What every handler may use; built once by `createApp`. */
export interface Services {
  kv: Deno.Kv;
  /** Counts of this process's KV commits (`GET /v1/admin/stats`). */
  kvStats: KvStats;
  config: Config;
  providers: Providers;
  actors: AccountActors;
  keys: KeyResolver;
  background: Background;
  /** Customer webhooks' delivery. */
  webhooks: Webhooks;
  /** Threshold crossings: auto top-up and spend alerts. */
  spend: SpendWatch;
  /** The Stripe client; null without `STRIPE_SECRET_KEY`. */
  stripe: Stripe | null;
  /** The streams this process is passing on (ended all at once at the shutdown deadline). */
  streams: LiveStreams;
  fetch: typeof fetch;
  now: () => number;
  log: Logger;
}

/**
 * Hono's context variables every route may read: the services and the request's id and start (set
 * by the app's first middleware), and the caller (set by `requireKey` on the routes that require
 * one). Middleware that serves some routes only types its own (the inference routes' audit record:
 * `InferenceEnv`).
 */
export interface AppEnv {
  Variables: {
    svc: Services;
    requestId: string;
    startedAt: number;
    /** The calling key (inference or management routes). */
    key: ApiKey;
    accountId: string;
  };
}

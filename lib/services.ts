import type { Config } from "./config.ts";
import type { Providers } from "./providers/registry.ts";
import type { AccountActors } from "./billing/actor.ts";
import type { KeyResolver } from "./auth/keys.ts";
import type { Background } from "./billing/background.ts";
import type { ApiKey } from "./billing/types.ts";
import type { Logger } from "./log.ts";
import type { MeteredRequest } from "./proxy/metered.ts";
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

/** Hono's context variables. */
export interface AppEnv {
  Variables: {
    svc: Services;
    requestId: string;
    startedAt: number;
    /** The calling key (inference or management routes). */
    key: ApiKey;
    accountId: string;
    /** Set once the request's audit event has been committed. */
    audited: boolean;
    /** The provider and model a request named, once known (for the audit row of a refusal). */
    target: { provider: string; model: string };
    /** Whether the request asked for a stream, once its body is read (for the same row). */
    streaming: boolean;
    /** The API error code a request was refused with. */
    errorCode: string;
    /** The money side of an inference request, once it has one. */
    metered: MeteredRequest;
  };
}

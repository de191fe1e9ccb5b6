import type { Config } from "./config.ts";
import { AccountActors } from "./billing/actor.ts";
import { Background } from "./billing/background.ts";
import { KeyResolver } from "./auth/keys.ts";
import { Providers, type ProvidersFile } from "./providers/registry.ts";
import { badRequest } from "./errors.ts";
import { apiErrorOf, errorBody, errorResponse } from "./http/errors.ts";
import { percentDecodes } from "./http/params.ts";
import { errorPage } from "./render/page.tsx";
import { consoleLogger, type Logger } from "./log.ts";
import { newId } from "./ids.ts";
import { isLocked } from "./kv/util.ts";
import { instrumentKv, type KvStats } from "./kv/instrument.ts";
import type { Services } from "./services.ts";
import { INFERENCE_PATHS, inferenceAudit } from "../routes/v1/inference.ts";
import { pageRoutes, refusalPage } from "./render/routes.ts";
import { requestLimits } from "./http/limits.ts";
import { API, PAGES } from "./gen/routes.ts";
import { type ApiRoutes, apiRoutes, publishOpenApi } from "./http/openapi.ts";
import { docsPage } from "./render/docs.tsx";
import { type WebhookOptions, Webhooks } from "./webhooks/dispatcher.ts";
import { addressPolicy } from "./webhooks/addresses.ts";
import { createStripeClient } from "./billing/stripe/client.ts";
import type Stripe from "stripe";
import { SpendWatch } from "./billing/spend_watch.ts";
import { LiveStreams } from "./proxy/live_streams.ts";
import { countCommitted } from "./telemetry/inference.ts";
import { traceInference } from "./telemetry/middleware.ts";
import { metricsRoutes } from "./telemetry/route.ts";
import { bindMetrics } from "./metrics.ts";
import { holdsOutstanding, outboxBacklog, OUTBOXES } from "./telemetry/backlog.ts";

export interface AppDeps {
  kv: Deno.Kv;
  config: Config;
  providersFile?: ProvidersFile | null;
  /** The providers, built already (main.ts builds them before listening); else from the file. */
  providers?: Providers;
  /** Environment for provider key variables named in PROVIDERS_FILE. */
  env?: Record<string, string | undefined>;
  fetch?: typeof fetch;
  now?: () => number;
  log?: Logger;
  /** Background sweep period (tests shorten it). */
  sweepEveryMs?: number;
  /** Customer webhooks' delivery, where tests stand in (DNS, TLS roots, retry unit, timeout). */
  webhooks?: Pick<WebhookOptions, "resolve" | "caCerts" | "retryBaseMs" | "timeoutMs">;
  /** The Stripe client; by default one built from the configuration (none without a key). */
  stripe?: Stripe | null;
}

export interface Router {
  app: ApiRoutes;
  svc: Services;
  /** Records every pending usage event now (tests, shutdown). */
  flush(): Promise<void>;
  /**
   * Ends every stream still running now (the shutdown deadline): each gets an error event and is
   * billed for what was delivered; resolves once each is billed, or after `waitMs`.
   */
  endStreams(waitMs: number): Promise<void>;
  /**
   * Returns every balance lease of this process (call it once requests in flight have finished:
   * after `server.shutdown()`), then stops background work; the caller closes the KV afterwards.
   */
  close(): Promise<void>;
}

/** Builds the whole router from its dependencies: one Hono app, its actors and background work. */
export function createApp(deps: AppDeps): Router {
  const { config } = deps;
  const kvStats: KvStats = { commits: 0, conflicts: 0, locked: 0 };
  const kv = instrumentKv(deps.kv, kvStats, config.kvSimulatedLatencyMs);
  const now = deps.now ?? Date.now;
  const log = deps.log ?? consoleLogger;
  const providers = deps.providers ??
    new Providers(config, deps.providersFile ?? null, deps.env ?? {});
  const actors = new AccountActors(kv, {
    delivery: config.outboxDelivery,
    onCommitted: (ids, events) => {
      background.notify(ids, events);
      countCommitted(events, providers);
    },
    onMoved: (accountId, moves) => spend.moved(accountId, moves),
    now,
    leases: config.leases ?? undefined,
  });
  const webhooks = new Webhooks(kv, {
    ...deps.webhooks,
    delivery: config.outboxDelivery,
    policy: addressPolicy(config),
    now,
    log,
  });
  const background: Background = new Background(kv, actors, {
    delivery: config.outboxDelivery,
    // Before the webhooks: the events its gates emit are fanned out in the same sweep.
    tasks: [{ onMessage: () => Promise.resolve(false), sweep: () => spend.sweep() }, webhooks],
    now,
    sweepEveryMs: deps.sweepEveryMs,
    holdTtlMs: config.holdTtlMs,
    onError: (e) => log("error", "background work failed", { error: String(e) }),
  }).start();
  const svc: Services = {
    kv,
    kvStats,
    config,
    providers,
    actors,
    keys: new KeyResolver(kv, now),
    background,
    webhooks,
    get spend() {
      return spend;
    },
    stripe: deps.stripe !== undefined ? deps.stripe : createStripeClient(config),
    streams: new LiveStreams(),
    fetch: deps.fetch ?? fetch,
    now,
    log,
  };
  // Built once the services exist (it uses them); the actors and the sweep call it only later.
  const spend = new SpendWatch(svc);
  const metricSources = {
    actorStats: actors.stats,
    liveHolds: () => {
      let lease = 0;
      for (const a of actors.leases.accounts()) lease += actors.leases.status(a)?.holds ?? 0;
      return { shared: actors.liveHolds.size, lease };
    },
    leasesOpen: () => [...actors.leases.accounts()].length,
    liveStreams: () => svc.streams.size,
    outboxes: async () => ({
      usage: await outboxBacklog(kv, OUTBOXES.usage, Date.now()),
      webhooks: await outboxBacklog(kv, OUTBOXES.webhooks, Date.now()),
    }),
    holds: () => holdsOutstanding(kv),
  };
  const unbindMetrics = bindMetrics(metricSources);

  const app = apiRoutes();
  app.use("*", async (c, next) => {
    const requestId = newId("req");
    c.set("svc", svc);
    c.set("requestId", requestId);
    c.set("startedAt", now());
    await next();
    c.res.headers.set("x-request-id", requestId);
    // The Anthropic SDK reads Anthropic's own name for it (`message._request_id`, errors'
    // `requestID`).
    if (c.req.path === "/v1/messages" || c.req.path.startsWith("/v1/messages/")) {
      c.res.headers.set("request-id", requestId);
    }
  });
  app.use("*", async (c, next) => {
    if (percentDecodes(c.req.url)) return await next();
    // An API path answers JSON (onError), a page or static file an HTML page.
    const message = "The URL holds a percent-escape that is not UTF-8";
    if (/^\/v1(\/|$)/.test(c.req.path)) throw badRequest(message);
    return errorPage(
      { title: "Bad request", auth: "public", layout: "public" },
      null,
      400,
      message,
    );
  });
  // Every inference request of a known key leaves one audit row: refusals at cost 0, the body
  // limits' included (so the audit comes first), and every token count (free: never held). The
  // request's span comes before both: it covers the key lookup and the audit row too.
  for (const path of INFERENCE_PATHS) {
    app.use(`/v1${path}`, traceInference);
    app.use(`/v1${path}`, inferenceAudit);
  }
  // Before any route reads a byte: URL and body limits by route, the body read as a stream.
  app.use(
    "*",
    requestLimits({
      apiBytes: config.maxBodyBytes,
      webhookBytes: config.webhookBodyBytes,
      pageBytes: config.pageBodyBytes,
      timeoutMs: config.bodyTimeoutMs,
    }),
  );

  // The dashboard: landing, sign-in, pages, static files (GET / answers 200 for warm-up checks).
  app.route("/", pageRoutes(PAGES));
  app.get("/healthz", (c) => c.json({ ok: true }));
  app.route("/", metricsRoutes());
  // The API modules of routes/, each at its folder's path (lib/gen/routes.ts, by the build).
  for (const [mount, routes] of API) app.route(mount, routes());
  // What the API modules declared: the OpenAPI document, and the reference page made from it.
  const document = publishOpenApi(app);
  app.get("/docs", () => docsPage(document()));

  app.notFound((c) =>
    c.json(errorBody(404, "not_found", `No route for ${c.req.method} ${c.req.path}`), 404)
  );
  // The one place errors become answers: domain errors and ApiErrors by their status and code.
  app.onError((err, c) => {
    const refused = apiErrorOf(err);
    if (refused) {
      // A refusal before routing (URL, body limits) on a page's path answers a browser a page.
      if (!c.req.path.startsWith("/v1/") && c.req.header("accept")?.includes("text/html")) {
        return refusalPage(refused);
      }
      return errorResponse(c, refused);
    }
    if (isLocked(err)) {
      // Another process held the local KV file past every retry; nothing was written.
      c.header("retry-after", "1");
      return c.json(errorBody(503, "busy", "The store is busy; retry shortly"), 503);
    }
    log("error", "unhandled error", {
      request_id: c.get("requestId"),
      path: c.req.path,
      // The name and place only: a message could quote request content.
      error: err instanceof Error ? err.name : "unknown",
      at: err instanceof Error ? err.stack?.split("\n")[1]?.trim() : undefined,
    });
    return c.json(errorBody(500, "internal_error", "Internal error"), 500);
  });

  return {
    app,
    svc,
    flush: () => background.flush(),
    endStreams: (waitMs) => svc.streams.endAll(waitMs),
    close: async () => {
      // The gates running finish first (a top-up credits through the actors).
      await spend.close();
      await background.close();
      unbindMetrics();
    },
  };
}

import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import type { Config } from "./config.ts";
import { AccountActors } from "./billing/actor.ts";
import { Background } from "./billing/background.ts";
import { KeyResolver } from "./auth/keys.ts";
import { Providers, type ProvidersFile } from "./providers/registry.ts";
import { ApiError, errorBody, errorResponse } from "./http/errors.ts";
import { consoleLogger, type Logger } from "./log.ts";
import { newId } from "./ids.ts";
import { isLocked } from "./kv/util.ts";
import { instrumentKv, type KvStats } from "./kv/instrument.ts";
import type { AppEnv, Services } from "./services.ts";
import { auditOversize, auditRefusal, inferenceRoutes } from "../routes/v1/inference.ts";
import { managementRoutes } from "../routes/v1/management.ts";
import { adminRoutes } from "../routes/v1/admin.ts";
import { billingRoutes } from "../routes/v1/billing.ts";
import { pageRoutes } from "./render/routes.ts";
import { stripeRoutes } from "../routes/v1/stripe.ts";

export interface AppDeps {
  kv: Deno.Kv;
  config: Config;
  providersFile?: ProvidersFile | null;
  /** Environment for provider key variables named in PROVIDERS_FILE. */
  env?: Record<string, string | undefined>;
  fetch?: typeof fetch;
  now?: () => number;
  log?: Logger;
  /** Background sweep period (tests shorten it). */
  sweepEveryMs?: number;
}

export interface Router {
  app: Hono<AppEnv>;
  svc: Services;
  /** Records every pending usage event now (tests, shutdown). */
  flush(): Promise<void>;
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
  const actors = new AccountActors(kv, {
    delivery: config.outboxDelivery,
    onCommitted: (ids, events) => background.notify(ids, events),
    now,
    leases: config.leases ?? undefined,
  });
  const background: Background = new Background(kv, actors, {
    delivery: config.outboxDelivery,
    now,
    sweepEveryMs: deps.sweepEveryMs,
    holdTtlMs: config.holdTtlMs,
    onError: (e) => log("error", "background work failed", { error: String(e) }),
  }).start();
  const svc: Services = {
    kv,
    kvStats,
    config,
    providers: new Providers(config, deps.providersFile ?? null, deps.env ?? {}),
    actors,
    keys: new KeyResolver(kv),
    background,
    fetch: deps.fetch ?? fetch,
    now,
    log,
  };

  const app = new Hono<AppEnv>();
  app.use("*", async (c, next) => {
    const requestId = newId("req");
    c.set("svc", svc);
    c.set("requestId", requestId);
    c.set("startedAt", now());
    c.set("audited", false);
    await next();
    c.res.headers.set("x-request-id", requestId);
    // The Anthropic SDK reads Anthropic's own name for it (`message._request_id`, errors'
    // `requestID`).
    if (c.req.path === "/v1/messages" || c.req.path.startsWith("/v1/messages/")) {
      c.res.headers.set("request-id", requestId);
    }
  });
  // Every refused inference request of a known key leaves an audit row, at cost 0.
  const audited = ["/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/v1/responses"];
  app.use(
    "/v1/*",
    bodyLimit({
      maxSize: config.maxBodyBytes,
      onError: async (c) => {
        // Refused before the key is read: on an audited path the key is looked up for its row.
        if (audited.includes(c.req.path)) await auditOversize(c);
        return c.json(
          errorBody(
            413,
            "request_too_large",
            `The request body is over ${config.maxBodyBytes} bytes`,
          ),
          413,
        );
      },
    }),
  );
  for (const path of audited) {
    app.use(path, async (c, next) => {
      await next();
      c.get("metered")?.answered();
      if (c.res.status >= 400) {
        await auditRefusal(c, c.res.status, c.get("errorCode") ?? `http_${c.res.status}`);
      }
    });
  }

  // The dashboard: landing, sign-in, pages, static files (GET / answers 200 for warm-up checks).
  app.route("/", pageRoutes());
  app.get("/healthz", (c) => c.json({ ok: true }));
  app.route("/v1", inferenceRoutes());
  app.route("/v1", managementRoutes());
  app.route("/v1", billingRoutes());
  app.route("/v1", stripeRoutes());
  app.route("/v1/admin", adminRoutes());

  app.notFound((c) =>
    c.json(errorBody(404, "not_found", `No route for ${c.req.method} ${c.req.path}`), 404)
  );
  app.onError((err, c) => {
    if (err instanceof ApiError) {
      c.set("errorCode", err.code);
      return errorResponse(c, err);
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
    close: () => background.close(),
  };
}

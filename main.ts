/** The composition root: configuration, KV, migrations, background work, and the HTTP server. */
import { loadConfig } from "./lib/config.ts";
import { ConfigError } from "./lib/errors.ts";
import { createApp, type Router } from "./lib/app.ts";
import { Providers, readProvidersFile } from "./lib/providers/registry.ts";
import { warmUsageDigests } from "./lib/usage/warm.ts";
import { consoleLogger } from "./lib/log.ts";
import { pruneAudit } from "./lib/audit/query.ts";
import { trustingProxies } from "./lib/http/client_addr.ts";
import { trustedProxies } from "./lib/net.ts";
import { serveWithLimits } from "./lib/http/serve.ts";
import { Lifecycle } from "./lib/http/lifecycle.ts";
import { migrateSchema } from "./lib/migrations.ts";

let router: Router | undefined;
let config;
let kv: Deno.Kv;
let providers: Providers;
try {
  config = loadConfig(Deno.env.toObject());
  const providersFile = await readProvidersFile(config.providersFile);
  providers = new Providers(config, providersFile, Deno.env.toObject());
  try {
    if (config.kvPath && config.kvPath !== ":memory:") {
      const dir = config.kvPath.replace(/[^/]*$/, "");
      if (dir) await Deno.mkdir(dir, { recursive: true });
    }
    kv = await Deno.openKv(config.kvPath);
  } catch (e) {
    throw new ConfigError(
      `KV_PATH: cannot open ${config.kvPath ?? "the deployment's KV"}: ${(e as Error).message}`,
    );
  }
} catch (e) {
  if (e instanceof ConfigError) {
    console.error(`configuration error: ${e.message}`);
    Deno.exit(1);
  }
  throw e;
}

// Deno Deploy runs crons registered at the top level, before serving; the sweep records usage
// events whose delivery was lost and releases holds of requests that died with their process.
// Each waits for the start (migrations) to be done.
Deno.cron("outbox and hold sweep", "* * * * *", async () => {
  await router?.svc.background.sweep();
});

// Customer webhooks: events to fan out and attempts due, where no queue or timer woke them.
Deno.cron("webhook deliveries", "* * * * *", async () => {
  await router?.svc.webhooks.sweep();
});

// After midnight UTC, yesterday becomes a closed day: digest it before customers look.
Deno.cron("usage digests", "7 0 * * *", async () => {
  if (router) await warmUsageDigests(kv, router.svc.now());
});

// Audit retention: rows older than AUDIT_RETENTION_DAYS go (with their index); the ledger stays.
Deno.cron("audit retention", "17 * * * *", async () => {
  if (!router || config.auditRetentionDays === null) return;
  await pruneAudit(kv, router.svc.now() - config.auditRetentionDays * 86_400_000);
});

if (config.adminTokenGenerated) {
  console.log(`development admin token (shown once): ${config.adminToken}`);
}
const providerNames = providers.names();
consoleLogger("info", "starting", {
  billing_mode: config.billingMode,
  kv: config.kvPath ?? "deno-deploy",
  outbox_delivery: config.outboxDelivery,
  providers: providerNames,
});
if (config.billingMode === "production" && config.stripeWebhookSecrets.length === 0) {
  consoleLogger(
    "warn",
    "STRIPE_WEBHOOK_SECRET is unset: paid Checkout Sessions cannot be credited",
  );
}
if (providerNames.length === 0) {
  consoleLogger(
    "warn",
    "no provider is configured: set OPENAI_API_KEY (or another provider's key)",
  );
}

// Listening from the start: /healthz answers and /readyz says 503 until migrations are done.
const lifecycle = new Lifecycle();
// Deno Deploy chooses the address itself unless one is configured explicitly.
const onDeploy = Deno.env.get("DENO_DEPLOYMENT_ID") !== undefined;
const explicitAddress = Deno.env.get("PORT") !== undefined ||
  Deno.env.get("LISTEN_HOST") !== undefined;
const handler = lifecycle.fetch;
const onListen = ({ hostname, port }: Deno.NetAddr) =>
  consoleLogger("info", "listening", { url: `http://${hostname}:${port}` });
let server: Deno.HttpServer;
try {
  // Deno Deploy owns the connections; elsewhere they are accepted under the connection limits.
  server = onDeploy
    ? Deno.serve({
      ...(explicitAddress ? { port: config.port, hostname: config.listenHost } : {}),
      onListen,
    }, handler)
    : serveWithLimits(
      { port: config.port, hostname: config.listenHost, onListen },
      {
        headerTimeoutMs: config.headerTimeoutMs,
        idleTimeoutMs: config.idleTimeoutMs,
        maxConnectionsPerClient: config.maxConnectionsPerClient,
        uncapped: trustedProxies(config.trustedProxies),
      },
      handler,
      consoleLogger,
    );
} catch (e) {
  // A port taken or refused is PORT's; an address this machine does not have is LISTEN_HOST's.
  const name = e instanceof Deno.errors.AddrInUse || e instanceof Deno.errors.PermissionDenied
    ? "PORT"
    : "LISTEN_HOST";
  console.error(
    new ConfigError(
      `configuration error: ${name}: cannot listen on ${config.listenHost}:${config.port}: ${
        (e as Error).message
      }`,
    ).message,
  );
  Deno.exit(1);
}

const starting = new AbortController();
const started = (async () => {
  await migrateSchema(kv, { log: consoleLogger, signal: starting.signal });
  starting.signal.throwIfAborted();
  router = createApp({ kv, config, providers });
  lifecycle.ready(trustingProxies(router.app.fetch, config.trustedProxies));
  consoleLogger("info", "ready");
})();
started.catch((e) => {
  if (starting.signal.aborted) return; // the shutdown below exits
  console.error(`start failed: ${e instanceof Error ? e.message : String(e)}`);
  Deno.exit(1);
});

const shutdown = async () => {
  if (lifecycle.state === "draining") return;
  // /readyz answers 503 from here on, and new requests a retryable 503.
  // At the deadline the streams still running are ended, each with an error event and billed for
  // what it delivered.
  const drained = lifecycle.drain(
    config.shutdownGraceMs,
    (waitMs) => router?.endStreams(waitMs) ?? Promise.resolve(),
  );
  consoleLogger("info", "draining", { in_flight: lifecycle.inFlight });
  starting.abort();
  await started.catch(() => {});
  const { left } = await drained;
  if (left > 0) consoleLogger("warn", "requests cut at the shutdown deadline", { requests: left });
  else await server.shutdown();
  let code = 0;
  try {
    if (router) {
      // Stops background work (and hands back what the process holds), then records every usage
      // event still in the outbox.
      await router.close();
      await router.flush();
    }
  } catch (e) {
    consoleLogger("error", "shutdown failed", { error: String(e) });
    code = 1;
  }
  kv.close();
  Deno.exit(code);
};
Deno.addSignalListener("SIGINT", shutdown);
Deno.addSignalListener("SIGTERM", shutdown);

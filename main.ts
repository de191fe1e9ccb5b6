/** The composition root: configuration, KV, background work, and the HTTP server. */
import { ConfigError, loadConfig } from "./lib/config.ts";
import { createApp } from "./lib/app.ts";
import { readProvidersFile } from "./lib/providers/registry.ts";
import { warmUsageDigests } from "./lib/usage/warm.ts";
import { consoleLogger } from "./lib/log.ts";
import { pruneAudit } from "./lib/audit/query.ts";
import { trustedProxies, trustingProxies } from "./lib/http/client_addr.ts";
import { serveWithLimits } from "./lib/http/serve.ts";

let router;
let config;
let kv: Deno.Kv;
try {
  config = loadConfig(Deno.env.toObject());
  const providersFile = await readProvidersFile(config.providersFile);
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
  router = createApp({ kv, config, providersFile, env: Deno.env.toObject() });
} catch (e) {
  if (e instanceof ConfigError) {
    console.error(`configuration error: ${e.message}`);
    Deno.exit(1);
  }
  throw e;
}

// Deno Deploy runs crons registered at the top level, before serving; the sweep records usage
// events whose delivery was lost and releases holds of requests that died with their process.
Deno.cron("outbox and hold sweep", "* * * * *", async () => {
  await router.svc.background.sweep();
});

// After midnight UTC, yesterday becomes a closed day: digest it before customers look.
Deno.cron("usage digests", "7 0 * * *", async () => {
  await warmUsageDigests(kv);
});

// Audit retention: rows older than AUDIT_RETENTION_DAYS go (with their index); the ledger stays.
Deno.cron("audit retention", "17 * * * *", async () => {
  if (config.auditRetentionDays === null) return;
  await pruneAudit(kv, Date.now() - config.auditRetentionDays * 86_400_000);
});

if (config.adminTokenGenerated) {
  console.log(`development admin token (shown once): ${config.adminToken}`);
}
const providers = router.svc.providers.names();
consoleLogger("info", "starting", {
  billing_mode: config.billingMode,
  kv: config.kvPath ?? "deno-deploy",
  outbox_delivery: config.outboxDelivery,
  providers,
});
if (config.billingMode === "production" && config.stripeWebhookSecrets.length === 0) {
  consoleLogger(
    "warn",
    "STRIPE_WEBHOOK_SECRET is unset: paid Checkout Sessions cannot be credited",
  );
}
if (providers.length === 0) {
  consoleLogger(
    "warn",
    "no provider is configured: set OPENAI_API_KEY (or another provider's key)",
  );
}

// Deno Deploy chooses the address itself unless one is configured explicitly.
const onDeploy = Deno.env.get("DENO_DEPLOYMENT_ID") !== undefined;
const explicitAddress = Deno.env.get("PORT") !== undefined ||
  Deno.env.get("LISTEN_HOST") !== undefined;
const handler = trustingProxies(router.app.fetch, config.trustedProxies);
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

const shutdown = async () => {
  await server.shutdown();
  await router.close();
  kv.close();
  Deno.exit(0);
};
Deno.addSignalListener("SIGINT", shutdown);
Deno.addSignalListener("SIGTERM", shutdown);

import { z } from "zod";
import { type CreditPackage, loadPackages } from "./billing/packages.ts";
import { canonicalProxy } from "./net.ts";
import { randomToken } from "./crypto.ts";
import { ConfigError } from "./errors.ts";
import { DEFAULT_MAX_SSE_EVENT_BYTES } from "./sse.ts";
import type { LeaseOptions } from "./billing/local_lease.ts";

// lib/providers/registry.ts still imports it from here.
export { ConfigError };

/** A provider's upstream: its key and base URL. A provider without a key is not offered. */
export interface UpstreamConfig {
  apiKey: string | undefined;
  baseUrl: string;
}

export interface Config {
  port: number;
  listenHost: string;
  maxBodyBytes: number;
  /** Largest body of a page's form (sign-in, sign-up, the dashboard's forms). */
  pageBodyBytes: number;
  /** Largest body of the Stripe webhook, refused before its signature is checked. */
  webhookBodyBytes: number;
  /** Longest a request body may take to arrive, from the first read of it. */
  bodyTimeoutMs: number;
  /** Longest a new connection may take to send its first request's headers. */
  headerTimeoutMs: number;
  /** Longest a connection may stay open between two requests. */
  idleTimeoutMs: number;
  /** Most connections open at once from one client (IPv4 address or IPv6 /64); 0: no cap. */
  maxConnectionsPerClient: number;
  upstreamTimeoutMs: number;
  /** The longest a stream may run before it is ended and billed. */
  maxStreamMs: number;
  /** The largest event a provider's stream may send (characters as decoded). */
  maxSseEventBytes: number;
  /** The largest JSON reply read from a provider. */
  maxUpstreamBodyBytes: number;
  kvPath: string | undefined;
  adminToken: string | undefined;
  /** True when the admin token was generated at start (development) rather than configured. */
  adminTokenGenerated: boolean;
  /** A token that opens `GET /metrics` only (the admin token opens it too). */
  metricsToken: string | undefined;
  billingMode: "development" | "production";
  /** Default discount below market rate, in basis points (20 % = 2000). */
  discountBps: number;
  openai: UpstreamConfig;
  anthropic: UpstreamConfig;
  gemini: UpstreamConfig;
  providersFile: string | undefined;
  stripeSecretKey: string | undefined;
  stripeWebhookSecrets: string[];
  stripeApiBase: string | undefined;
  publicUrl: string | undefined;
  /** How usage events reach the ledger: a KV queue, or the in-process drainer and cron. */
  outboxDelivery: "queue" | "drainer";
  /** How long an unsettled hold lives before the sweeper releases it. */
  holdTtlMs: number;
  /** How long SIGTERM/SIGINT waits for the requests and streams in flight. */
  shutdownGraceMs: number;
  /** The credit packages offered for purchase. */
  packages: CreditPackage[];
  /** Audit rows older than this many days are deleted (the ledger never is); null keeps all. */
  auditRetentionDays: number | null;
  /**
   * Reverse proxies (canonical IPs) whose `X-Forwarded-For` names the client; empty: the socket
   * address is the client's and the header is ignored.
   */
  trustedProxies: string[];
  /** WEBHOOK_ALLOW_PRIVATE_URLS: customer webhooks may reach private and loopback addresses. */
  webhookAllowPrivateUrls: boolean;
  /**
   * Benchmarks only: every KV call waits this long first, a stand-in for a remote KV's round trip
   * (Deno Deploy's); 0 in production.
   */
  kvSimulatedLatencyMs: number;
  /** Balance leases (BALANCE_LEASES, LEASE_TTL_MS, LEASE_IDLE_MS); null when turned off. */
  leases: LeaseOptions | null;
}

const int = (min: number, max: number) =>
  z.string().regex(/^\d+$/, "must be a whole number").transform(Number).pipe(
    z.number().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`),
  );

const url = z.string().refine((v) => {
  try {
    const u = new URL(v);
    return u.protocol === "https:" || u.protocol === "http:";
  } catch {
    return false;
  }
}, "must be an http(s) URL");

/** A comma-separated list of IP addresses and CIDR ranges, each in its canonical form. */
const proxyList = z.string().transform((v, ctx) => {
  const out: string[] = [];
  for (const part of v.split(",").map((p) => p.trim()).filter(Boolean)) {
    const ip = canonicalProxy(part);
    if (ip === null) {
      ctx.addIssue({
        code: "custom",
        message: `"${part.slice(0, 60)}" is not an IP address or CIDR range (comma-separated)`,
      });
      return z.NEVER;
    }
    out.push(ip);
  }
  return out;
});

const schema = z.object({
  PORT: int(0, 65535).default(8000),
  LISTEN_HOST: z.string().regex(
    /^[A-Za-z0-9.:-]+$/,
    "must be a host name or IP address",
  ).default("127.0.0.1"),
  MAX_BODY_BYTES: int(1024, 1 << 30).default(10 * 1024 * 1024),
  PAGE_BODY_BYTES: int(1024, 1 << 30).default(64 * 1024),
  WEBHOOK_BODY_BYTES: int(1024, 1 << 30).default(1024 * 1024),
  BODY_TIMEOUT_MS: int(100, 3_600_000).default(60_000),
  HEADER_TIMEOUT_MS: int(100, 3_600_000).default(20_000),
  IDLE_TIMEOUT_MS: int(100, 3_600_000).default(75_000),
  MAX_CONNECTIONS_PER_CLIENT: int(0, 1_000_000).default(256),
  UPSTREAM_TIMEOUT_MS: int(1, 3_600_000).default(300_000),
  MAX_STREAM_MS: int(1, 86_400_000).default(3_600_000),
  MAX_SSE_EVENT_BYTES: int(1024, 1 << 30).default(DEFAULT_MAX_SSE_EVENT_BYTES),
  MAX_UPSTREAM_BODY_BYTES: int(1024, 1 << 30).default(64 * 1024 * 1024),
  KV_PATH: z.string().min(1).optional(),
  ADMIN_TOKEN: z.string().min(16, "must be at least 16 characters").optional(),
  METRICS_TOKEN: z.string().min(16, "must be at least 16 characters").optional(),
  BILLING_MODE: z.enum(["development", "production"]).optional(),
  DISCOUNT_PERCENT: z.string().regex(
    /^\d{1,2}(\.\d{1,2})?$|^100$/,
    "must be a percent from 0 to 100",
  )
    .transform((v) => Math.round(Number(v) * 100)).default(2000),
  OPENAI_API_KEY: z.string().min(1).optional(),
  OPENAI_BASE_URL: url.default("https://api.openai.com/v1"),
  ANTHROPIC_API_KEY: z.string().min(1).optional(),
  ANTHROPIC_BASE_URL: url.default("https://api.anthropic.com"),
  GEMINI_API_KEY: z.string().min(1).optional(),
  GEMINI_BASE_URL: url.default("https://generativelanguage.googleapis.com"),
  PROVIDERS_FILE: z.string().min(1).optional(),
  STRIPE_SECRET_KEY: z.string().min(1).optional(),
  STRIPE_WEBHOOK_SECRET: z.string().min(1).optional(),
  STRIPE_API_BASE: url.optional(),
  PUBLIC_URL: url.optional(),
  OUTBOX_DELIVERY: z.enum(["auto", "queue", "drainer"]).default("auto"),
  HOLD_TTL_MS: int(1000, 86_400_000).optional(),
  SHUTDOWN_GRACE_MS: int(0, 3_600_000).default(30_000),
  CREDIT_PACKAGES: z.string().optional(),
  AUDIT_RETENTION_DAYS: int(1, 36_500).optional(),
  TRUSTED_PROXIES: proxyList.optional(),
  WEBHOOK_ALLOW_PRIVATE_URLS: z.enum(["true", "false"], "must be true or false").default("false"),
  KV_SIMULATED_LATENCY_MS: int(0, 1000).default(0),
  BALANCE_LEASES: z.enum(["on", "off"]).default("on"),
  LEASE_TTL_MS: int(200, 3_600_000).default(15_000),
  LEASE_IDLE_MS: int(20, 600_000).default(2000),
});

const VARIABLES = Object.keys(schema.shape);

/** Reads the configuration from an environment map; throws `ConfigError` naming the variable. */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const input: Record<string, string> = {};
  for (const name of VARIABLES) {
    const v = env[name];
    if (v !== undefined && v !== "") input[name] = v;
  }
  const parsed = schema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const name = String(issue.path[0] ?? "environment");
    throw new ConfigError(`${name}: ${issue.message}`);
  }
  const e = parsed.data;
  if (e.BILLING_MODE === "production" && !e.STRIPE_SECRET_KEY) {
    throw new ConfigError("BILLING_MODE: production needs STRIPE_SECRET_KEY");
  }
  const billingMode = e.BILLING_MODE ?? (e.STRIPE_SECRET_KEY ? "production" : "development");
  let adminToken = e.ADMIN_TOKEN;
  let adminTokenGenerated = false;
  if (!adminToken && billingMode === "development") {
    adminToken = "adm-" + randomToken();
    adminTokenGenerated = true;
  }
  const onDeploy = env.DENO_DEPLOYMENT_ID !== undefined;
  return {
    port: e.PORT,
    listenHost: e.LISTEN_HOST,
    maxBodyBytes: e.MAX_BODY_BYTES,
    pageBodyBytes: e.PAGE_BODY_BYTES,
    webhookBodyBytes: e.WEBHOOK_BODY_BYTES,
    bodyTimeoutMs: e.BODY_TIMEOUT_MS,
    headerTimeoutMs: e.HEADER_TIMEOUT_MS,
    idleTimeoutMs: e.IDLE_TIMEOUT_MS,
    maxConnectionsPerClient: e.MAX_CONNECTIONS_PER_CLIENT,
    upstreamTimeoutMs: e.UPSTREAM_TIMEOUT_MS,
    maxStreamMs: e.MAX_STREAM_MS,
    maxSseEventBytes: e.MAX_SSE_EVENT_BYTES,
    maxUpstreamBodyBytes: e.MAX_UPSTREAM_BODY_BYTES,
    kvPath: e.KV_PATH ?? (onDeploy ? undefined : "./data/router.kv"),
    adminToken,
    adminTokenGenerated,
    metricsToken: e.METRICS_TOKEN,
    billingMode,
    discountBps: e.DISCOUNT_PERCENT,
    openai: { apiKey: e.OPENAI_API_KEY, baseUrl: e.OPENAI_BASE_URL.replace(/\/+$/, "") },
    anthropic: { apiKey: e.ANTHROPIC_API_KEY, baseUrl: e.ANTHROPIC_BASE_URL.replace(/\/+$/, "") },
    gemini: { apiKey: e.GEMINI_API_KEY, baseUrl: e.GEMINI_BASE_URL.replace(/\/+$/, "") },
    providersFile: e.PROVIDERS_FILE,
    stripeSecretKey: e.STRIPE_SECRET_KEY,
    stripeWebhookSecrets: (e.STRIPE_WEBHOOK_SECRET ?? "").split(",").map((s) => s.trim())
      .filter(Boolean),
    stripeApiBase: e.STRIPE_API_BASE,
    publicUrl: e.PUBLIC_URL?.replace(/\/+$/, ""),
    // Deno Deploy and remote KV have no queues: the drainer is the only path there.
    outboxDelivery: e.OUTBOX_DELIVERY === "auto"
      ? (onDeploy ? "drainer" : "queue")
      : e.OUTBOX_DELIVERY,
    holdTtlMs: e.HOLD_TTL_MS ?? Math.max(2 * e.UPSTREAM_TIMEOUT_MS, 600_000),
    shutdownGraceMs: e.SHUTDOWN_GRACE_MS,
    packages: loadPackages(e.CREDIT_PACKAGES),
    auditRetentionDays: e.AUDIT_RETENTION_DAYS ?? null,
    trustedProxies: e.TRUSTED_PROXIES ?? [],
    webhookAllowPrivateUrls: e.WEBHOOK_ALLOW_PRIVATE_URLS === "true",
    kvSimulatedLatencyMs: e.KV_SIMULATED_LATENCY_MS,
    leases: e.BALANCE_LEASES === "off" ? null : leaseOptions(e.LEASE_TTL_MS, e.LEASE_IDLE_MS),
  };
}

/**
 * The lease timings from the two variables: leases are looked after every quarter of the idle
 * time (within an eighth of the TTL, at most every 250 ms); a reserve refused while others' leases
 * hold credit waits six such ticks for them to give it back; after a recall no lease is taken for
 * twice the idle time.
 */
export function leaseOptions(ttlMs: number, idleMs: number): LeaseOptions {
  const tickMs = Math.max(10, Math.min(250, Math.floor(idleMs / 4), Math.floor(ttlMs / 8)));
  return { ttlMs, idleMs, tickMs, recallMs: 2 * idleMs, recallWaitMs: 6 * tickMs };
}

/**
 * The router's metrics: one Prometheus registry per process (what `GET /metrics` serves, in the
 * text format), each instrument mirrored to OpenTelemetry under the same name through the global
 * meter of `@opentelemetry/api` (a no-op unless a meter provider is set, as `OTEL_DENO=true`
 * does). Every instrument is defined once, in this file. Label values come from small fixed sets
 * (provider names, offered models, statuses, error codes, kinds), never from requests as sent.
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { metrics as otel } from "@opentelemetry/api";
import { usdNumber } from "./money.ts";

/** The registry every instrument of this module is registered in. */
export const registry = new Registry();

const meter = otel.getMeter("enterprise-router");

/** A counter, in `registry` and mirrored to OpenTelemetry. */
export interface LabeledCounter<L extends string> {
  inc(labels: Record<L, string>, by?: number): void;
  /** The current value for `labels` in this process (0 if never counted). */
  get(labels: Record<L, string>): Promise<number>;
}

/** The value of `metric` (a prom-client metric) for `values`, 0 when it has none. */
async function valueOf<L extends string>(
  metric: Counter<L> | Gauge<L>,
  labels: readonly L[],
  values: Record<L, string>,
): Promise<number> {
  const data = await metric.get();
  const match = data.values.find((v) =>
    labels.every((l) => v.labels[l] === values[l as keyof typeof values])
  );
  return match?.value ?? 0;
}

/**
 * Defines a counter named `name` (Prometheus conventions: snake case, `_total`) with `labels`.
 *
 * @example
 * ```ts
 * const retries = counter("router_retries_total", "Upstream retries", ["provider"]);
 * retries.inc({ provider: "openai" });
 * ```
 */
export function counter<L extends string>(
  name: string,
  help: string,
  labels: readonly L[],
): LabeledCounter<L> {
  const prom = new Counter({ name, help, labelNames: labels, registers: [registry] });
  const mirror = meter.createCounter(name, { description: help });
  return {
    inc(values, by = 1) {
      prom.inc(values, by);
      mirror.add(by, values);
    },
    get: (values) => valueOf(prom, labels, values),
  };
}

/** A histogram of durations in seconds, in `registry` and mirrored to OpenTelemetry. */
export interface SecondsHistogram<L extends string> {
  observe(labels: Record<L, string>, seconds: number): void;
}

/**
 * Defines a histogram of durations in seconds with the bucket bounds `buckets` (the same bounds
 * are advised to OpenTelemetry).
 *
 * @example
 * ```ts
 * const wait = histogram("router_wait_seconds", "Time waited", ["provider"], [0.1, 1, 10]);
 * wait.observe({ provider: "openai" }, 0.25);
 * ```
 */
export function histogram<L extends string>(
  name: string,
  help: string,
  labels: readonly L[],
  buckets: number[],
): SecondsHistogram<L> {
  const prom = new Histogram({ name, help, labelNames: labels, buckets, registers: [registry] });
  const mirror = meter.createHistogram(name, {
    description: help,
    unit: "s",
    advice: { explicitBucketBoundaries: buckets },
  });
  return {
    observe(values, seconds) {
      prom.observe(values, seconds);
      mirror.record(seconds, values);
    },
  };
}

/** An amount of USD counted exactly (nano-USD), in `registry` and mirrored to OpenTelemetry. */
export interface UsdCounter<L extends string> {
  add(labels: Record<L, string>, nanos: bigint): void;
  /** The exact total for `labels` in this process, in nano-USD. */
  total(labels: Record<L, string>): bigint;
}

/**
 * Defines a counter of USD. Totals are kept as integer nano-USD and written to the Prometheus
 * counter when it is read, as the number nearest the exact total (a float summed one amount at a
 * time drifts from it). OpenTelemetry's counter sums the amounts itself, as floats.
 */
export function usdCounter<L extends string>(
  name: string,
  help: string,
  labels: readonly L[],
): UsdCounter<L> {
  const totals = new Map<string, { labels: Record<L, string>; nanos: bigint }>();
  const keyOf = (values: Record<L, string>) => labels.map((l) => values[l]).join("\u0000");
  new Counter({
    name,
    help,
    labelNames: labels,
    registers: [registry],
    collect() {
      this.reset();
      for (const t of totals.values()) this.inc(t.labels, usdNumber(t.nanos));
    },
  });
  const mirror = meter.createCounter(name, { description: help, unit: "USD" });
  return {
    add(values, nanos) {
      if (nanos <= 0n) return;
      const key = keyOf(values);
      const t = totals.get(key);
      if (t) t.nanos += nanos;
      else totals.set(key, { labels: { ...values }, nanos });
      mirror.add(usdNumber(nanos), values);
    },
    total: (values) => totals.get(keyOf(values))?.nanos ?? 0n,
  };
}

/** One value of an instrument read when collected. */
export interface Sample<L extends string> {
  labels: Record<L, string>;
  value: number;
}

/**
 * Defines an instrument whose values are read when collected (a scrape of `GET /metrics`, an
 * OpenTelemetry export): a gauge, or a counter that something else already counts (plain
 * counters kept since start). `read` may fail (the KV closed under it): nothing is reported then.
 */
export function observed<L extends string>(
  kind: "gauge" | "counter",
  name: string,
  help: string,
  labels: readonly L[],
  read: () => Sample<L>[] | Promise<Sample<L>[]>,
): void {
  const samples = async () => {
    try {
      return await read();
    } catch {
      return [];
    }
  };
  if (kind === "gauge") {
    new Gauge({
      name,
      help,
      labelNames: labels,
      registers: [registry],
      async collect() {
        const got = await samples();
        this.reset();
        for (const s of got) this.set(s.labels, s.value);
      },
    });
  } else {
    new Counter({
      name,
      help,
      labelNames: labels,
      registers: [registry],
      async collect() {
        const got = await samples();
        this.reset();
        for (const s of got) this.inc(s.labels, s.value);
      },
    });
  }
  const mirror = kind === "gauge"
    ? meter.createObservableGauge(name, { description: help })
    : meter.createObservableCounter(name, { description: help });
  mirror.addCallback(async (result) => {
    for (const s of await samples()) result.observe(s.value, s.labels);
  });
}

/**
 * Usage a provider reported beyond what the request's hold bounds (`kind`: `prompt`, `cached`,
 * `cache_write`, `output`, `reasoning`, `audio`, `web_searches`), or not a count at all
 * (`malformed`): clamped before it was priced.
 */
export const usageAnomalies = counter(
  "router_usage_anomalies_total",
  "Usage figures a provider reported beyond the request's hold, or malformed, clamped before pricing",
  ["provider", "kind"],
);

// Upstream latency and time to first token: from a fast cached reply to a slow reasoning model.
const LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
// A local KV file commits in a millisecond or less; a remote KV in tens of milliseconds.
const KV_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/**
 * Inference requests of a known key by the provider and model billed (empty when none was
 * resolved) and the HTTP status answered (200 for a stream, however it ended); counted when their
 * audit row's event commits, so they agree with the audit trail. Requests refused before a key
 * was known count with empty provider and model.
 */
export const requests = counter(
  "router_requests_total",
  "Inference requests, by provider, model and HTTP status",
  ["provider", "model", "status"],
);

/**
 * Inference requests that ended in an error, by its code (the audit row's `error_code`: a refusal's
 * API error code, or how a stream ended early: `upstream_stream_failed`, `stream_too_long`,
 * `shutting_down`, `client_disconnected`, `usage_missing`).
 */
export const requestErrors = counter(
  "router_request_errors_total",
  "Inference requests that ended in an error, by provider, model and error code",
  ["provider", "model", "code"],
);

/** Credit charged for usage: Σ of the ledger's usage debits written by this process. */
export const cost = usdCounter(
  "router_cost_usd_total",
  "Credit charged for inference (USD), by provider and model",
  ["provider", "model"],
);

/** The same usage at the provider's market rate. */
export const marketCost = usdCounter(
  "router_market_cost_usd_total",
  "Inference billed, at the provider's market rate (USD), by provider and model",
  ["provider", "model"],
);

/**
 * Tokens billed, by `kind`: `input` (the whole prompt), `output` (reasoning included), and the
 * parts of those: `cached` (read from a cache), `cache_write`, `reasoning`.
 */
export const tokens = counter(
  "router_tokens_total",
  "Tokens billed, by provider, model and kind (input, output, cached, cache_write, reasoning)",
  ["provider", "model", "kind"],
);

/** Each attempt's wait for a provider's reply headers; `outcome`: `ok` or the error code. */
export const upstreamDuration = histogram(
  "router_upstream_duration_seconds",
  "Time from sending a request to a provider to its reply's headers, per attempt, by outcome",
  ["provider", "model", "outcome"],
  LATENCY_BUCKETS,
);

/** From a streamed request's arrival at the router to its first event passed to the client. */
export const timeToFirstToken = histogram(
  "router_time_to_first_token_seconds",
  "Time from a streamed request's arrival to its first event sent to the client",
  ["provider", "model"],
  LATENCY_BUCKETS,
);

/** Each KV commit (an atomic or a set); `outcome`: `committed`, `conflict` or `error`. */
export const kvCommitDuration = histogram(
  "router_kv_commit_duration_seconds",
  "Time a KV commit took, by outcome (committed, conflict, error)",
  ["outcome"],
  KV_BUCKETS,
);

/**
 * Stripe webhook deliveries by `outcome`: what the event did (`credited`, `already_credited`,
 * `refunded`, `ignored`, … as the reply's `result`), or why it was refused (`invalid_signature`,
 * `retry_later`, `webhook_unconfigured`; `error` for a failure of the router's own).
 */
export const stripeWebhooks = counter(
  "router_stripe_webhooks_total",
  "Stripe webhook deliveries, by outcome",
  ["outcome"],
);

/** The account actors' counters read by the instruments (see `ActorStats`). */
type ActorCount =
  | "commits"
  | "conflicts"
  | "balance_commits"
  | "lease_reserves"
  | "committed_reserves"
  | "takes"
  | "topups"
  | "shrinks"
  | "returns"
  | "reclaims"
  | "recalls"
  | "shared_reserves";

/** What the instruments read when collected: the router this process serves (`bindMetrics`). */
export interface MetricSources {
  /** The actors' counters since start (`GET /v1/admin/stats`). */
  actorStats: Readonly<Record<ActorCount, number>>;
  /** This process's holds of requests alive: shared (in KV) and granted from its leases. */
  liveHolds(): { shared: number; lease: number };
  /** This process's balance leases. */
  leasesOpen(): number;
  /** Streams this process is passing on. */
  liveStreams(): number;
  /** Each outbox's backlog (a capped KV scan). */
  outboxes(): Promise<Record<string, { entries: number; oldestAgeS: number }>>;
  /** Holds outstanding in KV, every process's (a capped KV scan). */
  holds(): Promise<{ holds: number; held: bigint; leaseHeld: bigint }>;
}

let sources: MetricSources | null = null;

/**
 * Points the instruments read when collected at `s` (the last router built wins); the function
 * returned lets go of it (unless another router was bound since).
 */
export function bindMetrics(s: MetricSources): () => void {
  sources = s;
  return () => {
    if (sources === s) sources = null;
  };
}

/** `read` of the bound sources, shared by the instruments collected within one second. */
function shared<T>(read: (s: MetricSources) => Promise<T>): () => Promise<T | null> {
  let last: { at: number; from: MetricSources; value: Promise<T> } | null = null;
  return () => {
    const s = sources;
    if (!s) return Promise.resolve(null);
    const now = Date.now();
    if (!last || last.from !== s || now - last.at > 1000) {
      last = { at: now, from: s, value: read(s) };
    }
    return last.value;
  };
}
const outboxes = shared((s) => s.outboxes());
const holds = shared((s) => s.holds());

/** One sample per `names` entry, labelled `label`, read from the actors' counters. */
const statSamples = <L extends string>(label: L, names: Record<string, ActorCount>) => () => {
  const stats = sources?.actorStats;
  if (!stats) return [];
  return Object.entries(names).map(([value, stat]) => ({
    labels: { [label]: value } as Record<L, string>,
    value: stats[stat],
  }));
};

observed(
  "counter",
  "router_actor_commits_total",
  "Account actors' KV commits, by result (committed, conflict: another process wrote first, balance: committed writing an account's shared balance)",
  ["result"],
  statSamples("result", {
    committed: "commits",
    conflict: "conflicts",
    balance: "balance_commits",
  }),
);
observed(
  "counter",
  "router_reserves_total",
  "Holds granted or refused, by path (lease: from this process's balance lease with no KV round trip; commit: by a KV commit)",
  ["path"],
  statSamples("path", { lease: "lease_reserves", commit: "committed_reserves" }),
);
observed(
  "counter",
  "router_lease_events_total",
  "Balance lease events of this process (take, topup, shrink, return, reclaim, recall, shared_reserve)",
  ["event"],
  statSamples("event", {
    take: "takes",
    topup: "topups",
    shrink: "shrinks",
    return: "returns",
    reclaim: "reclaims",
    recall: "recalls",
    shared_reserve: "shared_reserves",
  }),
);
observed("gauge", "router_leases_open", "Balance leases this process holds", [], () => {
  return sources ? [{ labels: {}, value: sources.leasesOpen() }] : [];
});
observed(
  "gauge",
  "router_process_holds",
  "Holds of requests alive in this process, by path (shared: written to KV; lease: granted from a balance lease)",
  ["path"],
  () => {
    if (!sources) return [];
    const h = sources.liveHolds();
    return [{ labels: { path: "shared" }, value: h.shared }, {
      labels: { path: "lease" },
      value: h.lease,
    }];
  },
);
observed("gauge", "router_streams_live", "Streams this process is passing on", [], () => {
  return sources ? [{ labels: {}, value: sources.liveStreams() }] : [];
});
observed(
  "gauge",
  "router_outbox_backlog",
  "Entries waiting in an outbox (usage: events to record; webhooks: events to fan out), every process's; read up to 1000",
  ["outbox"],
  async () =>
    Object.entries(await outboxes() ?? {}).map(([outbox, b]) => ({
      labels: { outbox },
      value: b.entries,
    })),
);
observed(
  "gauge",
  "router_outbox_oldest_age_seconds",
  "Age of the oldest entry waiting in an outbox (0 when empty)",
  ["outbox"],
  async () =>
    Object.entries(await outboxes() ?? {}).map(([outbox, b]) => ({
      labels: { outbox },
      value: b.oldestAgeS,
    })),
);
observed(
  "gauge",
  "router_holds_outstanding",
  "Holds written to KV and not yet settled or released, every process's; read up to 1000",
  [],
  async () => {
    const h = await holds();
    return h ? [{ labels: {}, value: h.holds }] : [];
  },
);
observed(
  "gauge",
  "router_holds_outstanding_usd",
  "Credit held for requests in flight (USD), by path (shared: holds in KV; lease: held on balance leases as last committed)",
  ["path"],
  async () => {
    const h = await holds();
    return h
      ? [
        { labels: { path: "shared" }, value: usdNumber(h.held) },
        { labels: { path: "lease" }, value: usdNumber(h.leaseHeld) },
      ]
      : [];
  },
);

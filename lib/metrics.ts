/**
 * The router's metrics: one Prometheus registry per process (what `GET /metrics` serves, in the
 * text format), each instrument mirrored to OpenTelemetry under the same name through the global
 * meter of `@opentelemetry/api` (a no-op unless a meter provider is set, as `OTEL_DENO=true`
 * does). Label values come from small fixed sets (provider names, kinds), never from requests.
 */
import { Counter, Registry } from "prom-client";
import { metrics as otel } from "@opentelemetry/api";

/** The registry every instrument of this module is registered in. */
export const registry = new Registry();

const meter = otel.getMeter("enterprise-router");

/** A counter, in `registry` and mirrored to OpenTelemetry. */
export interface LabeledCounter<L extends string> {
  inc(labels: Record<L, string>, by?: number): void;
  /** The current value for `labels` in this process (0 if never counted). */
  get(labels: Record<L, string>): Promise<number>;
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
    async get(values) {
      const data = await prom.get();
      const match = data.values.find((v) =>
        labels.every((l) => v.labels[l] === values[l as keyof typeof values])
      );
      return match?.value ?? 0;
    },
  };
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

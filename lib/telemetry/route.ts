/**
 * `GET /metrics`: this process's instruments in Prometheus' text format, written by prom-client,
 * for an operator without an OpenTelemetry collector. It takes `Authorization: Bearer` with
 * `METRICS_TOKEN` (when set) or `ADMIN_TOKEN`.
 */
import { Hono } from "hono";
import type { AppEnv } from "../services.ts";
import { ApiError } from "../http/errors.ts";
import { presentedSecret } from "../http/auth.ts";
import { safeEqual } from "../crypto.ts";
import { registry } from "../metrics.ts";

export function metricsRoutes() {
  const app = new Hono<AppEnv>();
  app.get("/metrics", async (c) => {
    const { metricsToken, adminToken } = c.get("svc").config;
    const tokens = [metricsToken, adminToken].filter((t): t is string => !!t);
    if (tokens.length === 0) {
      throw new ApiError(503, "metrics_disabled", "Metrics are off: set METRICS_TOKEN");
    }
    const secret = presentedSecret(c.req.raw);
    // Both compared whatever the first gives: the time taken tells nothing of which matched.
    const matches = tokens.map((t) => secret !== null && safeEqual(secret, t));
    if (!matches.includes(true)) {
      throw new ApiError(401, "invalid_api_key", "The metrics token is missing or wrong");
    }
    return c.body(await registry.metrics(), 200, {
      "content-type": registry.contentType,
      "cache-control": "no-store",
    });
  });
  return app;
}

/**
 * The inference paths' tracing middleware: each request's span around everything its route does
 * (lib/telemetry/inference.ts holds the spans of its stages).
 */
import { context, SpanKind } from "@opentelemetry/api";
import type { Context } from "hono";
import { createMiddleware } from "hono/factory";
import type { InferenceEnv } from "../../routes/v1/inference.ts";
import { apiErrorOf } from "../http/errors.ts";
import { clip } from "../kv/util.ts";
import * as metrics from "../metrics.ts";
import { failSpan, requestContext, tracer } from "./trace.ts";
import { RequestTrace, traces } from "./inference.ts";

/** `gen_ai.operation.name` by inference path. */
const OPERATION: Record<string, string> = {
  "/v1/chat/completions": "chat",
  "/v1/messages": "chat",
  "/v1/responses": "chat",
  "/v1/embeddings": "embeddings",
  "/v1/messages/count_tokens": "count_tokens",
};

/**
 * Middleware of the inference paths, first of all: the request's span (named for its GenAI
 * operation, then `{operation} {model}` once the model is known), active while the request is
 * served and ended once its response is sent in full (a stream's last byte) and billed. Counts
 * the requests that leave no audit row (no key known) in `router_requests_total`.
 */
export const traceInference = createMiddleware<InferenceEnv>(async (c, next) => {
  const operation = OPERATION[c.req.path] ?? "chat";
  const span = tracer.startSpan(operation, {
    kind: SpanKind.INTERNAL,
    attributes: { "gen_ai.operation.name": operation },
  });
  if (!span.isRecording()) {
    // Tracing is off: only the count.
    await next();
    countUnaudited(c);
    return;
  }
  const trace = new RequestTrace(span, operation);
  traces.set(span, trace);
  const responded = trace.hold();
  await context.with(requestContext(span), next);
  countUnaudited(c);
  const status = c.res.status;
  const key = c.get("key");
  // The request's audit record (`inferenceAudit`, registered after this one).
  const audit = c.get("audit") as InferenceEnv["Variables"]["audit"] | undefined;
  const target = audit?.target;
  span.setAttributes({
    "http.response.status_code": status,
    "router.request.id": c.get("requestId"),
  });
  if (key) span.setAttributes({ "router.account.id": key.account_id, "router.key.id": key.id });
  if (!audit?.metered && target?.model) {
    // Refused before its hold: the model as named (it may name nothing offered).
    span.setAttribute("gen_ai.request.model", clip(target.model, 200));
    span.updateName(`${operation} ${clip(target.model, 200)}`);
  }
  const code = status >= 400 ? apiErrorOf(c.error)?.code : undefined;
  if (code) span.setAttribute("error.type", code);
  if (status >= 500) failSpan(span, code ?? `http_${status}`);
  const completed = (c.env as Deno.ServeHandlerInfo | undefined)?.completed;
  if (completed && c.res.headers.get("content-type")?.startsWith("text/event-stream")) {
    completed.then(responded, responded);
  } else responded();
});

/** Counts a request that leaves no audit row (no key was known): the others count as it commits. */
function countUnaudited(c: Context<InferenceEnv>) {
  const audit = c.get("audit") as InferenceEnv["Variables"]["audit"] | undefined;
  if (audit?.recorded || audit?.deferred || audit?.metered) return;
  metrics.requests.inc({ provider: "", model: "", status: String(c.res.status) });
}

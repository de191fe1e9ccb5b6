/**
 * Spans through `@opentelemetry/api`: Deno's built-in OpenTelemetry (`OTEL_DENO=true`) provides the
 * tracer and carries the active span across awaits; without it every call here is a no-op. Span
 * attributes are figures, ids and names: never prompt or completion text, never an error message
 * (a provider's may quote the prompt).
 */
import {
  type Attributes,
  type Context,
  context,
  createContextKey,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
} from "@opentelemetry/api";

export const tracer = trace.getTracer("enterprise-router");

/** The context key of an inference request's own span (its children find it there). */
const REQUEST_SPAN = createContextKey("enterprise-router.request-span");

/** The span of the inference request the caller runs for, if any (and if tracing is on). */
export function requestSpan(ctx: Context = context.active()): Span | undefined {
  return ctx.getValue(REQUEST_SPAN) as Span | undefined;
}

/** A context in which `span` is both the active span and the request's span. */
export function requestContext(span: Span, ctx: Context = context.active()): Context {
  return trace.setSpan(ctx, span).setValue(REQUEST_SPAN, span);
}

/** The name of what failed, for `error.type`: an API error's code, else the error's class. */
export function errorType(e: unknown): string {
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code === "string" && /^[a-z_]{1,64}$/.test(code)) return code;
  return e instanceof Error ? e.name : "unknown";
}

/** Marks `span` failed with `type` (an error code or class, never a message). */
export function failSpan(span: Span, type: string) {
  span.setAttribute("error.type", type);
  span.setStatus({ code: SpanStatusCode.ERROR });
}

/**
 * Runs `fn` in a child span of the active one, named `name`, ended when `fn` settles; a throw
 * marks it failed (`error.type`) and passes on.
 *
 * @example
 * ```ts
 * const key = await withSpan("key lookup", {}, () => keys.resolve(secret));
 * ```
 */
export function withSpan<T>(
  name: string,
  attributes: Attributes,
  fn: (span: Span) => Promise<T>,
  kind: SpanKind = SpanKind.INTERNAL,
): Promise<T> {
  return tracer.startActiveSpan(name, { kind, attributes }, async (span) => {
    try {
      return await fn(span);
    } catch (e) {
      failSpan(span, errorType(e));
      throw e;
    } finally {
      span.end();
    }
  });
}

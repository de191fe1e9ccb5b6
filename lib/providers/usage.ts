import { type NormalizedUsage, ZERO_USAGE } from "../pricing.ts";

/** Upper bound on any token count taken from an upstream: nothing real comes near it. */
export const MAX_TOKENS = 100_000_000;

/**
 * Reads token counts that came from an upstream, which is untrusted input: negative, fractional,
 * non-numeric or absurd values are clamped, and each clamp is reported so it can be logged.
 */
export class UsageReader {
  readonly anomalies: string[] = [];

  count(v: unknown, field: string): number {
    if (v === undefined || v === null) return 0;
    const n = typeof v === "number" ? v : Number.NaN;
    if (!Number.isFinite(n) || n < 0) {
      this.anomalies.push(`${field}=${String(v).slice(0, 20)} clamped to 0`);
      return 0;
    }
    if (n > MAX_TOKENS) {
      this.anomalies.push(`${field}=${n} clamped to ${MAX_TOKENS}`);
      return MAX_TOKENS;
    }
    return Math.floor(n);
  }

  /** Makes the parts consistent with their totals: cache ⊆ prompt, reasoning ⊆ completion. */
  normalize(u: NormalizedUsage): NormalizedUsage {
    const out = { ...u };
    if (out.cached + out.cacheWrite > out.prompt) {
      this.anomalies.push("cache tokens exceed prompt tokens; prompt raised to their sum");
      out.prompt = out.cached + out.cacheWrite;
    }
    if (out.reasoning > out.completion) {
      this.anomalies.push("reasoning tokens exceed completion tokens; completion raised");
      out.completion = out.reasoning;
    }
    out.cacheWrite1h = Math.min(out.cacheWrite1h, out.cacheWrite);
    return out;
  }
}

const obj = (v: unknown): Record<string, unknown> =>
  v && typeof v === "object" && !Array.isArray(v) ? v as Record<string, unknown> : {};

/**
 * OpenAI chat/embeddings usage (`prompt_tokens`, `prompt_tokens_details.cached_tokens`,
 * `completion_tokens_details.reasoning_tokens`). The router's own translated streams also carry
 * `prompt_tokens_details.cache_write_tokens` (and `cache_write_1h_tokens`) in this shape.
 */
export function readOpenAIUsage(raw: unknown, r: UsageReader): NormalizedUsage {
  const u = obj(raw);
  if (Object.keys(u).length === 0) return { ...ZERO_USAGE };
  const pd = obj(u.prompt_tokens_details);
  const cd = obj(u.completion_tokens_details);
  return r.normalize({
    prompt: r.count(u.prompt_tokens ?? u.input_tokens, "prompt_tokens"),
    completion: r.count(u.completion_tokens ?? u.output_tokens ?? 0, "completion_tokens"),
    cached: r.count(pd.cached_tokens, "cached_tokens"),
    cacheWrite: r.count(pd.cache_write_tokens, "cache_write_tokens"),
    cacheWrite1h: r.count(pd.cache_write_1h_tokens, "cache_write_1h_tokens"),
    reasoning: r.count(cd.reasoning_tokens, "reasoning_tokens"),
  });
}

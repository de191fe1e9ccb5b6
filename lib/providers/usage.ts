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
      // A number is shown; anything else is upstream text, which no log line carries.
      this.anomalies.push(`${field}=${typeof v === "number" ? v : typeof v} clamped to 0`);
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
    if (out.audioIn !== undefined) {
      out.audioIn = Math.min(out.audioIn, out.prompt - out.cacheWrite);
    }
    if (out.audioCached !== undefined) {
      out.audioCached = Math.min(out.audioCached, out.cached, out.audioIn ?? 0);
    }
    if (out.audioOut !== undefined) out.audioOut = Math.min(out.audioOut, out.completion);
    return out;
  }
}

const obj = (v: unknown): Record<string, unknown> =>
  v && typeof v === "object" && !Array.isArray(v) ? v as Record<string, unknown> : {};

/** The audio counts of a usage, only those reported (a zero where none is). */
function audioOf(audioIn: number, audioCached: number, audioOut: number) {
  return {
    ...(audioIn ? { audioIn } : {}),
    ...(audioCached ? { audioCached } : {}),
    ...(audioOut ? { audioOut } : {}),
  };
}

/**
 * OpenAI chat/embeddings usage (`prompt_tokens`, `prompt_tokens_details.cached_tokens` and
 * `audio_tokens`, `completion_tokens_details.reasoning_tokens` and `audio_tokens`). The router's
 * own translated streams also carry `prompt_tokens_details.cache_write_tokens` (and
 * `cache_write_1h_tokens`, `cached_audio_tokens`) in this shape.
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
    ...audioOf(
      r.count(pd.audio_tokens, "audio_tokens"),
      r.count(pd.cached_audio_tokens, "cached_audio_tokens"),
      r.count(cd.audio_tokens, "audio_tokens"),
    ),
  });
}

/** The web searches a usage reports, only when it reports some (absent where none). */
const searchesOf = (webSearches: number) => webSearches ? { webSearches } : {};

/**
 * Anthropic Messages usage. `input_tokens` excludes cache tokens, so the prompt is
 * input + cache reads + cache writes; `cache_creation.ephemeral_1h_input_tokens` is the part of
 * the writes priced at the one-hour rate; `server_tool_use.web_search_requests` counts the web
 * searches Anthropic ran (billed per search).
 */
export function readAnthropicUsage(raw: unknown, r: UsageReader): NormalizedUsage {
  const u = obj(raw);
  if (Object.keys(u).length === 0) return { ...ZERO_USAGE };
  const cc = obj(u.cache_creation);
  const input = r.count(u.input_tokens, "input_tokens");
  const cached = r.count(u.cache_read_input_tokens, "cache_read_input_tokens");
  const write1h = r.count(cc.ephemeral_1h_input_tokens, "ephemeral_1h_input_tokens");
  const write =
    u.cache_creation_input_tokens === undefined || u.cache_creation_input_tokens === null
      ? write1h + r.count(cc.ephemeral_5m_input_tokens, "ephemeral_5m_input_tokens")
      : r.count(u.cache_creation_input_tokens, "cache_creation_input_tokens");
  return r.normalize({
    prompt: Math.min(MAX_TOKENS, input + cached + write),
    completion: r.count(u.output_tokens, "output_tokens"),
    cached,
    cacheWrite: write,
    cacheWrite1h: write1h,
    reasoning: 0,
    ...searchesOf(
      r.count(obj(u.server_tool_use).web_search_requests, "server_tool_use.web_search_requests"),
    ),
  });
}

/** The AUDIO entries of Gemini's per-modality token counts (`[{modality, tokenCount}]`). */
function geminiAudio(details: unknown, r: UsageReader, field: string): number {
  if (!Array.isArray(details)) return 0;
  let n = 0;
  for (const d of details) {
    if (obj(d).modality === "AUDIO") n += r.count(obj(d).tokenCount, `${field}.AUDIO`);
  }
  return Math.min(MAX_TOKENS, n);
}

/**
 * Gemini `usageMetadata`. `promptTokenCount` already includes the cached part; thoughts are
 * output billed at the output rate but not included in `candidatesTokenCount`. Audio (in the
 * prompt, the tool-use prompt, the cache reads and the candidates) is priced at its own rates.
 */
export function readGeminiUsage(raw: unknown, r: UsageReader): NormalizedUsage {
  const u = obj(raw);
  if (Object.keys(u).length === 0) return { ...ZERO_USAGE };
  const thoughts = r.count(u.thoughtsTokenCount, "thoughtsTokenCount");
  const prompt = r.count(u.promptTokenCount, "promptTokenCount") +
    r.count(u.toolUsePromptTokenCount, "toolUsePromptTokenCount");
  return r.normalize({
    prompt: Math.min(MAX_TOKENS, prompt),
    completion: Math.min(
      MAX_TOKENS,
      r.count(u.candidatesTokenCount, "candidatesTokenCount") + thoughts,
    ),
    cached: r.count(u.cachedContentTokenCount, "cachedContentTokenCount"),
    cacheWrite: 0,
    cacheWrite1h: 0,
    reasoning: thoughts,
    ...audioOf(
      Math.min(
        MAX_TOKENS,
        geminiAudio(u.promptTokensDetails, r, "promptTokensDetails") +
          geminiAudio(u.toolUsePromptTokensDetails, r, "toolUsePromptTokensDetails"),
      ),
      geminiAudio(u.cacheTokensDetails, r, "cacheTokensDetails"),
      geminiAudio(u.candidatesTokensDetails, r, "candidatesTokensDetails"),
    ),
  });
}

/**
 * OpenAI Responses usage (`input_tokens`, `input_tokens_details.cached_tokens`,
 * `output_tokens_details.reasoning_tokens`); output already includes reasoning.
 */
export function readResponsesUsage(raw: unknown, r: UsageReader): NormalizedUsage {
  const u = obj(raw);
  if (Object.keys(u).length === 0) return { ...ZERO_USAGE };
  return r.normalize({
    prompt: r.count(u.input_tokens, "input_tokens"),
    completion: r.count(u.output_tokens, "output_tokens"),
    cached: r.count(obj(u.input_tokens_details).cached_tokens, "cached_tokens"),
    cacheWrite: 0,
    cacheWrite1h: 0,
    reasoning: r.count(obj(u.output_tokens_details).reasoning_tokens, "reasoning_tokens"),
  });
}

/**
 * The web searches of an OpenAI Responses reply: OpenAI reports no count in its usage but one
 * `web_search_call` output item per call of the web search tool, each billed as one search.
 */
export function responsesWebSearches(output: unknown, r: UsageReader): number {
  if (!Array.isArray(output)) return 0;
  let n = 0;
  for (const item of output) if (obj(item).type === "web_search_call") n++;
  return r.count(n, "web_search_call items");
}

/**
 * A normalized usage that counts at least `searches` web searches (two counts of one request's
 * searches are cumulative, so the larger is taken); unchanged when it already does.
 */
export function withSearches(u: NormalizedUsage, searches: number): NormalizedUsage {
  return searches > (u.webSearches ?? 0) ? { ...u, webSearches: searches } : u;
}

/** A normalized usage in OpenAI chat shape, as translated replies and streams carry it. */
export function openAIUsageOf(u: NormalizedUsage): Record<string, unknown> {
  return {
    prompt_tokens: u.prompt,
    completion_tokens: u.completion,
    total_tokens: u.prompt + u.completion,
    prompt_tokens_details: {
      cached_tokens: u.cached,
      cache_write_tokens: u.cacheWrite,
      cache_write_1h_tokens: u.cacheWrite1h,
      ...(u.audioIn ? { audio_tokens: u.audioIn } : {}),
      ...(u.audioCached ? { cached_audio_tokens: u.audioCached } : {}),
    },
    completion_tokens_details: {
      reasoning_tokens: u.reasoning,
      ...(u.audioOut ? { audio_tokens: u.audioOut } : {}),
    },
  };
}

/** The wire shapes a usage object is echoed to the client in. */
export type UsageShape = "openai" | "anthropic" | "responses";

/** Where each figure of a normalized usage goes in a shape: a path and its value. */
function figuresOf(u: NormalizedUsage, shape: UsageShape): [string[], number][] {
  switch (shape) {
    case "openai":
      return [
        [["prompt_tokens"], u.prompt],
        [["completion_tokens"], u.completion],
        [["total_tokens"], u.prompt + u.completion],
        [["prompt_tokens_details", "cached_tokens"], u.cached],
        [["prompt_tokens_details", "cache_write_tokens"], u.cacheWrite],
        [["prompt_tokens_details", "cache_write_1h_tokens"], u.cacheWrite1h],
        [["prompt_tokens_details", "audio_tokens"], u.audioIn ?? 0],
        [["prompt_tokens_details", "cached_audio_tokens"], u.audioCached ?? 0],
        [["completion_tokens_details", "reasoning_tokens"], u.reasoning],
        [["completion_tokens_details", "audio_tokens"], u.audioOut ?? 0],
      ];
    case "anthropic":
      return [
        [["input_tokens"], u.prompt - u.cached - u.cacheWrite],
        [["cache_read_input_tokens"], u.cached],
        [["cache_creation_input_tokens"], u.cacheWrite],
        [["cache_creation", "ephemeral_5m_input_tokens"], u.cacheWrite - u.cacheWrite1h],
        [["cache_creation", "ephemeral_1h_input_tokens"], u.cacheWrite1h],
        [["output_tokens"], u.completion],
        [["server_tool_use", "web_search_requests"], u.webSearches ?? 0],
      ];
    case "responses":
      return [
        [["input_tokens"], u.prompt],
        [["input_tokens_details", "cached_tokens"], u.cached],
        [["output_tokens"], u.completion],
        [["output_tokens_details", "reasoning_tokens"], u.reasoning],
        [["total_tokens"], u.prompt + u.completion],
      ];
  }
}

/**
 * The usage object a client gets: the provider's (`raw`, in `shape`) with every figure the router
 * reads replaced by the one it billed (`u`, clamped to the hold), each written where the provider
 * wrote it or where it is not zero; any other count in it that is not a non-negative number within
 * the billed total is set to 0. So no absurd or malformed upstream figure is echoed.
 */
export function echoUsage(raw: unknown, u: NormalizedUsage, shape: UsageShape) {
  const out = structuredClone(obj(raw));
  for (const [path, value] of figuresOf(u, shape)) {
    let at: Record<string, unknown> = out;
    const present = path.every((k, i) => {
      const v = at[k];
      if (i < path.length - 1) at = obj(v);
      return v !== undefined;
    });
    if (!present && value === 0) continue;
    at = out;
    for (const k of path.slice(0, -1)) {
      if (!at[k] || typeof at[k] !== "object" || Array.isArray(at[k])) at[k] = {};
      at = at[k] as Record<string, unknown>;
    }
    at[path.at(-1)!] = value;
  }
  const total = u.prompt + u.completion + (u.webSearches ?? 0);
  const sane = (v: unknown): unknown => {
    if (typeof v === "number") return Number.isFinite(v) && v >= 0 ? Math.min(v, total) : 0;
    if (Array.isArray(v)) return v.map(sane);
    if (v && typeof v === "object") {
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, sane(x)]));
    }
    return v;
  };
  return sane(out) as Record<string, unknown>;
}

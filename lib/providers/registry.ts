import { z } from "zod";
import type { Config } from "../config.ts";
import { ConfigError } from "../config.ts";
import { catalogModelIds, lookupCatalog, type PriceTable, priceTableFrom } from "../pricing.ts";
import { openai } from "./openai/mod.ts";
import { anthropic } from "./anthropic/mod.ts";
import { gemini } from "./gemini/mod.ts";
import type { ProviderAdapter, ResolvedModel, Upstream } from "./types.ts";

interface ProviderEntry {
  name: string;
  adapter: ProviderAdapter;
  upstream: Upstream;
  /** The price catalog's provider id, or null for providers priced only by the operator. */
  catalog: string | null;
  discountBps: number;
}

interface ModelOverride {
  type?: "chat" | "embedding";
  prices?: PriceTable;
  discountBps?: number;
  maxOutputTokens?: number;
}

const price = z.union([z.number().nonnegative(), z.string().regex(/^\d+(\.\d{1,9})?$/)]);
const percent = z.number().min(0).max(100);
const fileSchema = z.object({
  providers: z.record(
    z.string().regex(/^[a-z0-9][a-z0-9_-]*$/),
    z.object({
      kind: z.enum(["openai", "anthropic", "gemini"]).optional(),
      /** The price catalog's provider id (e.g. `groq`, `deepseek`), when it lists this host. */
      catalog: z.string().min(1).optional(),
      base_url: z.string().optional(),
      api_key_env: z.string().optional(),
      discount_percent: percent.optional(),
    }),
  ).default({}),
  models: z.record(
    z.string().regex(/^[a-z0-9_-]+\/.+$/, "must be provider/model"),
    z.object({
      type: z.enum(["chat", "embedding"]).optional(),
      discount_percent: percent.optional(),
      max_output_tokens: z.number().int().positive().optional(),
      prices: z.object({
        input_mtok: price,
        output_mtok: price.optional(),
        cache_read_mtok: price.optional(),
        cache_write_mtok: price.optional(),
        cache_write_1h_mtok: price.optional(),
        /** USD per thousand server-side web searches. */
        web_searches_kcount: price.optional(),
      }).optional(),
    }),
  ).default({}),
  /** Operator fallback chains: `provider/model` → the models tried, in order, when it fails. */
  fallbacks: z.record(
    z.string().regex(/^[a-z0-9_-]+\/.+$/, "must be provider/model"),
    z.array(z.string().min(1)).max(8),
  ).default({}),
  retry: z.object({
    max_retries: z.number().int().min(0).max(5).optional(),
    backoff_ms: z.number().int().min(0).max(60_000).optional(),
  }).default({}),
});
export type ProvidersFile = z.input<typeof fileSchema>;

/** Known output limits by model family; the worst case a request without max_tokens may cost. */
const OUTPUT_LIMITS: [RegExp, number][] = [
  [/^gpt-3\.5/, 4096],
  [/^gpt-4-turbo|^gpt-4$|^gpt-4-\d/, 4096],
  [/^gpt-4o|^chatgpt-4o/, 16384],
  [/^gpt-4\.1/, 32768],
  [/^gpt-5|^gpt-6/, 128000],
  [/^o\d/, 100000],
  [/^claude-(opus|sonnet)-4|^claude-3-7|^claude-haiku-4/, 64000],
  [/^claude-3-(haiku|opus|sonnet)/, 4096],
  [/^claude/, 8192],
  [/^gemini-2\.5|^gemini-3/, 65536],
  [/^gemini/, 8192],
];
const DEFAULT_OUTPUT_LIMIT = 32768;

/** A base URL must be https, or http on loopback (local servers and tests). */
export function checkBaseUrl(url: string): boolean {
  try {
    const u = new URL(url);
    if (u.protocol === "https:") return true;
    return u.protocol === "http:" &&
      (u.hostname === "localhost" || u.hostname === "[::1]" || /^127\./.test(u.hostname));
  } catch {
    return false;
  }
}

const ADAPTERS: Record<"openai" | "anthropic" | "gemini", [ProviderAdapter, string | null]> = {
  openai: [openai, null],
  anthropic: [anthropic, "anthropic"],
  gemini: [gemini, "google"],
};

/** How often and how patiently a failed attempt is retried on the same model. */
export interface RetryPolicy {
  maxRetries: number;
  backoffMs: number;
}

export type Resolution =
  | { ok: true; model: ResolvedModel }
  | { ok: false; code: "model_not_found" | "model_not_priced"; message: string };

/** The offered providers and models: a plain map, built once from the configuration. */
export class Providers {
  #providers = new Map<string, ProviderEntry>();
  #overrides = new Map<string, ModelOverride>();
  #fallbacks = new Map<string, string[]>();
  /** Retries of one model on 429, 5xx and connection errors before falling back. */
  readonly retry: RetryPolicy;

  constructor(config: Config, file: ProvidersFile | null, env: Record<string, string | undefined>) {
    const parsed = file ? fileSchema.safeParse(file) : null;
    if (parsed && !parsed.success) {
      const i = parsed.error.issues[0];
      throw new ConfigError(`PROVIDERS_FILE: ${i.path.join(".")}: ${i.message}`);
    }
    const f = parsed?.data ?? { providers: {}, models: {}, fallbacks: {}, retry: {} };
    this.retry = { maxRetries: f.retry.max_retries ?? 2, backoffMs: f.retry.backoff_ms ?? 250 };
    for (const [id, chain] of Object.entries(f.fallbacks)) this.#fallbacks.set(id, chain);
    const discount = (name: string) => {
      const p = f.providers[name]?.discount_percent;
      return p === undefined ? config.discountBps : Math.round(p * 100);
    };
    const builtin: [string, typeof config.openai, ProviderAdapter, string][] = [
      ["openai", config.openai, openai, "openai"],
      ["anthropic", config.anthropic, anthropic, "anthropic"],
      ["google", config.gemini, gemini, "google"],
    ];
    for (const [name, up, adapter, catalog] of builtin) {
      if (!up.apiKey) continue;
      if (!checkBaseUrl(up.baseUrl)) {
        throw new ConfigError(
          `${name === "google" ? "GEMINI" : name.toUpperCase()}_BASE_URL: ` +
            "must be https (http only on loopback)",
        );
      }
      this.#providers.set(name, {
        name,
        adapter,
        upstream: { baseUrl: up.baseUrl.replace(/\/+$/, ""), apiKey: up.apiKey },
        catalog,
        discountBps: discount(name),
      });
    }
    for (const [name, p] of Object.entries(f.providers)) {
      if (!p.base_url) continue; // a discount for a built-in provider
      if (!checkBaseUrl(p.base_url)) {
        throw new ConfigError(`PROVIDERS_FILE: providers.${name}.base_url: must be https`);
      }
      const apiKey = p.api_key_env ? env[p.api_key_env] : undefined;
      if (!apiKey) continue;
      const [adapter, catalog] = ADAPTERS[p.kind ?? "openai"];
      this.#providers.set(name, {
        name,
        adapter,
        upstream: { baseUrl: p.base_url.replace(/\/+$/, ""), apiKey },
        catalog: p.catalog ?? catalog,
        discountBps: discount(name),
      });
    }
    for (const [id, m] of Object.entries(f.models)) {
      const prices = m.prices ? priceTableFrom(m.prices) : undefined;
      this.#overrides.set(id, {
        type: m.type,
        prices: prices ?? undefined,
        discountBps: m.discount_percent === undefined
          ? undefined
          : Math.round(m.discount_percent * 100),
        maxOutputTokens: m.max_output_tokens,
      });
    }
  }

  /** The operator's fallback chain of a model (`provider/model` ids), empty if none. */
  fallbacksFor(m: ResolvedModel): string[] {
    return this.#fallbacks.get(`${m.provider}/${m.model}`) ??
      this.#fallbacks.get(`${m.provider}/${m.catalogId}`) ?? [];
  }

  /** Names of the providers offered (those with a key). */
  names(): string[] {
    return [...this.#providers.keys()];
  }

  /**
   * Resolves a request's `model`: `provider/model`, or a bare name looked up in each offered
   * provider's catalog. A known provider without a price for the model is `model_not_priced`.
   */
  resolve(requested: string, when = new Date()): Resolution {
    const slash = requested.indexOf("/");
    if (slash > 0) {
      const name = requested.slice(0, slash);
      const provider = this.#providers.get(name);
      if (provider) return this.#resolveIn(provider, requested.slice(slash + 1), when);
    }
    for (const provider of this.#providers.values()) {
      const r = this.#resolveIn(provider, requested, when);
      if (r.ok) return r;
    }
    return {
      ok: false,
      code: "model_not_found",
      message: `The model '${requested}' is not offered. GET /v1/models lists the models.`,
    };
  }

  #resolveIn(p: ProviderEntry, model: string, when: Date): Resolution {
    if (model.length === 0 || model.length > 200) {
      return {
        ok: false,
        code: "model_not_found",
        message: "The model name is empty or too long.",
      };
    }
    const override = this.#overrides.get(`${p.name}/${model}`);
    let catalog = p.catalog ? lookupCatalog(p.catalog, model, when) : null;
    if (catalog && p.adapter.catalogFilter && !p.adapter.catalogFilter.test(catalog.id)) {
      catalog = null;
    }
    const prices = override?.prices ?? catalog?.prices;
    if (!prices) {
      return {
        ok: false,
        code: "model_not_priced",
        message: `The model '${p.name}/${model}' has no known price, so it is not served.`,
      };
    }
    const catalogId = catalog?.id ?? model;
    const type = override?.type ?? (/embed/.test(catalogId) ? "embedding" : "chat");
    return {
      ok: true,
      model: {
        provider: p.name,
        model,
        catalogId,
        type,
        prices,
        discountBps: override?.discountBps ?? p.discountBps,
        maxOutputTokens: override?.maxOutputTokens ??
          OUTPUT_LIMITS.find(([re]) => re.test(catalogId))?.[1] ?? DEFAULT_OUTPUT_LIMIT,
        contextWindow: catalog?.contextWindow,
        adapter: p.adapter,
        upstream: p.upstream,
      },
    };
  }

  /** Every offered model: the catalog's priced models of each provider, and the operator's. */
  list(when = new Date()): ResolvedModel[] {
    const out = new Map<string, ResolvedModel>();
    for (const p of this.#providers.values()) {
      const ids = p.catalog ? catalogModelIds(p.catalog) : [];
      for (const id of ids) {
        const r = this.#resolveIn(p, id, when);
        // An embedding model is offered only by a provider whose adapter speaks embeddings.
        if (r.ok && (r.model.type === "chat" || p.adapter.embeddingsRequest)) {
          out.set(`${p.name}/${id}`, r.model);
        }
      }
    }
    for (const id of this.#overrides.keys()) {
      const r = this.resolve(id, when);
      if (r.ok) out.set(`${r.model.provider}/${r.model.model}`, r.model);
    }
    return [...out.values()];
  }
}

/** Reads PROVIDERS_FILE, if set. */
export async function readProvidersFile(path: string | undefined): Promise<ProvidersFile | null> {
  if (!path) return null;
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new ConfigError(`PROVIDERS_FILE: cannot read ${path}: ${(e as Error).message}`);
  }
}

import { startRouter, type TestRouter } from "./_helpers.ts";
import type { ProvidersFile } from "../lib/providers/registry.ts";
import type { Logger } from "../lib/log.ts";
import { type FakeAnthropic, startFakeAnthropic } from "./_fakes/anthropic.ts";
import { type FakeGemini, startFakeGemini } from "./_fakes/gemini.ts";

export interface ProviderRouter extends TestRouter {
  anthropic: FakeAnthropic;
  gemini: FakeGemini;
}

/** A router with OpenAI, Anthropic and Gemini upstreams, each a fake on loopback. */
export async function startProviders(
  opts: { env?: Record<string, string>; providersFile?: ProvidersFile; log?: Logger } = {},
): Promise<ProviderRouter> {
  const anthropic = startFakeAnthropic();
  const gemini = startFakeGemini();
  const t = await startRouter({
    env: {
      ANTHROPIC_API_KEY: "sk-ant-operator",
      ANTHROPIC_BASE_URL: anthropic.url,
      GEMINI_API_KEY: "gemini-operator",
      GEMINI_BASE_URL: gemini.url,
      ...opts.env,
    },
    providersFile: opts.providersFile,
    log: opts.log,
  });
  const close = t.close;
  return Object.assign(t, {
    anthropic,
    gemini,
    async close() {
      await close();
      await anthropic.close();
      await gemini.close();
    },
  });
}

/** Parses an SSE body into its JSON data payloads (skipping `[DONE]`). */
export function sseData(text: string): Record<string, unknown>[] {
  return text.split(/\r?\n\r?\n/).flatMap((event) => {
    const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) =>
      l.slice(5).trim()
    ).join("\n");
    return data && data !== "[DONE]" ? [JSON.parse(data)] : [];
  });
}

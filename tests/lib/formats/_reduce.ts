import { eventData, eventName } from "../../../lib/sse.ts";
import type { Step, StreamReducer } from "../../../lib/formats/format.ts";
import type { Billed } from "../../../lib/proxy/metered.ts";
import { type NormalizedUsage, ZERO_USAGE } from "../../../lib/pricing.ts";
import { loadConfig } from "../../../lib/config.ts";
import { Providers } from "../../../lib/providers/registry.ts";
import type { ResolvedModel } from "../../../lib/providers/types.ts";

/** An SSE event's text: its data as JSON, named when `name` is given. */
export const sse = (data: unknown, name?: string) =>
  (name ? `event: ${name}\n` : "") + `data: ${JSON.stringify(data)}`;

/** Runs `events` (SSE texts) through `reducer` in order: each step, and the state at the end. */
export function reduce<S>(reducer: StreamReducer<S>, events: string[]) {
  let state = reducer.init;
  const steps: Step<S>[] = [];
  for (const text of events) {
    const data = eventData(text);
    if (!data || typeof data !== "object") continue;
    const step = reducer.step(state, {
      data: data as Record<string, unknown>,
      name: eventName(text),
      text,
    });
    steps.push(step);
    state = step.state;
  }
  return { state, steps, final: steps.filter((s) => s.final) };
}

/** A charge, to render the events that show one. */
export const BILLED: Billed = {
  cost: 1_500_000n,
  market: 2_000_000n,
  usage: { ...ZERO_USAGE, prompt: 10, completion: 5 },
};

/** What a step sends in its event's place, with `BILLED` where it shows the charge. */
export const rendered = (step: Step<unknown>) =>
  typeof step.out === "function" ? step.out(BILLED) : step.out;

/** No bound reached: the usage as reported. */
export const unbounded = (u: NormalizedUsage) => u;

/** A model of the router's catalog, as a request resolves it (no upstream is called). */
export function model(name: string): ResolvedModel {
  const env = {
    OPENAI_API_KEY: "sk-test",
    ANTHROPIC_API_KEY: "sk-ant-test",
    GEMINI_API_KEY: "gemini-test",
  };
  const r = new Providers(loadConfig(env), null, env).resolve(name);
  if (!r.ok) throw new Error(r.message);
  return r.model;
}

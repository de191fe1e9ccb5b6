import assert from "node:assert/strict";
import { chatStreamToMessages } from "../../../../lib/providers/anthropic/messages_api.ts";

const head = { id: "c1", object: "chat.completion.chunk", model: "m" };
const chunk = (
  delta: Record<string, unknown>,
  finish: string | null,
  usage?: Record<string, number>,
) => ({
  ...head,
  choices: [{ index: 0, delta, finish_reason: finish }],
  ...(usage ? { usage } : {}),
});

/** The Messages events a chat stream of `chunks` becomes. */
async function translate(chunks: unknown[]): Promise<Record<string, unknown>[]> {
  const body = chunks.map((c) => `data: ${JSON.stringify(c)}\n\n`).join("") + "data: [DONE]\n\n";
  const out = await new Response(chatStreamToMessages(new Response(body).body!, "m")).text();
  return out.split("\n").filter((l) => l.startsWith("data: ")).map((l) => JSON.parse(l.slice(6)));
}

const finalUsage = (events: Record<string, unknown>[]) => {
  const deltas = events.filter((e) => e.type === "message_delta");
  assert.equal(deltas.length, 1, "one message_delta");
  return deltas[0].usage as Record<string, number>;
};

Deno.test("chatStreamToMessages: a running usage before the finish waits for the usage chunk that follows", async () => {
  const events = await translate([
    chunk({ content: "Hel" }, null, { prompt_tokens: 10, completion_tokens: 1 }),
    chunk({ content: "lo" }, null, { prompt_tokens: 10, completion_tokens: 2 }),
    chunk({}, "stop"),
    { ...head, choices: [], usage: { prompt_tokens: 10, completion_tokens: 3 } },
  ]);
  assert.equal(finalUsage(events).output_tokens, 3, "the final usage, not the last running one");
  assert.equal(finalUsage(events).input_tokens, 10);
});

Deno.test("chatStreamToMessages: a running usage on the finishing chunk is final; so is OpenAI's usage chunk", async () => {
  const riding = await translate([
    chunk({ content: "Hi" }, null, { prompt_tokens: 10, completion_tokens: 1 }),
    chunk({}, "stop", { prompt_tokens: 10, completion_tokens: 2 }),
  ]);
  assert.equal(finalUsage(riding).output_tokens, 2);
  const openai = await translate([
    chunk({ content: "Hi" }, null),
    chunk({}, "stop"),
    { ...head, choices: [], usage: { prompt_tokens: 10, completion_tokens: 4 } },
  ]);
  assert.equal(finalUsage(openai).output_tokens, 4);
});

Deno.test("chatStreamToMessages: a running usage never followed by a final one is billed at the upstream's end", async () => {
  const events = await translate([
    chunk({ content: "Hi" }, null, { prompt_tokens: 10, completion_tokens: 1 }),
    chunk({}, "stop"),
  ]);
  assert.equal(finalUsage(events).output_tokens, 1);
  assert.equal(events.at(-1)!.type, "message_stop");
});

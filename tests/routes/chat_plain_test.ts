import assert from "node:assert/strict";
import { chatRequest, plainChat } from "../../routes/v1/chat.ts";

const hi = [{ role: "user", content: "hi" }];
const bodies: unknown[] = [
  { model: "openai/gpt-4o-mini", messages: hi },
  { model: "openai/gpt-4o-mini", messages: hi, max_tokens: 64, stream: true },
  { model: "m", messages: hi, stream_options: { include_usage: true }, n: 2, extra: [1, 2] },
  { model: "m", messages: hi, stream: null, stream_options: null, max_tokens: null, n: null },
  { model: "m", messages: hi, models: [], max_completion_tokens: 10_000_000 },
  { model: "m", messages: hi, models: ["a", "b"], tools: [{ type: "function" }] },
  { model: "m", messages: [{ role: "" }] },
  // Each of these is invalid, or (models only) rewritten by the schema: zod decides.
  { models: ["a", "b"], messages: hi },
  { model: "", messages: hi },
  { model: 42, messages: hi },
  { model: "m", messages: [] },
  { model: "m", messages: [["user"]] },
  { model: "m", messages: [{ content: "no role" }] },
  { model: "m", messages: [null] },
  { model: "m", messages: hi, stream: "yes" },
  { model: "m", messages: hi, stream_options: { include_usage: null } },
  { model: "m", messages: hi, stream_options: [] },
  { model: "m", messages: hi, max_tokens: 0 },
  { model: "m", messages: hi, max_tokens: 1.5 },
  { model: "m", messages: hi, max_tokens: "100" },
  { model: "m", messages: hi, max_completion_tokens: 10_000_001 },
  { model: "m", messages: hi, n: 129 },
  { model: "m", messages: hi, models: ["a", ""] },
  { model: "m", messages: hi, models: Array(9).fill("a") },
  { model: "m", messages: hi, models: "a" },
  [],
  null,
  "text",
];

Deno.test("the chat body's hand check accepts only what the schema accepts, unchanged", () => {
  let accepted = 0;
  for (const body of bodies) {
    const plain = plainChat(structuredClone(body));
    const zod = chatRequest.safeParse(structuredClone(body));
    if (plain === null) continue;
    accepted++;
    assert.ok(zod.success, `accepted by hand, refused by the schema: ${JSON.stringify(body)}`);
    assert.deepEqual(plain, zod.data, JSON.stringify(body));
  }
  assert.equal(accepted, 7);
});

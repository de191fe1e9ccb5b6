import assert from "node:assert/strict";
import OpenAI from "openai";
import { json, startRouter } from "../_helpers.ts";

const PROMPT_CANARY = `canary-prompt-${crypto.randomUUID()}`;
const REPLY_CANARY = `canary-reply-${crypto.randomUUID()}`;

/** Does `bytes` contain `text` in ASCII/UTF-8 or UTF-16LE (V8 serializes strings either way)? */
function contains(bytes: Uint8Array, text: string): boolean {
  const forms = [
    new TextEncoder().encode(text),
    new Uint8Array([...text].flatMap((ch) => [ch.charCodeAt(0) & 0xff, ch.charCodeAt(0) >> 8])),
  ];
  return forms.some((needle) => {
    outer: for (let i = 0; i + needle.length <= bytes.length; i++) {
      for (let j = 0; j < needle.length; j++) if (bytes[i + j] !== needle[j]) continue outer;
      return true;
    }
    return false;
  });
}

/** The KV file and its SQLite companions (-wal, -shm), whichever exist. */
async function kvBytes(path: string): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for (const suffix of ["", "-wal", "-shm", "-journal"]) {
    try {
      out.push(await Deno.readFile(path + suffix));
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  return out;
}

Deno.test("canary text in prompts and completions never reaches the KV file or the logs", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/router.kv`;
  const logs: string[] = [];
  const t = await startRouter({
    kvPath,
    // The stalled stream below ends at this idle timeout; long enough that no other request of the
    // test meets it on a loaded machine.
    env: { UPSTREAM_TIMEOUT_MS: "2000" },
    providersFile: { retry: { max_retries: 1, backoff_ms: 1 } },
    log: (level, msg, fields) =>
      logs.push(
        JSON.stringify({ level, msg, ...fields }, (_k, v) => typeof v === "bigint" ? String(v) : v),
      ),
  });
  try {
    const { key, mgmt } = await t.account("5");
    const client = new OpenAI({ apiKey: key, baseURL: `${t.url}/v1`, maxRetries: 0 });
    const messages = [
      { role: "system" as const, content: `You are ${PROMPT_CANARY}` },
      { role: "user" as const, content: `Repeat ${PROMPT_CANARY}` },
    ];
    // Non-streaming: the fake echoes the prompt and adds the reply canary.
    t.openai.scenario = { content: `Echo ${PROMPT_CANARY} ${REPLY_CANARY}` };
    const r = await client.chat.completions.create({ model: "gpt-4o-mini", messages });
    assert.ok(
      r.choices[0].message.content!.includes(REPLY_CANARY),
      "the reply did reach the client",
    );
    // Streaming, with and without the usage chunk.
    for (const include_usage of [true, false]) {
      const s = await client.chat.completions.create({
        model: "gpt-4o-mini",
        messages,
        stream: true,
        stream_options: { include_usage },
      });
      let text = "";
      for await (const chunk of s) text += chunk.choices[0]?.delta?.content ?? "";
      assert.ok(text.includes(REPLY_CANARY));
    }
    // Usage the router must clamp (it logs the anomaly, not the content).
    t.openai.scenario = {
      content: REPLY_CANARY,
      usage: {
        prompt_tokens: -5,
        completion_tokens: 3,
        completion_tokens_details: { reasoning_tokens: 9 },
      },
    };
    await client.chat.completions.create({ model: "gpt-4o-mini", messages });
    // A stream without usage, counted by the router, and one that stalls.
    t.openai.scenario = { content: REPLY_CANARY, omitUsage: true };
    for await (
      const _ of await client.chat.completions.create({
        model: "gpt-4o-mini",
        messages,
        stream: true,
      })
    ) { /* drain */ }
    t.openai.scenario = { content: `${REPLY_CANARY} ${REPLY_CANARY}`, chunks: 4, stallAfter: 3 };
    const stalled = await t.call(key, "POST", "/v1/chat/completions", {
      model: "gpt-4o-mini",
      messages,
      stream: true,
    });
    await stalled.text();
    // Embeddings.
    t.openai.scenario = {};
    await client.embeddings.create({
      model: "text-embedding-3-small",
      input: [PROMPT_CANARY, `again ${PROMPT_CANARY}`],
    });
    // Upstream errors whose bodies quote the prompt, and a router-side refusal.
    for (const status of [500, 400, 429]) {
      t.openai.scenario = { status };
      const res = await t.call(key, "POST", "/v1/chat/completions", {
        model: "gpt-4o-mini",
        messages,
      });
      const text = await res.text();
      assert.ok(!text.includes(PROMPT_CANARY), `the ${status} body is not echoed to the client`);
    }
    const refused = await t.call(key, "POST", "/v1/chat/completions", {
      model: "gpt-4o-mini",
      messages,
      max_tokens: 10_000_000,
    });
    assert.ok(!(await refused.text()).includes(PROMPT_CANARY));
    const malformed = await t.call(
      key,
      "POST",
      "/v1/chat/completions",
      `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"${PROMPT_CANARY}"}`,
    );
    assert.ok(!(await malformed.text()).includes(PROMPT_CANARY));
    const badType = await t.call(key, "POST", "/v1/chat/completions", {
      model: "gpt-4o-mini",
      messages: PROMPT_CANARY,
    });
    assert.ok(
      !(await badType.text()).includes(PROMPT_CANARY),
      "a validation error does not quote the input",
    );

    await t.router.flush();
    const audit = await json(await t.call(mgmt, "GET", "/v1/audit?limit=1000"), 200);
    assert.ok(audit.data.length >= 10, "the requests were recorded");
    const exported = await (await t.call(mgmt, "GET", "/v1/audit/export?format=csv")).text();
    assert.ok(!exported.includes(PROMPT_CANARY) && !exported.includes(REPLY_CANARY));
    await t.assertBooks();
    assert.ok(
      t.openai.requests.some((b) => JSON.stringify(b).includes(PROMPT_CANARY)),
      "the upstream did get the prompt",
    );
    // While the KV is open (WAL not yet checkpointed) ...
    for (const bytes of await kvBytes(kvPath)) {
      assert.ok(!contains(bytes, PROMPT_CANARY), "no prompt text in the KV file");
      assert.ok(!contains(bytes, REPLY_CANARY), "no completion text in the KV file");
    }
  } finally {
    await t.close();
  }
  // ... and after it closed.
  const files = await kvBytes(kvPath);
  assert.ok(files.length > 0 && files[0].length > 0);
  // The search does find what is stored: the account's name and the audit rows' model.
  assert.ok(
    files.some((b) => contains(b, "Test Co")) && files.some((b) => contains(b, "gpt-4o-mini")),
  );
  for (const bytes of files) {
    assert.ok(!contains(bytes, PROMPT_CANARY), "no prompt text in the KV file");
    assert.ok(!contains(bytes, REPLY_CANARY), "no completion text in the KV file");
  }
  assert.ok(logs.length > 0, "the router did log (anomalies, failed attempts, counted streams)");
  for (const line of logs) {
    assert.ok(
      !line.includes(PROMPT_CANARY) && !line.includes(REPLY_CANARY),
      `log line leaks: ${line.slice(0, 200)}`,
    );
  }
  await Deno.remove(dir, { recursive: true });
});

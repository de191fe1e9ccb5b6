/**
 * A stream that never ends keeps the router's memory flat: the tap keeps a bounded part of what it
 * passed on, not every chunk. Measured on main.ts as a process of its own, from /proc.
 */
import assert from "node:assert/strict";
import { spawnRouter } from "../_main.ts";
import { serveLoopback } from "../_fakes/serve.ts";

const MiB = 1024 * 1024;
const ADMIN_TOKEN = "memory-test-admin-token-0123456789";
const enc = new TextEncoder();

/** A figure of /proc/<pid>/status, in bytes (`VmHWM` is the peak resident set). */
function procStatus(pid: number, field: "VmRSS" | "VmHWM"): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status);
  assert.ok(m, `no ${field} in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

const hasProc = await Deno.stat("/proc/self/status").then(() => true, () => false);

/** A provider whose streams never end: OpenAI chat chunks or Anthropic events, 8 KiB of text each. */
function endlessUpstream() {
  const text = "m".repeat(8 * 1024);
  const sse = (name: string | null, data: unknown) =>
    enc.encode(`${name ? `event: ${name}\n` : ""}data: ${JSON.stringify(data)}\n\n`);
  const chat = sse(null, {
    id: "chatcmpl-1",
    object: "chat.completion.chunk",
    created: 1,
    model: "gpt-4o-mini",
    choices: [{ index: 0, delta: { content: text }, finish_reason: null }],
  });
  const messageStart = sse("message_start", {
    type: "message_start",
    message: {
      id: "msg_1",
      type: "message",
      role: "assistant",
      model: "claude-haiku-4-5",
      content: [],
      stop_reason: null,
      stop_sequence: null,
      usage: { input_tokens: 10, output_tokens: 1 },
    },
  });
  const delta = sse("content_block_delta", {
    type: "content_block_delta",
    index: 0,
    delta: { type: "text_delta", text },
  });
  return serveLoopback(async (req) => {
    await req.body?.cancel();
    const anthropic = new URL(req.url).pathname === "/v1/messages";
    let first = anthropic;
    return new Response(
      new ReadableStream<Uint8Array>({
        pull(ctrl) {
          ctrl.enqueue(first ? messageStart : anthropic ? delta : chat);
          first = false;
        },
      }),
      { headers: { "content-type": "text/event-stream" } },
    );
  });
}

Deno.test({
  name:
    "an endless stream, passed through or translated, leaves the router's peak memory within a fixed bound",
  ignore: !hasProc,
}, async () => {
  const upstream = endlessUpstream();
  const router = await spawnRouter({
    ADMIN_TOKEN,
    KV_PATH: ":memory:",
    OPENAI_API_KEY: "sk-upstream",
    OPENAI_BASE_URL: `${upstream.origin}/v1`,
    ANTHROPIC_API_KEY: "sk-ant-upstream",
    ANTHROPIC_BASE_URL: upstream.origin,
  });
  try {
    const call = async (auth: string, path: string, body: unknown) =>
      await fetch(router.url + path, {
        method: "POST",
        headers: { authorization: `Bearer ${auth}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    const account = await (await call(ADMIN_TOKEN, "/v1/admin/accounts", { name: "M" })).json();
    const credit = await call(ADMIN_TOKEN, `/v1/admin/accounts/${account.id}/adjustments`, {
      amount: "100",
      reason: "test credit",
    });
    assert.equal(credit.status, 201);
    await credit.body?.cancel();
    const { key } = await (await call(account.management_key, "/v1/keys", { name: "k" })).json();

    /** Reads `bytes` of a stream of `model`, then goes away. */
    const stream = async (model: string, bytes: number) => {
      const res = await call(key, "/v1/chat/completions", {
        model,
        stream: true,
        max_tokens: 100,
        messages: [{ role: "user", content: "go on forever" }],
      });
      assert.equal(res.status, 200);
      const reader = res.body!.getReader();
      let read = 0;
      while (read < bytes) {
        const r = await reader.read();
        assert.ok(!r.done, `the stream ended after ${read} bytes`);
        read += r.value.length;
      }
      await reader.cancel();
    };
    const pid = router.child.pid;
    // Warm up both paths, so that the process has its working size.
    await stream("gpt-4o-mini", 16 * MiB);
    await stream("claude-haiku-4-5", 16 * MiB);
    const before = procStatus(pid, "VmHWM");
    await stream("gpt-4o-mini", 192 * MiB);
    await stream("claude-haiku-4-5", 192 * MiB);
    const growth = procStatus(pid, "VmHWM") - before;
    assert.ok(
      growth < 128 * MiB,
      `peak RSS grew by ${(growth / MiB).toFixed(0)} MiB while 384 MiB streamed`,
    );
    // Every stream was settled, and the books agree once the router has recorded its events.
    let books;
    for (let i = 0; i < 100; i++) {
      const res = await fetch(`${router.url}/v1/admin/verify`, {
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      books = await res.json();
      if (books.pending_events === 0 && books.ok) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual([books.ok, books.pending_events, books.differences], [true, 0, []]);
    const res = await fetch(`${router.url}/v1/admin/accounts/${account.id}`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    assert.equal((await res.json()).reserved, "0", "no hold left");
  } finally {
    await router.stop();
    await upstream.close();
  }
});

import assert from "node:assert/strict";
import { tapStream } from "../../../lib/proxy/tap.ts";
import { CHAT_ENDING } from "../../../lib/formats/chat.ts";

const USAGE = /"usage"\s*:\s*\{/;

const enc = new TextEncoder();

/** A byte stream (like a fetch body) that hands out `parts` one per pull, through BYOB requests. */
function byteStream(parts: Uint8Array[]): ReadableStream<Uint8Array> {
  const queue = parts.map((p) => p.slice());
  return new ReadableStream({
    type: "bytes",
    autoAllocateChunkSize: 64 * 1024,
    pull(ctrl) {
      const req = ctrl.byobRequest!;
      const head = queue[0];
      if (!head) {
        ctrl.close();
        req.respond(0);
        return;
      }
      const view = req.view!;
      const n = Math.min(view.byteLength, head.length);
      new Uint8Array(view.buffer, view.byteOffset, n).set(head.subarray(0, n));
      if (n === head.length) queue.shift();
      else queue[0] = head.subarray(n);
      req.respond(n);
    },
  }) as ReadableStream<Uint8Array>;
}

async function readAll(s: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for await (const c of s) chunks.push(c);
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

Deno.test("tapStream over a byte stream: large and cut chunks pass through byte for byte, usage tapped once", async () => {
  // A 40 KB event (beyond one 16 KiB read), multi-byte characters, and the usage event cut in two.
  const big = `data: ${JSON.stringify({ choices: [{ delta: { content: "é🚀".repeat(8000) } }] })}`;
  const usage = `data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 3 } })}`;
  const text = `${big}\n\ndata: ${JSON.stringify({ choices: [{ delta: { content: "ü" } }] })}\n\n` +
    `${usage}\n\ndata: [DONE]\n\n`;
  const bytes = enc.encode(text);
  const cutAt = text.indexOf("usage") + 3;
  const cutBytes = enc.encode(text.slice(0, cutAt)).length;
  const parts = [bytes.subarray(0, 7), bytes.subarray(7, cutBytes), bytes.subarray(cutBytes)];

  const seen: unknown[] = [];
  const ends: string[] = [];
  let delivered = "";
  const out = await readAll(tapStream(byteStream(parts), {
    ending: CHAT_ENDING,
    watch: USAGE,
    onEvent: ({ data }) => {
      seen.push(data.usage);
      return Promise.resolve({ final: true, out: usage });
    },
    delivered: (t) => delivered += t,
    onEnd: (kind) => {
      ends.push(kind);
      return Promise.resolve();
    },
  }, { idleMs: 60_000 }));

  assert.equal(new TextDecoder().decode(out), text);
  assert.deepEqual(seen, [{ prompt_tokens: 3 }]);
  assert.deepEqual(ends, ["complete"]);
  assert.equal(delivered, text.slice(0, text.indexOf(usage)), "what went out before the usage");
});

Deno.test("tapStream over a byte stream: the client cancelling ends it once, as cancelled", async () => {
  let cancelled = false;
  const src = new ReadableStream({
    type: "bytes",
    pull(ctrl) {
      const req = ctrl.byobRequest!;
      const e = enc.encode('data: {"choices":[]}\n\n');
      new Uint8Array(req.view!.buffer, req.view!.byteOffset).set(e);
      req.respond(e.length);
    },
    cancel() {
      cancelled = true;
    },
  }) as ReadableStream<Uint8Array>;
  const ends: string[] = [];
  const tapped = tapStream(src, {
    ending: CHAT_ENDING,
    watch: USAGE,
    onEvent: () => ({}),
    onEnd: (kind) => {
      ends.push(kind);
      return Promise.resolve();
    },
  }, { idleMs: 60_000 });
  const reader = tapped.getReader();
  await reader.read();
  await reader.cancel();
  assert.deepEqual(ends, ["cancelled"]);
  assert.ok(cancelled, "the upstream is cancelled");
});

import assert from "node:assert/strict";
import { eventData } from "../../../lib/sse.ts";
import { tapStream } from "../../../lib/proxy/tap.ts";
import { CHAT_ENDING } from "../../../lib/formats/chat.ts";

const USAGE = /"usage"\s*:\s*\{/;

const chunk = (content: string) =>
  JSON.stringify({
    id: "c1",
    object: "chat.completion.chunk",
    choices: [{ index: 0, delta: { content } }],
    usage: null,
  });
const USAGE_EVENT = `data: ${
  JSON.stringify({
    id: "c1",
    object: "chat.completion.chunk",
    choices: [],
    usage: { prompt_tokens: 3, completion_tokens: 5 },
  })
}`;
const EVENTS = [
  `data: ${chunk("")}`,
  `data: ${chunk("héllo ")}`,
  ": a comment line",
  `data: ${chunk("wörld 🚀\\n")}`,
  `event: message\ndata: ${chunk("∑")}`,
  USAGE_EVENT,
  "data: [DONE]",
];

/** A byte stream of `text` cut at the given offsets (which may split UTF-8 characters). */
function cut(bytes: Uint8Array, offsets: number[]): ReadableStream<Uint8Array> {
  const parts: Uint8Array[] = [];
  let prev = 0;
  for (const o of [...offsets, bytes.length]) {
    if (o > prev) parts.push(bytes.slice(prev, o));
    prev = Math.max(prev, o);
  }
  return new ReadableStream({
    pull(ctrl) {
      const p = parts.shift();
      if (p) ctrl.enqueue(p);
      else ctrl.close();
    },
  });
}

async function run(src: ReadableStream<Uint8Array>) {
  const usages: unknown[] = [];
  const ends: string[] = [];
  let produced = "";
  const out = tapStream(src, {
    ending: CHAT_ENDING,
    watch: USAGE,
    onEvent({ data }) {
      usages.push(data.usage);
      return Promise.resolve({
        final: true,
        out: `data: ${JSON.stringify({ ...data, usage: { ...data.usage as object, cost: 1 } })}`,
      });
    },
    delivered: (text) => produced += text,
    onEnd(kind) {
      ends.push(kind);
      return Promise.resolve();
    },
  }, { idleMs: 5_000 });
  const text = await new Response(out).text();
  return { text, usages, ends, produced };
}

Deno.test("tapStream passes every byte through, however the upstream cuts it, and taps usage once", async () => {
  for (const sep of ["\n\n", "\r\n\r\n"]) {
    const input = EVENTS.map((e) => e.replaceAll("\n", sep === "\n\n" ? "\n" : "\r\n") + sep).join(
      "",
    );
    const bytes = new TextEncoder().encode(input);
    const expected = input.replace(
      USAGE_EVENT,
      `data: ${
        JSON.stringify({
          ...eventData(USAGE_EVENT) as object,
          usage: { prompt_tokens: 3, completion_tokens: 5, cost: 1 },
        })
      }`,
    );
    const cuts: number[][] = [[]];
    for (let size = 1; size <= 64; size++) {
      cuts.push(Array.from({ length: Math.ceil(bytes.length / size) }, (_, i) => i * size));
    }
    for (let i = 0; i < 50; i++) {
      cuts.push(
        Array.from({ length: 8 }, () => Math.floor(Math.random() * bytes.length)).sort((a, b) =>
          a - b
        ),
      );
    }
    for (const offsets of cuts) {
      const r = await run(cut(bytes, offsets));
      // Events are re-terminated as "\n\n" only where the router rewrote them.
      assert.equal(
        r.text.replaceAll("\r\n", "\n"),
        expected.replaceAll("\r\n", "\n"),
        `cuts ${offsets}`,
      );
      assert.deepEqual(r.usages, [{ prompt_tokens: 3, completion_tokens: 5 }]);
      assert.deepEqual(r.ends, ["complete"]);
      assert.equal(
        r.produced.replaceAll("\r\n", "\n"),
        input.slice(0, input.indexOf(USAGE_EVENT)).replaceAll("\r\n", "\n"),
        "what went out before the usage is handed over whole",
      );
    }
  }
});

Deno.test("a stream without usage still ends once, as complete", async () => {
  const input = EVENTS.filter((e) => e !== USAGE_EVENT).map((e) => e + "\n\n").join("");
  const r = await run(cut(new TextEncoder().encode(input), [5, 17, 100]));
  assert.equal(r.text, input);
  assert.deepEqual(r.usages, []);
  assert.deepEqual(r.ends, ["complete"]);
});

Deno.test("tapStream: a watched event answered as not final is replaced (or dropped) and the watch goes on", async () => {
  const running = (n: number) =>
    `data: ${
      JSON.stringify({
        id: "c1",
        choices: [{ index: 0, delta: { content: String(n) } }],
        usage: { completion_tokens: n },
      })
    }`;
  const input = [running(1), running(2), running(3), USAGE_EVENT, "data: [DONE]"]
    .map((e) => e + "\n\n").join("");
  const seen: unknown[] = [];
  const out = tapStream(cut(new TextEncoder().encode(input), [7, 60]), {
    ending: CHAT_ENDING,
    watch: USAGE,
    onEvent({ data }) {
      seen.push(data.usage);
      const n = (data.usage as { completion_tokens: number }).completion_tokens;
      if ((data.choices as unknown[]).length === 0) {
        return Promise.resolve({ final: true, out: "data: final" });
      }
      // The first passes unchanged, the second is dropped, the third rewritten.
      return Promise.resolve(n === 1 ? {} : { out: n === 2 ? null : "data: three" });
    },
    onEnd: () => Promise.resolve(),
  }, { idleMs: 5_000 });
  const text = await new Response(out).text();
  assert.equal(text, `${running(1)}\n\ndata: three\n\ndata: final\n\ndata: [DONE]\n\n`);
  assert.equal(seen.length, 4, "every usage event up to the final one is handed over");
});

Deno.test("tapStream hands over the failure event it watches, not the word in a reply's text", async () => {
  const said = `data: ${chunk('the "error" key')}\n\n`;
  const failures = async (input: string, offsets: number[] = []) => {
    const seen: string[] = [];
    const out = tapStream(cut(new TextEncoder().encode(input), offsets), {
      ending: CHAT_ENDING,
      watch: /"error"/,
      onEvent({ data: d, name }) {
        if (name === "error" || d.error != null) seen.push(name || "chunk");
        return {};
      },
      onEnd: () => Promise.resolve(),
    }, { idleMs: 5_000 });
    await new Response(out).text();
    return seen;
  };
  assert.deepEqual(await failures(said), [], "quoted in content, the word is escaped");
  assert.deepEqual(await failures(`data: {"error":null}\n\n${said}`), []);
  const failing = `${said}data: {"error":{"message":"m"}}\n\n`;
  assert.deepEqual(await failures(failing), ["chunk"]);
  assert.deepEqual(await failures(failing, [said.length + 9]), ["chunk"], "cut in the word");
  assert.deepEqual(await failures(failing.trimEnd()), ["chunk"], "without a last blank line");
  assert.deepEqual(
    await failures('event: error\r\ndata: {"type":"error","error":{}}\r\n\r\n'),
    ["error"],
  );
});

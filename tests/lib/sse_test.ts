import assert from "node:assert/strict";
import { eventData, SseEventTooLarge, SseSplitter, translateSse } from "../../lib/sse.ts";
import { tapStream } from "../../lib/proxy/tap.ts";
import { CHAT_ENDING } from "../../lib/formats/chat.ts";

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

Deno.test("SseSplitter keeps incomplete events, including a terminator cut in half", () => {
  const s = new SseSplitter();
  assert.deepEqual(s.push("data: a\r\n\r"), []);
  assert.deepEqual(s.push("\ndata: b\n"), ["data: a"]);
  assert.deepEqual(s.push("\ndata: c"), ["data: b"]);
  assert.equal(s.rest, "data: c");
  assert.equal(eventData("data: [DONE]"), null);
  assert.equal(eventData(": comment"), null);
  assert.deepEqual(eventData('data: {"a":\ndata: 1}'), { a: 1 });
  assert.equal(eventData("data: {not json"), null);
});

Deno.test("SseSplitter finds the same events as a split of the whole text, however it is cut", () => {
  const text = "data: a\n\n\n\ndata: b\r\n\r\ndata: c\n\r\n: x\r\ndata: d\r\n\ndata: e\n\n\r\nf";
  const whole = text.split(/\r?\n\r?\n/);
  for (let seed = 0; seed < 500; seed++) {
    const s = new SseSplitter();
    const events: string[] = [];
    for (let at = 0; at < text.length;) {
      const next = Math.min(text.length, at + 1 + Math.floor(Math.random() * 6));
      events.push(...s.push(text.slice(at, next)));
      at = next;
    }
    assert.deepEqual([...events, s.rest], whole);
  }
});

Deno.test("SseSplitter looks at each character of an event a bounded number of times, however many pieces it comes in", () => {
  // Work counted, not timed: the characters every regular expression search is given to examine.
  // Re-splitting the whole buffer on each piece examines the event's first pieces again and again.
  const pieces = 1024;
  const piece = "a".repeat(4096);
  const total = pieces * piece.length;
  const budget = 2 * total;
  const exec = RegExp.prototype.exec;
  let examined = 0;
  RegExp.prototype.exec = function (this: RegExp, s: string) {
    examined += s.length - (this.global || this.sticky ? this.lastIndex : 0);
    if (examined > budget) throw new Error(`over ${budget} characters examined`);
    return exec.call(this, s);
  };
  const s = new SseSplitter(2 * total);
  const events: string[] = [];
  try {
    events.push(...s.push("data: "));
    for (let i = 0; i < pieces; i++) events.push(...s.push(piece));
    events.push(...s.push("\n\n"));
  } finally {
    RegExp.prototype.exec = exec;
  }
  assert.deepEqual(events.map((e) => e.length), [6 + total]);
  assert.ok(examined <= total + 4 * (pieces + 2), `${examined} characters examined`);
});

Deno.test("SseSplitter refuses an event over its maximum, complete or still buffered", () => {
  const s = new SseSplitter(16);
  assert.deepEqual(s.push("data: 1234567890"), [], "16 characters: at the maximum");
  assert.throws(() => s.push("1"), SseEventTooLarge);
  assert.equal(s.rest, "", "the event's text is let go");
  assert.deepEqual(s.push("data: 1234567890\n\n"), ["data: 1234567890"]);
  assert.throws(() => s.push("data: 12345678901\n\ndata: 1\n\n"), SseEventTooLarge);
});

Deno.test("translateSse: an event over the maximum fails the stream and lets the upstream go", async () => {
  let cancelled = false;
  const src = new ReadableStream<Uint8Array>({
    pull: (ctrl) => ctrl.enqueue(new TextEncoder().encode('data: {"text":"' + "x".repeat(100))),
    cancel() {
      cancelled = true;
    },
  });
  const out = translateSse(src, (d) => [d], () => [], { maxEventBytes: 1024 });
  await assert.rejects(() => new Response(out).text(), SseEventTooLarge);
  assert.ok(cancelled);
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

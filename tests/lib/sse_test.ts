import assert from "node:assert/strict";
import { eventData, SseEventTooLarge, SseSplitter, translateSse } from "../../lib/sse.ts";

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

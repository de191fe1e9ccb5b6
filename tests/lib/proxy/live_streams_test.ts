/**
 * `LiveStreams`: the process's streams, ended all at once at the shutdown deadline, each by its own
 * tap with the `shutting_down` error event, as a stream reaching MAX_STREAM_MS is.
 */
import assert from "node:assert/strict";
import { STREAM_SHUTDOWN } from "../../../lib/sse.ts";
import { type TapEnd, tapStream } from "../../../lib/proxy/tap.ts";
import { LiveStreams } from "../../../lib/proxy/live_streams.ts";

const enc = new TextEncoder();
const ENDED = `data: ${JSON.stringify({ error: STREAM_SHUTDOWN })}\n\n`;
const event = (i: number) =>
  `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: `part ${i} ` } }] })}\n\n`;

/** A tap's handlers that watch no event (every one passes as it came), its errors OpenAI's. */
const PASSING = {
  ending: {
    closing: null,
    error: (error: unknown) => `data: ${JSON.stringify({ error })}\n\n`,
  },
  watch: /(?!)/,
  onEvent: () => ({}),
};

/** An upstream that sends an event every `everyMs` until cancelled. */
function endless(everyMs: number) {
  let i = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  return new ReadableStream<Uint8Array>({
    pull: (ctrl) =>
      new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          ctrl.enqueue(enc.encode(event(i++)));
          resolve();
        }, everyMs);
      }),
    cancel: () => clearTimeout(timer),
  });
}

/** A tapped endless stream among `live`: its ends, and what it sent to be billed. */
function tapped(live: LiveStreams, everyMs = 5) {
  const ends: TapEnd[] = [];
  let delivered = "";
  let settled!: () => void;
  const billed = new Promise<void>((r) => settled = r);
  const out = tapStream(endless(everyMs), {
    ...PASSING,
    delivered: (text) => delivered += text,
    async onEnd(kind) {
      // A settlement takes a moment: endAll waits for it.
      await new Promise((r) => setTimeout(r, 20));
      ends.push(kind);
      settled();
    },
  }, { idleMs: 5000, live });
  return { out, ends, billed, delivered: () => delivered };
}

Deno.test("LiveStreams.endAll ends a stream being read with the shutting_down event, after what it delivered, and waits for it to be billed", async () => {
  const live = new LiveStreams();
  const s = tapped(live);
  const reader = s.out.getReader();
  const dec = new TextDecoder();
  let text = "";
  for (let i = 0; i < 3; i++) text += dec.decode((await reader.read()).value, { stream: true });
  assert.equal(live.size, 1);
  const reading = (async () => {
    for (let r = await reader.read(); !r.done; r = await reader.read()) {
      text += dec.decode(r.value, { stream: true });
    }
  })();
  await live.endAll(5000);
  assert.deepEqual(s.ends, ["shutdown"], "billed before endAll resolved");
  assert.equal(live.size, 0);
  await reading;
  assert.ok(text.endsWith(ENDED), text);
  assert.equal(text.slice(0, -ENDED.length), s.delivered(), "billed for exactly what went out");
});

Deno.test("LiveStreams.endAll ends a stream nobody reads (no pull under way) and one begun after it at its first read", async () => {
  const live = new LiveStreams();
  const idle = tapped(live);
  const reader = idle.out.getReader();
  await reader.read(); // one event, then the client reads no more
  await live.endAll(5000);
  assert.deepEqual(idle.ends, ["shutdown"]);
  assert.equal(live.size, 0);

  // Its provider answered after the deadline: it ends before sending anything of it.
  const late = tapped(live);
  const lateReader = late.out.getReader();
  try {
    const first = await lateReader.read();
    assert.equal(new TextDecoder().decode(first.value), ENDED);
    assert.ok((await lateReader.read()).done);
  } finally {
    await lateReader.cancel();
  }
  assert.deepEqual(late.ends, ["shutdown"]);
  assert.equal(late.delivered(), "");
  assert.equal(live.size, 0);
  await reader.cancel();
});

Deno.test("LiveStreams: a stream that completes or is cancelled leaves the registry; endAll with none returns at once", async () => {
  const live = new LiveStreams();
  const s = tapped(live);
  const reader = s.out.getReader();
  await reader.read();
  await reader.cancel();
  await s.billed;
  assert.deepEqual(s.ends, ["cancelled"]);
  assert.equal(live.size, 0);

  const done = tapStream(
    new ReadableStream({
      start(ctrl) {
        ctrl.enqueue(enc.encode(event(1)));
        ctrl.close();
      },
    }),
    { ...PASSING, onEnd: () => Promise.resolve() },
    { idleMs: 5000, live },
  );
  assert.equal(live.size, 1);
  assert.equal(await new Response(done).text(), event(1));
  assert.equal(live.size, 0);
  await live.endAll(60_000);
});

import assert from "node:assert/strict";
import { Lifecycle } from "../../../lib/http/lifecycle.ts";

/** A server on `lifecycle.fetch`, and a handler whose `/stream` sends one chunk, then waits. */
function serve(lifecycle: Lifecycle) {
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, lifecycle.fetch);
  const url = `http://127.0.0.1:${server.addr.port}`;
  const streams: ReadableStreamDefaultController<Uint8Array>[] = [];
  const handler = (req: Request) => {
    if (new URL(req.url).pathname !== "/stream") return Response.json({ served: true });
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new TextEncoder().encode("data: first\n\n"));
        streams.push(c);
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  };
  const close = async () => {
    // Whatever a failed test left open ends, so that the server can finish.
    for (const c of streams) {
      try {
        c.close();
      } catch {
        // closed already
      }
    }
    await server.shutdown();
  };
  return { close, url, streams, handler };
}

async function status(url: string) {
  const res = await fetch(url);
  return { status: res.status, body: await res.json(), headers: res.headers };
}

/** Opens a stream and reads its first chunk; returns its reader. */
async function openStream(url: string) {
  const res = await fetch(`${url}/stream`);
  const reader = res.body!.getReader();
  await reader.read();
  return reader;
}

Deno.test("Lifecycle: /readyz is 503 while starting, /healthz 200, other requests a retryable 503", async () => {
  const lifecycle = new Lifecycle();
  const { close, url, handler } = serve(lifecycle);
  try {
    assert.deepEqual((await status(`${url}/readyz`)).body, { ok: false, state: "starting" });
    assert.equal((await status(`${url}/readyz`)).status, 503);
    assert.deepEqual(await status(`${url}/healthz`).then((r) => [r.status, r.body]), [200, {
      ok: true,
    }]);
    const refused = await status(`${url}/v1/chat/completions?x=1`);
    assert.equal(refused.status, 503);
    assert.equal(refused.body.error.code, "starting");
    assert.equal(refused.headers.get("retry-after"), "1");
    lifecycle.ready(handler);
    assert.deepEqual(await status(`${url}/readyz?probe=1`).then((r) => [r.status, r.body]), [200, {
      ok: true,
    }]);
    assert.deepEqual((await status(`${url}/anything`)).body, { served: true });
  } finally {
    await close();
  }
});

Deno.test("Lifecycle: draining answers /readyz 503 at once and resolves when the streams in flight end", async () => {
  const lifecycle = new Lifecycle();
  const { close, url, streams, handler } = serve(lifecycle);
  lifecycle.ready(handler);
  try {
    const readers = [await openStream(url), await openStream(url)];
    assert.equal(lifecycle.inFlight, 2);
    const events: string[] = [];
    const drained = lifecycle.drain(60_000).then((r) => {
      events.push("drained");
      return r;
    });
    assert.equal(lifecycle.state, "draining");
    assert.deepEqual((await status(`${url}/readyz`)).body, { ok: false, state: "draining" });
    const refused = await status(`${url}/v1/models`);
    assert.equal(refused.status, 503);
    assert.equal(refused.body.error.code, "shutting_down");
    assert.equal((await status(`${url}/healthz`)).status, 200, "still alive");
    assert.deepEqual((await status(`${url}/metrics`)).body, { served: true }, "metrics still read");
    // One stream ends, its client reads to the end; the other's client goes away.
    streams[0].close();
    assert.equal((await readers[0].read()).done, true);
    await readers[1].cancel();
    events.push("streams ended");
    assert.deepEqual(await drained, { left: 0 });
    assert.deepEqual(events, ["streams ended", "drained"]);
  } finally {
    await close();
  }
});

Deno.test("Lifecycle: at the deadline the streams still running are handed to endStreamsAtDeadline", async () => {
  const lifecycle = new Lifecycle();
  const { close, url, streams, handler } = serve(lifecycle);
  lifecycle.ready(handler);
  try {
    const reader = await openStream(url);
    const reading = (async () => {
      let text = "";
      for (let r = await reader.read(); !r.done; r = await reader.read()) {
        text += new TextDecoder().decode(r.value);
      }
      return text;
    })();
    let called = 0;
    const { left } = await lifecycle.drain(50, () => {
      called++;
      // What a stream registry does: end the stream with an error event.
      streams[0].enqueue(new TextEncoder().encode("event: error\ndata: shutting down\n\n"));
      streams[0].close();
      return Promise.resolve();
    });
    assert.equal(called, 1);
    assert.equal(left, 0);
    assert.match(await reading, /event: error/);
  } finally {
    await close();
  }
});

Deno.test("Lifecycle: without endStreamsAtDeadline a drain reports the requests left at the deadline", async () => {
  const lifecycle = new Lifecycle();
  const { close, url, streams, handler } = serve(lifecycle);
  lifecycle.ready(handler);
  try {
    const reader = await openStream(url);
    assert.deepEqual(await lifecycle.drain(50), { left: 1 });
    streams[0].close();
    await reader.cancel();
  } finally {
    await close();
  }
});

/**
 * watchDeparture: a client that closes its connection while its request waits is noticed, a
 * request of any length; one that stays is never taken for gone.
 */
import assert from "node:assert/strict";
import { watchDeparture } from "../../../lib/http/departure.ts";
import { pause } from "../../../lib/kv/util.ts";

/** A server whose handler reads the body, then waits `ms` unless its client is seen gone. */
function waitingServer(ms: number) {
  /** Whether each request's client was seen gone. */
  const outcomes: boolean[] = [];
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    async (req, info) => {
      await req.arrayBuffer();
      const watch = watchDeparture(info);
      await pause(ms, AbortSignal.any([req.signal, watch.signal]));
      await watch.stop();
      outcomes.push(watch.signal.aborted);
      return new Response("done");
    },
  );
  return { server, outcomes, url: `http://127.0.0.1:${server.addr.port}/` };
}

Deno.test("watchDeparture notices a client that left while its request of 2 KB waits", async () => {
  const { server, outcomes, url } = waitingServer(60_000);
  try {
    const ac = new AbortController();
    const sent = fetch(url, { method: "POST", body: "x".repeat(2048), signal: ac.signal })
      .catch((e) => e);
    await pause(300, new AbortController().signal);
    ac.abort();
    assert.equal((await sent).name, "AbortError");
    while (outcomes.length === 0) await pause(20, new AbortController().signal);
    // Request.signal stays unaborted here on Deno 2.9: the departure is the only word of it.
    assert.deepEqual(outcomes, [true]);
  } finally {
    await server.shutdown();
  }
});

Deno.test("watchDeparture never reports a client that stays connected", async () => {
  // Several reads of the socket tables while each of a few clients waits for its answer.
  const { server, outcomes, url } = waitingServer(1_000);
  try {
    const answers = await Promise.all(
      [10, 2048, 70_000].map((n) =>
        fetch(url, { method: "POST", body: "x".repeat(n) }).then((r) => r.text())
      ),
    );
    assert.deepEqual(answers, ["done", "done", "done"]);
    assert.deepEqual(outcomes, [false, false, false]);
  } finally {
    await server.shutdown();
  }
});

Deno.test("watchDeparture without a TCP client (app.request) never aborts", async () => {
  const watch = watchDeparture(undefined);
  await watch.stop();
  assert.equal(watch.signal.aborted, false);
});

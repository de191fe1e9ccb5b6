/**
 * main.ts as its own process against clients that send too much, too slowly, or not at all: its
 * memory (VmRSS from /proc) stays flat and every such connection is answered or closed.
 */
import assert from "node:assert/strict";
import { spawnRouter } from "../_main.ts";
import { ADMIN_TOKEN } from "../_helpers.ts";
import { parseResponse, RawConn } from "../_raw.ts";

const MB = 1024 * 1024;

/** The process's resident memory now, in bytes. */
function rss(pid: number): number {
  const kb = /VmRSS:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`))![1];
  return Number(kb) * 1024;
}

/** What `work` gave, and the most the process's resident memory grew while it ran. */
async function peakGrowth<T>(
  pid: number,
  work: () => Promise<T>,
): Promise<{ result: T; growth: number }> {
  const base = rss(pid);
  let peak = base;
  let running = true;
  const sampler = (async () => {
    while (running) {
      peak = Math.max(peak, rss(pid));
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  try {
    const result = await work();
    return { result, growth: Math.max(peak, rss(pid)) - base };
  } finally {
    running = false;
    await sampler;
  }
}

Deno.test("main.ts under hostile uploads: memory stays flat, stalled uploads are 408 and closed, slow headers closed", async (t) => {
  const router = await spawnRouter({
    KV_PATH: ":memory:",
    ADMIN_TOKEN,
    OPENAI_API_KEY: "sk-upstream-test",
    // Never called: every request here is refused before it would be forwarded.
    OPENAI_BASE_URL: "http://127.0.0.1:9",
    BODY_TIMEOUT_MS: "1500",
    HEADER_TIMEOUT_MS: "1500",
  });
  const pid = router.child.pid;
  try {
    const admin = (path: string, body: unknown, secret = ADMIN_TOKEN) =>
      fetch(router.url + path, {
        method: "POST",
        headers: { authorization: `Bearer ${secret}` },
        body: JSON.stringify(body),
      }).then((r) => r.json());
    const account = await admin("/v1/admin/accounts", { name: "Hostile Co" });
    const { key } = await admin("/v1/keys", { name: "k" }, account.management_key);
    assert.match(key, /^er-/);

    await t.step("a 128 MiB form streamed to /signin is refused past the form limit", async () => {
      const { result: res, growth } = await peakGrowth(pid, async () => {
        const c = await RawConn.open(router.url);
        await c.send(
          "POST /signin HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n" +
            "Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        const answer = c.readUntilClosed(30_000);
        const chunk = new TextEncoder().encode(`100000\r\n${"a".repeat(MB)}\r\n`);
        // Until the server stops taking it (or all of it went).
        for (let i = 0; i < 128 && await c.send(chunk); i++);
        await c.send("0\r\n\r\n");
        const { text } = await answer;
        c.close();
        return parseResponse(text);
      });
      assert.ok(growth < 100 * MB, `RSS grew ${Math.round(growth / MB)} MB`);
      assert.equal(res?.status, 413);
      assert.match(res.body, /over 65536 bytes/);
    });

    await t.step(
      "100 uploads that declare 9 MB and stall reserve nothing, each is 408 and closed",
      async () => {
        const conns: RawConn[] = [];
        const { result: answers, growth } = await peakGrowth(pid, async () => {
          for (let i = 0; i < 100; i++) {
            const c = await RawConn.open(router.url);
            conns.push(c);
            await c.send(
              `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n` +
                `Content-Type: application/json\r\nContent-Length: ${9 * MB}\r\n\r\n` +
                `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"`,
            );
          }
          return await Promise.all(conns.map((c) => c.readUntilClosed(20_000)));
        });
        for (const c of conns) c.close();
        assert.ok(growth < 100 * MB, `RSS grew ${Math.round(growth / MB)} MB`);
        for (const { text, closed } of answers) {
          assert.ok(closed, "the server closed the stalled connection");
          const res = parseResponse(text);
          assert.equal(res?.status, 408, text.slice(0, 200));
          assert.equal(JSON.parse(res.body).error.code, "request_timeout");
        }
      },
    );

    await t.step("a connection that never finishes its headers is closed", async () => {
      const c = await RawConn.open(router.url);
      await c.send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ");
      assert.deepEqual(await c.readUntilClosed(20_000), { text: "", closed: true });
      c.close();
    });
  } finally {
    await router.stop();
  }
});

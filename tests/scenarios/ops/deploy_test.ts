/**
 * main.ts started as Deno Deploy starts it: DENO_DEPLOYMENT_ID set, no KV_PATH (Deno.openKv() with
 * no argument), the address chosen by the platform (DENO_SERVE_ADDRESS), a working directory it
 * may not write to, and the island bundles built ahead by the build step.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { ADMIN_TOKEN, json } from "../../_helpers.ts";
import { startFakeOpenAI } from "../../_fakes/openai.ts";
import { spawnRouter } from "../../_main.ts";

const ROOT = new URL("../../../", import.meta.url).pathname;
// What the deployment holds after its build: the sources, the lock file and static/build.
const SHIPPED = ["main.ts", "deno.json", "deno.lock", "lib", "routes", "islands", "static"];

async function run(cmd: string, args: string[]) {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout);
}

/** Where `Deno.openKv()` keeps the KV of a project: DENO_DIR's origin storage, by config file. */
async function defaultKvDir(project: string) {
  const info = JSON.parse(await run(Deno.execPath(), ["info", "--json"]));
  const configUrl = new URL(`file://${project}/deno.json`).href;
  return `${info.originStorage}/${createHash("sha256").update(configUrl).digest("hex")}`;
}

Deno.test("main.ts starts as on Deno Deploy (no KV_PATH, read-only directory) and serves a request", async () => {
  assert.ok(
    await Deno.stat(`${ROOT}static/build`).then(() => true, () => false),
    "static/build is missing: run deno task build first (deno task test does)",
  );
  const project = await Deno.makeTempDir({ prefix: "deploy-" });
  const kvDir = await defaultKvDir(project);
  const openai = startFakeOpenAI();
  let router: Awaited<ReturnType<typeof spawnRouter>> | null = null;
  try {
    await run("cp", ["-r", ...SHIPPED.map((p) => ROOT + p), project]);
    await run("chmod", ["-R", "a-w", project]);
    router = await spawnRouter({
      PORT: undefined,
      DENO_DEPLOYMENT_ID: "test-deployment",
      DENO_SERVE_ADDRESS: "tcp:127.0.0.1:0",
      ADMIN_TOKEN,
      OPENAI_API_KEY: "sk-upstream-test",
      OPENAI_BASE_URL: openai.url,
      // Running as root ignores file modes: Deno's own permission refuses writes there instead.
    }, { cwd: project, flags: [`--deny-write=${project}`] });
    const url = router.url;
    assert.match(router.output(), /"kv":"deno-deploy","outbox_delivery":"drainer"/);
    assert.ok(await Deno.stat(`${kvDir}/kv.sqlite3`), "the KV is Deno's default one, in DENO_DIR");

    // The warm-up request the build makes, and a bundle built ahead.
    const home = await fetch(`${url}/`);
    assert.equal(home.status, 200);
    await home.body?.cancel();
    const js = await fetch(`${url}/static/build/client.js`);
    assert.equal(js.status, 200);
    assert.match(js.headers.get("content-type") ?? "", /javascript/);
    await js.body?.cancel();

    const admin = (path: string, body?: unknown) =>
      fetch(url + path, {
        method: body === undefined ? "GET" : "POST",
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    const acct = await json(await admin("/v1/admin/accounts", { name: "Deployed" }), 201);
    await json(
      await admin(`/v1/admin/accounts/${acct.id}/adjustments`, { amount: "1", reason: "t" }),
      201,
    );
    const key = (await json(
      await fetch(`${url}/v1/keys`, {
        method: "POST",
        headers: { authorization: `Bearer ${acct.management_key}` },
        body: JSON.stringify({ name: "deployed" }),
      }),
      201,
    )).key;
    for (const stream of [false, true]) {
      const res = await fetch(`${url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({
          model: "gpt-4o-mini",
          messages: [{ role: "user", content: "hello deploy" }],
          stream,
        }),
      });
      assert.equal(res.status, 200);
      await res.text();
    }
    // The in-process drainer records the usage (Deno Deploy has no KV queues).
    let verify;
    for (let i = 0; i < 100; i++) {
      verify = await json(await admin("/v1/admin/verify"), 200);
      if (verify.pending_events === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(verify.ok, true);
    assert.equal(verify.pending_events, 0);
    const ledger = await json(
      await fetch(`${url}/v1/transactions`, {
        headers: { authorization: `Bearer ${acct.management_key}` },
      }),
      200,
    );
    assert.equal(
      ledger.data.filter((e: { type: string }) => e.type === "usage_debit").length,
      2,
    );

    // Deno Deploy stops an isolate with SIGINT.
    assert.equal((await router.stop("SIGINT")).code, 0, router.output());
    assert.doesNotMatch(router.output(), /NotCapable|PermissionDenied|Requires write access/);
  } finally {
    await router?.stop("SIGKILL");
    await openai.close();
    await run("chmod", ["-R", "u+w", project]);
    await Deno.remove(project, { recursive: true });
    await Deno.remove(kvDir, { recursive: true }).catch(() => {});
  }
});

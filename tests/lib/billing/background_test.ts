import assert from "node:assert/strict";
import { loadConfig } from "../../../lib/config.ts";
import { createApp } from "../../../lib/app.ts";
import { silentLogger } from "../../../lib/log.ts";

Deno.test("without a sweep period the router sweeps on the default period, not back to back", async () => {
  const kv = await Deno.openKv(":memory:");
  // As main.ts builds it: no sweepEveryMs.
  const router = createApp({
    kv,
    config: loadConfig({ ADMIN_TOKEN: "background-test-token-0123", KV_PATH: ":memory:" }),
    log: silentLogger,
  });
  const bg = router.svc.background;
  let sweeps = 0;
  const sweep = bg.sweep.bind(bg);
  bg.sweep = (opts) => {
    sweeps++;
    return sweep(opts);
  };
  try {
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(sweeps, 0, "no sweep within 300 ms of start (the default period is 5 s)");
  } finally {
    await router.close();
    kv.close();
    await bg.listener;
  }
});

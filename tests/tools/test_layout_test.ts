import assert from "node:assert/strict";
import { checkTestLayout, moduleOf } from "../../tools/test_layout.ts";
import { root, tree } from "./_tree.ts";

const clean = {
  "lib/audit/query.ts": "",
  "lib/billing/lease.ts": "",
  "lib/billing/lease_ops.ts": "",
  "routes/v1/inference.ts": "",
  "routes/dashboard/[id].tsx": "",
  "tools/layers.ts": "",
  "tests/_helpers.ts": "",
  "tests/_fakes/openai.ts": "",
  "tests/lib/audit/query_test.ts": "",
  "tests/lib/audit/query_export_slices_test.ts": "",
  "tests/lib/audit/_rows.ts": "",
  "tests/lib/billing/lease_ops_test.ts": "",
  "tests/routes/v1/inference_chat_test.ts": "",
  "tests/routes/dashboard/[id]_test.tsx": "",
  "tests/tools/layers_test.ts": "",
  "tests/scenarios/crash_test.ts": "",
  "tests/scenarios/browser/dashboard_test.ts": "",
};

Deno.test("checkTestLayout: this repository's tests mirror lib/, routes/ and tools/", async () => {
  assert.deepEqual(await checkTestLayout(root), []);
});

Deno.test("checkTestLayout: a tree laid out by the rule passes", async () => {
  const dir = await tree(clean);
  try {
    assert.deepEqual(await checkTestLayout(dir), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkTestLayout: planted misplaced and misnamed tests fail, each named", async () => {
  const dir = await tree({
    ...clean,
    "tests/fuzz_test.ts": "",
    "tests/billing/crash_test.ts": "",
    "tests/lib/audit/export_test.ts": "",
    "tests/lib/billing/leases_test.ts": "",
    "tests/lib/proxy/tap_test.ts": "",
    "tests/routes/v1/chat_test.ts": "",
    "tests/tools/build_test.ts": "",
    "tests/lib/audit/query.test.ts": "",
    "tests/_fakes/serve.test.ts": "",
  });
  try {
    const lines = await checkTestLayout(dir);
    const places = "tests/lib/, tests/routes/, tests/tools/, tests/scenarios/";
    assert.deepEqual(lines, [
      `tests/_fakes/serve.test.ts: out of place; tests live under ${places}`,
      `tests/billing/crash_test.ts: out of place; tests live under ${places}`,
      `tests/fuzz_test.ts: out of place; tests live under ${places}`,
      "tests/lib/audit/export_test.ts: names no module of lib/audit/ (a test of lib/audit/b.ts is b_test.ts or b_<topic>_test.ts)",
      "tests/lib/audit/query.test.ts: a test of a module of lib/audit/ is named <module>_test.ts",
      "tests/lib/billing/leases_test.ts: names no module of lib/billing/ (a test of lib/billing/b.ts is b_test.ts or b_<topic>_test.ts)",
      "tests/lib/proxy/tap_test.ts: names no module of lib/proxy/ (a test of lib/proxy/b.ts is b_test.ts or b_<topic>_test.ts)",
      "tests/routes/v1/chat_test.ts: names no module of routes/v1/ (a test of routes/v1/b.ts is b_test.ts or b_<topic>_test.ts)",
      "tests/tools/build_test.ts: names no module of tools/ (a test of tools/b.ts is b_test.ts or b_<topic>_test.ts)",
    ]);
    // As `deno task check` runs it: a failing exit naming the files.
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-read", `${root}/tools/test_layout.ts`, dir],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 1);
    assert.match(new TextDecoder().decode(out.stderr), /tests\/fuzz_test\.ts: out of place/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("moduleOf: the longest module name that starts the test's name", () => {
  const billing = ["lease", "lease_ops", "local_lease", "decide"];
  assert.equal(moduleOf("lease_test.ts", billing), "lease");
  assert.equal(moduleOf("lease_ops_test.ts", billing), "lease_ops");
  assert.equal(moduleOf("lease_ops_recall_test.ts", billing), "lease_ops");
  assert.equal(moduleOf("lease_expiry_test.ts", billing), "lease");
  assert.equal(moduleOf("decide_test.tsx", billing), "decide");
  assert.equal(moduleOf("leases_test.ts", billing), null, "a module's name is whole");
  assert.equal(moduleOf("local_test.ts", billing), null);
  assert.equal(moduleOf("[id]_test.tsx", ["[id]"]), "[id]");
});

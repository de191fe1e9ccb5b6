import assert from "node:assert/strict";
import {
  ISLANDS_MODULE,
  islandsModule,
  routePath,
  ROUTES_MODULE,
  routesModule,
  scan,
  writeRegistries,
} from "../../tools/registries.ts";
import { root, tree } from "./_tree.ts";

Deno.test("routePath: Fresh's file conventions", () => {
  assert.equal(routePath("routes/index.tsx"), "/");
  assert.equal(routePath("routes/signin.tsx"), "/signin");
  assert.equal(routePath("routes/dashboard/index.tsx"), "/dashboard");
  assert.equal(
    routePath("routes/dashboard/admin/accounts/[id].tsx"),
    "/dashboard/admin/accounts/:id",
  );
  assert.equal(routePath("routes/(marketing)/about.tsx"), "/about");
  assert.equal(routePath("routes/_layout.tsx"), null);
  assert.equal(routePath("routes/_parts/card.tsx"), null);
});

Deno.test("scan: pages, API modules by default export at their folder, islands; _ files skipped", async () => {
  const dir = await tree({
    "routes/index.tsx": "export default function Home() {}\n",
    "routes/a/[id].tsx": "export default function A() {}\n",
    "routes/a/new.tsx": "export default function New() {}\n",
    "routes/_layout.tsx": "export default function Layout() {}\n",
    "routes/v1/keys.ts": "export default function keyRoutes() {}\n",
    "routes/v1/helper.ts": "export const x = 1;\n",
    "routes/v1/_shared.ts": "export default 1;\n",
    "islands/Counter.tsx": "export default function Counter() {}\n",
    "islands/_util.ts": "export const y = 1;\n",
  });
  try {
    const reg = await scan(dir);
    assert.deepEqual(reg.pages, [
      { path: "/", file: "routes/index.tsx" },
      // A static segment before a parameter, whatever their names.
      { path: "/a/new", file: "routes/a/new.tsx" },
      { path: "/a/:id", file: "routes/a/[id].tsx" },
    ]);
    assert.deepEqual(reg.api, [{ mount: "/v1", file: "routes/v1/keys.ts" }]);
    assert.deepEqual(reg.islands, [{ name: "Counter", file: "islands/Counter.tsx" }]);
    assert.match(routesModule(reg), /\["\/a\/:id", \$2\],/);
    assert.match(
      islandsModule(reg),
      /Counter: \(\) => import\("\.\.\/\.\.\/islands\/Counter\.tsx"\),/,
    );

    // Written once, then current; a new page makes them stale again.
    assert.deepEqual(await writeRegistries(dir), [ROUTES_MODULE, ISLANDS_MODULE]);
    assert.deepEqual(await writeRegistries(dir, true), []);
    await Deno.writeTextFile(`${dir}/routes/b.tsx`, "export default function B() {}\n");
    assert.deepEqual(await writeRegistries(dir, true), [ROUTES_MODULE]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("scan: an island whose default export is not named as its file is refused", async () => {
  const dir = await tree({ "islands/Counter.tsx": "export default function Count() {}\n" });
  try {
    await assert.rejects(
      scan(dir),
      /islands\/Counter\.tsx: its default export must be `function Counter`/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeRegistries: this repository's generated modules are current", async () => {
  assert.deepEqual(await writeRegistries(root, true), []);
});

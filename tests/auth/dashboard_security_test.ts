import assert from "node:assert/strict";
import { signUp } from "../../lib/auth/users.ts";
import { safeNext } from "../../lib/render/session.ts";
import { startRouter } from "../_helpers.ts";

Deno.test("safeNext keeps same-site paths and refuses anything a browser resolves off-site", () => {
  assert.equal(safeNext("/dashboard/keys?x=1#y"), "/dashboard/keys?x=1#y");
  assert.equal(safeNext("/dashboard/audit?model=a%2F%2Fb"), "/dashboard/audit?model=a%2F%2Fb");
  for (
    const bad of [
      "//evil.example",
      "/\\evil.example",
      "https://evil.example",
      // The URL parser drops tabs and newlines anywhere: these are "//evil.example" to a browser.
      "/\t/evil.example",
      "/\n/evil.example",
      "/\r/evil.example",
      "/\t\\evil.example",
      "",
      null,
      undefined,
    ]
  ) {
    assert.equal(safeNext(bad), "/dashboard", JSON.stringify(bad));
  }
});

Deno.test("sign-in never redirects off-site, whatever `next` the link carried", async () => {
  const t = await startRouter();
  try {
    await signUp(t.kv, {
      email: "nx@example.com",
      name: "N",
      password: "password-n-123",
      accountName: "N Co",
    });
    for (const next of ["/\t/evil.example", "/\t\\evil.example", "//evil.example"]) {
      // The page puts the link's `next` in its form; the form posts it back.
      const page = await fetch(`${t.url}/signin?next=${encodeURIComponent(next)}`);
      const html = await page.text();
      const posted = /name="next" value="([^"]*)"/.exec(html)?.[1] ?? "";
      const res = await fetch(`${t.url}/signin`, {
        method: "POST",
        redirect: "manual",
        headers: { origin: t.url },
        body: new URLSearchParams({
          email: "nx@example.com",
          password: "password-n-123",
          next: posted.replaceAll("&#9;", "\t"),
        }),
      });
      await res.body?.cancel();
      assert.equal(res.status, 303);
      const location = res.headers.get("location") ?? "";
      assert.equal(new URL(location, t.url).origin, t.url, `next=${JSON.stringify(next)}`);
    }
  } finally {
    await t.close();
  }
});

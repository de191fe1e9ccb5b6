/** Mounts the dashboard's pages (routes/*.tsx, routes/dashboard/**) and the static files. */
import { Hono } from "hono";
import type { AppEnv } from "../services.ts";
import { errorPage, mountPage, type PageConfig, type PageModule } from "./page.tsx";
import type { ApiError } from "../errors.ts";
import { apiErrorOf } from "../http/errors.ts";
import { serveStatic, STATIC_DIR } from "./static.ts";
import * as landing from "../../routes/index.tsx";
import * as signup from "../../routes/signup.tsx";
import * as signin from "../../routes/signin.tsx";
import * as signout from "../../routes/signout.tsx";
import * as overview from "../../routes/dashboard/index.tsx";
import * as usage from "../../routes/dashboard/usage.tsx";
import * as keys from "../../routes/dashboard/keys.tsx";
import * as audit from "../../routes/dashboard/audit.tsx";
import * as switcher from "../../routes/dashboard/switch.tsx";
import * as billing from "../../routes/dashboard/settings/billing.tsx";
import * as members from "../../routes/dashboard/settings/members.tsx";
import * as webhooks from "../../routes/dashboard/settings/webhooks.tsx";
import * as statement from "../../routes/dashboard/settings/statement.tsx";
import * as adminSignin from "../../routes/dashboard/admin/signin.tsx";
import * as adminAccounts from "../../routes/dashboard/admin/index.tsx";
import * as adminAccount from "../../routes/dashboard/admin/account.tsx";

// deno-lint-ignore no-explicit-any
const PAGES: [string, PageModule<any>][] = [
  ["/", landing],
  ["/signup", signup],
  ["/signin", signin],
  ["/signout", signout],
  ["/dashboard", overview],
  ["/dashboard/usage", usage],
  ["/dashboard/keys", keys],
  ["/dashboard/audit", audit],
  ["/dashboard/switch", switcher],
  ["/dashboard/settings/billing", billing],
  ["/dashboard/settings/members", members],
  ["/dashboard/settings/webhooks", webhooks],
  ["/dashboard/settings/billing/statements/:month", statement],
  ["/dashboard/admin/signin", adminSignin],
  ["/dashboard/admin", adminAccounts],
  ["/dashboard/admin/accounts/:id", adminAccount],
];

const NOT_FOUND: PageConfig = { title: "Not found", auth: "public", layout: "public" };

/** A refused request as a page (its status, message and headers), for a browser. */
export async function refusalPage(err: ApiError): Promise<Response> {
  const res = await errorPage(NOT_FOUND, null, err.status, err.message);
  for (const [k, v] of Object.entries(err.headers)) res.headers.set(k, v);
  return res;
}

/** The pages, `/static/*` and `/favicon.ico`. */
export function pageRoutes() {
  const app = new Hono<AppEnv>();
  for (const [path, mod] of PAGES) mountPage(app, path, mod);
  app.get("/dashboard/settings", (c) => c.redirect("/dashboard/settings/billing"));
  app.all("/dashboard/*", () => errorPage(NOT_FOUND, null, 404, "There is no such page."));
  // A page that fails answers an HTML page (the API keeps its JSON errors).
  app.onError((err, c) => {
    const refused = apiErrorOf(err);
    if (refused) return refusalPage(refused);
    c.get("svc").log("error", "page failed", {
      request_id: c.get("requestId"),
      path: c.req.path,
      error: err instanceof Error ? err.name : "unknown",
      at: err instanceof Error ? err.stack?.split("\n")[1]?.trim() : undefined,
    });
    return errorPage(NOT_FOUND, null, 500, "The page could not be shown; try again in a moment.");
  });
  app.get("/static/*", serveStatic);
  app.get(
    "/favicon.ico",
    async () =>
      new Response(await Deno.readFile(new URL("favicon.svg", STATIC_DIR)), {
        headers: { "content-type": "image/svg+xml", "cache-control": "public, max-age=86400" },
      }),
  );
  return app;
}

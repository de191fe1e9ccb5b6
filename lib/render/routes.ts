/** Mounts the dashboard's pages (found by the build: lib/gen/routes.ts) and the static files. */
import { Hono } from "hono";
import type { AppEnv } from "../services.ts";
import { errorPage, mountPage, type PageConfig, type PageModule } from "./page.tsx";
import type { ApiError } from "../errors.ts";
import { apiErrorOf } from "../http/errors.ts";
import { serveStatic, STATIC_DIR } from "./static.ts";
const NOT_FOUND: PageConfig = { title: "Not found", auth: "public", layout: "public" };

/** A refused request as a page (its status, message and headers), for a browser. */
export async function refusalPage(err: ApiError): Promise<Response> {
  const res = await errorPage(NOT_FOUND, null, err.status, err.message);
  for (const [k, v] of Object.entries(err.headers)) res.headers.set(k, v);
  return res;
}

/**
 * The pages, `/static/*` and `/favicon.ico`.
 *
 * @example
 * ```ts
 * app.route("/", pageRoutes(PAGES)); // PAGES from the generated lib/gen/routes.ts
 * ```
 */
// deno-lint-ignore no-explicit-any
export function pageRoutes(pages: readonly (readonly [string, PageModule<any>])[]) {
  const app = new Hono<AppEnv>();
  for (const [path, mod] of pages) mountPage(app, path, mod);
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

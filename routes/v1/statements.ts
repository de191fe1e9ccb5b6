import { Hono } from "hono";
import type { AppEnv } from "../../lib/services.ts";
import { requireKey } from "../../lib/http/auth.ts";
import { badRequest } from "../../lib/errors.ts";
import { monthRange, monthStatement } from "../../lib/billing/statements.ts";
import { statementCsv, statementJson } from "../../lib/http/presenters.ts";

/** Monthly statements of the caller's account, as JSON or CSV. */
export default function statementRoutes() {
  const app = new Hono<AppEnv>();
  app.use("/statements/*", requireKey("management"));

  app.get("/statements/:month", async (c) => {
    const svc = c.get("svc");
    const month = c.req.param("month");
    const range = monthRange(month);
    if (!range) throw badRequest("Invalid 'month': must be a month as YYYY-MM");
    if (range[0] > svc.now()) throw badRequest("Invalid 'month': it has not begun yet");
    const format = c.req.query("format") ?? "json";
    if (format !== "json" && format !== "csv") {
      throw badRequest("Invalid 'format': must be json or csv");
    }
    const s = await monthStatement(svc.kv, c.get("accountId"), month, svc.now());
    if (format === "json") return c.json(statementJson(s));
    return c.body(statementCsv(s), 200, {
      "content-type": "text/csv; charset=utf-8",
      "content-disposition": `attachment; filename="statement-${month}.csv"`,
    });
  });

  return app;
}

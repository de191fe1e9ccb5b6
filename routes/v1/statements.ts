import { z } from "zod";
import { requireKey } from "../../lib/http/auth.ts";
import { badRequest } from "../../lib/errors.ts";
import { monthRange, monthStatement } from "../../lib/billing/statements.ts";
import { statementCsv, statementJson, StatementSchema } from "../../lib/http/presenters.ts";
import { queryParam } from "../../lib/http/params.ts";
import {
  apiRoutes,
  documented,
  errorResponses,
  readQuery,
  SECURITY,
} from "../../lib/http/openapi.ts";

const StatementQuery = z.object({
  format: queryParam("json (default) or csv", { enum: ["json", "csv"] }),
});

/** Monthly statements of the caller's account, as JSON or CSV. */
export default function statementRoutes() {
  const app = apiRoutes();
  app.use("/statements/*", requireKey("management"));

  documented(app, {
    method: "get",
    path: "/statements/{month}",
    tags: ["Billing"],
    summary: "A UTC month's statement: opening balance, purchases, usage by model, closing balance",
    security: SECURITY.management,
    request: {
      params: z.object({ month: z.string().meta({ description: "YYYY-MM", example: "2026-11" }) }),
      query: StatementQuery,
    },
    responses: {
      200: {
        description: "The statement (CSV: `section,provider,model,requests,amount`)",
        content: {
          "application/json": { schema: StatementSchema },
          "text/csv": { schema: z.string() },
        },
      },
      ...errorResponses(400, 401, 403),
    },
  }, async (c) => {
    const svc = c.get("svc");
    const month = c.req.param("month") ?? "";
    const range = monthRange(month);
    if (!range) throw badRequest("Invalid 'month': must be a month as YYYY-MM");
    if (range[0] > svc.now()) throw badRequest("Invalid 'month': it has not begun yet");
    const format = readQuery(c, StatementQuery).format ?? "json";
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

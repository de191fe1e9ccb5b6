import type { PageConfig, PageCtx } from "../../lib/render/page.tsx";
import { getMembership } from "../../lib/auth/users.ts";
import { switchSessionAccount } from "../../lib/auth/sessions.ts";
import { isId } from "../../lib/ids.ts";

export const config: PageConfig = { title: "Switch account", auth: "user", layout: "dashboard" };

export const handler = {
  async POST(ctx: PageCtx) {
    const v = ctx.viewer!;
    const id = String(ctx.form.get("account_id") ?? "");
    // Only an account the user belongs to.
    if (isId("acct", id) && await getMembership(ctx.svc.kv, id, v.user!.id)) {
      await switchSessionAccount(ctx.svc.kv, v.token, id, ctx.svc.now());
    }
    return ctx.redirect("/dashboard");
  },
};

export default function Switch() {
  return null;
}

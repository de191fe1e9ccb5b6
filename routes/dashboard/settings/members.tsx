import type { PageConfig, PageCtx, PageProps } from "../../../lib/render/page.tsx";
import { Csrf, type Viewer } from "../../../lib/render/page.tsx";
import {
  addMember,
  getUserByEmail,
  listMembersByAccount,
  MAX_EMAIL_CHARS,
  removeMember,
  type Role,
} from "../../../lib/auth/users.ts";
import { Notice } from "../../../lib/render/layout.tsx";
import { formatTime } from "../../../lib/render/format.ts";
import { isId } from "../../../lib/ids.ts";

export const config: PageConfig = {
  title: "Settings › Members",
  auth: "user",
  layout: "dashboard",
  nav: "members",
};

interface Data {
  members: { user_id: string; name: string; email: string; role: Role; since: string }[];
  canManage: boolean;
  notice: { kind: "ok" | "error"; text: string } | null;
}

async function load(ctx: PageCtx, notice: Data["notice"] = null, status = 200) {
  const list = await listMembersByAccount(ctx.svc.kv, ctx.viewer!.account!.id);
  return {
    data: {
      members: list.map(({ membership: m, user: u }) => ({
        user_id: u.id,
        name: u.name,
        email: u.email,
        role: m.role,
        since: m.created_at,
      })),
      canManage: ctx.viewer!.role === "owner",
      notice,
    },
    status,
  };
}

export const handler = {
  GET: (ctx: PageCtx) => load(ctx),
  async POST(ctx: PageCtx) {
    if (ctx.viewer!.role !== "owner") {
      return load(ctx, { kind: "error", text: "Only the account's owner manages members." }, 403);
    }
    const accountId = ctx.viewer!.account!.id;
    const remove = String(ctx.form.get("remove") ?? "");
    if (remove) {
      // An id of another shape names no member, and is not read.
      const ok = isId("user", remove) && await removeMember(ctx.svc.kv, accountId, remove);
      return load(
        ctx,
        ok
          ? { kind: "ok", text: "Member removed." }
          : { kind: "error", text: "That member cannot be removed." },
        ok ? 200 : 400,
      );
    }
    const email = String(ctx.form.get("email") ?? "").trim();
    if (email.length > MAX_EMAIL_CHARS) {
      return load(ctx, {
        kind: "error",
        text: `An email has at most ${MAX_EMAIL_CHARS} characters.`,
      }, 400);
    }
    const user = email ? await getUserByEmail(ctx.svc.kv, email) : null;
    if (!user) {
      return load(ctx, {
        kind: "error",
        text: "No user has that email: ask them to sign up first, then add them here.",
      }, 404);
    }
    const added = await addMember(ctx.svc.kv, accountId, user.id, "member", ctx.svc.now());
    return load(
      ctx,
      added
        ? { kind: "ok", text: `${user.email} is now a member.` }
        : { kind: "error", text: `${user.email} is already a member.` },
      added ? 200 : 409,
    );
  },
};

/** The people of an account: the owner and members. */
export default function Members({ data, viewer }: PageProps<Data>) {
  return (
    <>
      {data.notice ? <Notice kind={data.notice.kind}>{data.notice.text}</Notice> : null}
      <section class="card">
        <h2>Members</h2>
        <div class="table-wrap">
          <table class="data" id="members">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Email</th>
                <th scope="col">Role</th>
                <th scope="col">Since</th>
                {data.canManage
                  ? (
                    <th scope="col">
                      <span class="sr-only">Actions</span>
                    </th>
                  )
                  : null}
              </tr>
            </thead>
            <tbody>
              {data.members.map((m) => (
                <tr>
                  <th scope="row">{m.name}</th>
                  <td>{m.email}</td>
                  <td>
                    <span class="badge">{m.role}</span>
                  </td>
                  <td>{formatTime(m.since)}</td>
                  {data.canManage
                    ? (
                      <td>
                        {m.role !== "owner"
                          ? (
                            <form method="post">
                              <Csrf viewer={viewer as Viewer} />
                              <input type="hidden" name="remove" value={m.user_id} />
                              <button
                                type="submit"
                                class="small danger-outline"
                                aria-label={`Remove ${m.email}`}
                              >
                                Remove
                              </button>
                            </form>
                          )
                          : null}
                      </td>
                    )
                    : null}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      {data.canManage
        ? (
          <section class="card">
            <h2>Add a member</h2>
            <form method="post" class="row-form">
              <Csrf viewer={viewer} />
              <label>
                Email of a signed-up user<input name="email" type="email" required />
              </label>
              <button type="submit">Add member</button>
            </form>
          </section>
        )
        : null}
    </>
  );
}

import type { PageConfig, PageCtx, PageProps } from "../../lib/render/page.tsx";
import { listKeysByAccount } from "../../lib/auth/keys.ts";
import { keyJson } from "../../lib/http/presenters.ts";
import { Island } from "../../lib/render/island.tsx";
import KeysManager, { type KeyView } from "../../islands/KeysManager.tsx";

export const config: PageConfig = { title: "Keys", auth: "user", layout: "dashboard", nav: "keys" };

interface Data {
  keys: KeyView[];
  csrf: string;
}

export const handler = {
  async GET(ctx: PageCtx): Promise<{ data: Data }> {
    const all = await listKeysByAccount(ctx.svc.kv, ctx.viewer!.account!.id, ctx.svc.now());
    return {
      data: {
        // The same view of each key as GET /v1/keys.
        keys: all.filter(({ key }) => key.revoked_at === null).map(({ key, spend }) =>
          keyJson(key, spend)
        ),
        csrf: ctx.viewer!.session.csrf,
      },
    };
  },
};

/** The account's keys: spend and limits, create, edit, disable and revoke. */
export default function Keys({ data }: PageProps<Data>) {
  return (
    <>
      <p class="muted">
        Inference keys call the models; management keys (and this dashboard) manage the account.
        Each key's spend is also at <code>GET /v1/keys/&#123;id&#125;/usage</code>.
      </p>
      <Island
        component={KeysManager}
        props={{ keys: data.keys, csrf: data.csrf }}
      />
    </>
  );
}

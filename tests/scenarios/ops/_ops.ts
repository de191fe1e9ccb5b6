/** What the process tests of operations share: an account with credit and an inference key. */
import { ADMIN_TOKEN, json } from "../../_helpers.ts";

/** An account with $5 of credit on the router at `url`, and an inference key of it. */
export async function accountWithKey(url: string) {
  const admin = (path: string, body: unknown) =>
    fetch(url + path, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  const acct = await json(await admin("/v1/admin/accounts", { name: "Operated" }), 201);
  await json(
    await admin(`/v1/admin/accounts/${acct.id}/adjustments`, { amount: "5", reason: "t" }),
    201,
  );
  const k = await fetch(`${url}/v1/keys`, {
    method: "POST",
    headers: { authorization: `Bearer ${acct.management_key}`, "content-type": "application/json" },
    body: JSON.stringify({ name: "ops" }),
  });
  const key = await json(k, 201);
  return { accountId: acct.id as string, key: key.key as string, keyId: key.id as string };
}

/** The management API from an island, as the signed-in session (browser side; no server imports). */

/**
 * Calls the API with the session's CSRF token; returns the JSON, or throws the error's message.
 *
 * @example
 * ```ts
 * const key = await api(csrf, "POST", "/v1/keys", { name: "ci" });
 * ```
 */
export async function api(csrf: string, method: string, path: string, body?: unknown) {
  const res = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-csrf-token": csrf },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new Error(json?.error?.message ?? `The request failed (${res.status})`);
  return json;
}

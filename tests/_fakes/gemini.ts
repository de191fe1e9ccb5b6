/**
 * A real HTTP server on 127.0.0.1 that speaks Gemini's wire format (`generateContent` and
 * `streamGenerateContent?alt=sse`, function calling included), standing in for the provider.
 */
import { serveLoopback } from "./serve.ts";

export interface GeminiScenario {
  /** `usageMetadata` to report; by default derived from the text lengths. */
  usage?: Record<string, unknown>;
  /** Reply with this status and an error body (which must never reach the client). */
  status?: number;
  /** The reply's text; by default "Echo: " + the last user text, or the last function result. */
  content?: string;
  /** Answer with a call of this function instead of text (with Gemini's call `id` if given). */
  functionCall?: { name: string; args: Record<string, unknown>; id?: string };
  /** Number of events a stream is cut into. */
  chunks?: number;
  /** Block the prompt for this reason: no candidate, only promptFeedback and the prompt's usage. */
  blockReason?: string;
  /** In a stream, send an error event (echoing the request) after this many events. */
  errorAfter?: number;
  /** In a stream, break the connection (no proper end) after this many events. */
  dropAfter?: number;
  /** In a stream, stop sending (but keep the connection open) after this many events. */
  stallAfter?: number;
}

export interface FakeGemini {
  url: string;
  scenario: GeminiScenario;
  requests: Record<string, unknown>[];
  /** The path and query of each request (model and method). */
  paths: string[];
  keys: string[];
  /** The function call ids handed out; once there are some, each functionResponse must carry one. */
  callIds: Set<string>;
  close(): Promise<void>;
}

type Part = Record<string, unknown>;

/**
 * The fields of Gemini's `Schema`, the OpenAPI subset that `parameters` and `responseSchema` take.
 * Its parser knows no other: `additionalProperties`, `$ref`, `const`... are refused with a 400.
 */
const SCHEMA_FIELDS = new Set([
  "type",
  "format",
  "title",
  "description",
  "nullable",
  "enum",
  "maxItems",
  "minItems",
  "properties",
  "required",
  "minProperties",
  "maxProperties",
  "minLength",
  "maxLength",
  "pattern",
  "example",
  "anyOf",
  "propertyOrdering",
  "default",
  "items",
  "minimum",
  "maximum",
]);

const isObject = (v: unknown): v is Record<string, unknown> =>
  !!v && typeof v === "object" && !Array.isArray(v);

/** Why Gemini's parser refuses this `Schema` (wording as the real API's), or null. */
function schemaError(s: unknown, at: string): string | null {
  if (!isObject(s)) return `Invalid value at '${at}': Starting an object on a scalar field`;
  for (const [k, v] of Object.entries(s)) {
    if (!SCHEMA_FIELDS.has(k)) return `Unknown name "${k}" at '${at}': Cannot find field.`;
    if (k === "type" && typeof v !== "string") {
      return `Invalid value at '${at}.type': Proto field is not repeating, cannot start list.`;
    }
    const subs: [unknown, string][] = k === "properties" && isObject(v)
      ? Object.values(v).map((x, i) => [x, `${at}.properties[${i}].value`])
      : k === "items"
      ? [[v, `${at}.items`]]
      : k === "anyOf" && Array.isArray(v)
      ? v.map((x, i) => [x, `${at}.any_of[${i}]`])
      : [];
    for (const [x, where] of subs) {
      const e = schemaError(x, where);
      if (e) return e;
    }
  }
  return null;
}

/** Why the real API would refuse this request's tools, schemas or function responses, or null. */
function requestError(body: Record<string, unknown>, callIds: Set<string>): string | null {
  const tools = Array.isArray(body.tools) ? body.tools : [];
  for (const [i, t] of tools.entries()) {
    const decls = isObject(t) && Array.isArray(t.functionDeclarations)
      ? t.functionDeclarations
      : [];
    for (const [j, d] of decls.entries()) {
      const at = `tools[${i}].function_declarations[${j}]`;
      if (!isObject(d)) return `Invalid value at '${at}'`;
      if (d.parameters !== undefined && d.parametersJsonSchema !== undefined) {
        return `${at}: parameters and parameters_json_schema are mutually exclusive`;
      }
      if (d.parameters !== undefined) {
        const e = schemaError(d.parameters, `${at}.parameters`);
        if (e) return e;
      }
      if (d.parametersJsonSchema !== undefined && !isObject(d.parametersJsonSchema)) {
        return `${at}.parameters_json_schema: the schema must describe an object`;
      }
    }
  }
  const gen = isObject(body.generationConfig) ? body.generationConfig : {};
  if (gen.responseSchema !== undefined && gen.responseJsonSchema !== undefined) {
    return "generation_config: response_schema and response_json_schema are mutually exclusive";
  }
  if (gen.responseSchema !== undefined) {
    const e = schemaError(gen.responseSchema, "generation_config.response_schema");
    if (e) return e;
  }
  if (callIds.size) {
    const contents = Array.isArray(body.contents) ? body.contents : [];
    for (const c of contents) {
      for (const p of (isObject(c) && Array.isArray(c.parts) ? c.parts : [])) {
        const fr = isObject(p) ? p.functionResponse : undefined;
        if (isObject(fr) && !callIds.has(String(fr.id))) {
          return `function_response.id ${JSON.stringify(fr.id)} matches no function call id`;
        }
      }
    }
  }
  return null;
}

function replyText(body: Record<string, unknown>): string {
  const contents = (body.contents ?? []) as { role: string; parts: Part[] }[];
  const last = [...contents].reverse().find((c) => c.role === "user");
  const parts = last?.parts ?? [];
  const fr = parts.find((p) => p.functionResponse)?.functionResponse as Part | undefined;
  if (fr) return `Tool said: ${JSON.stringify(fr.response)}`;
  return `Echo: ${parts.map((p) => p.text ?? "").join(" ")}`;
}

export function startFakeGemini(): FakeGemini {
  const fake: FakeGemini = {
    url: "",
    scenario: {},
    requests: [],
    paths: [],
    keys: [],
    callIds: new Set(),
    close: () => server.close(),
  };
  const server = serveLoopback(
    async (req) => {
      const url = new URL(req.url);
      const body = await req.json().catch(() => ({}));
      fake.requests.push(body);
      fake.paths.push(url.pathname + url.search);
      fake.keys.push(req.headers.get("x-goog-api-key") ?? "");
      const s = fake.scenario;
      const m = /^\/v1beta\/models\/([^:]+):(generateContent|streamGenerateContent)$/.exec(
        url.pathname,
      );
      if (!m) return new Response("not found", { status: 404 });
      const invalid = requestError(body, fake.callIds);
      if (invalid) {
        return Response.json(
          { error: { code: 400, message: invalid, status: "INVALID_ARGUMENT" } },
          { status: 400 },
        );
      }
      if (s.functionCall?.id) fake.callIds.add(s.functionCall.id);
      if (s.status && s.status >= 400) {
        return Response.json(
          { error: { code: s.status, message: `failure echoing: ${JSON.stringify(body)}` } },
          { status: s.status },
        );
      }
      const text = s.content ?? replyText(body);
      const usage = s.usage ?? {
        promptTokenCount: Math.ceil(JSON.stringify(body.contents ?? []).length / 4),
        candidatesTokenCount: Math.ceil(text.length / 4),
        totalTokenCount: 0,
      };
      const responseId = crypto.randomUUID().replaceAll("-", "").slice(0, 20);
      const gen = (body.generationConfig ?? {}) as Record<string, unknown>;
      const candidateCount = typeof gen.candidateCount === "number" ? gen.candidateCount : 1;
      const answer = (parts: Part[], finish: string | null, u: unknown) => ({
        // One candidate per `generationConfig.candidateCount` (the same parts in each).
        candidates: Array.from({ length: candidateCount }, (_, index) => ({
          content: { role: "model", parts },
          ...(finish ? { finishReason: finish } : {}),
          index,
        })),
        usageMetadata: u,
        modelVersion: m[1],
        responseId,
      });
      if (s.blockReason) {
        const blocked = {
          promptFeedback: { blockReason: s.blockReason },
          usageMetadata: { promptTokenCount: usage.promptTokenCount, totalTokenCount: 0 },
          modelVersion: m[1],
          responseId,
        };
        if (m[2] === "generateContent") return Response.json(blocked);
        return new Response(`data: ${JSON.stringify(blocked)}\r\n\r\n`, {
          headers: { "content-type": "text/event-stream" },
        });
      }
      if (m[2] === "generateContent") {
        const parts: Part[] = s.functionCall ? [{ functionCall: s.functionCall }] : [{ text }];
        return Response.json(answer(parts, "STOP", usage));
      }
      if (url.searchParams.get("alt") !== "sse") return new Response("alt=sse", { status: 400 });
      const n = Math.max(1, s.chunks ?? 3);
      const size = Math.ceil(text.length / n);
      const partial = { promptTokenCount: usage.promptTokenCount };
      const events: unknown[] = s.functionCall
        ? [answer([{ functionCall: s.functionCall }], "STOP", usage)]
        : Array.from(
          { length: n },
          (_, i) =>
            answer(
              [{ text: text.slice(i * size, (i + 1) * size) }],
              i === n - 1 ? "STOP" : null,
              i === n - 1 ? usage : partial,
            ),
        );
      if (s.errorAfter !== undefined) {
        events.splice(s.errorAfter, events.length, {
          error: { code: 500, message: `failure echoing: ${JSON.stringify(body)}` },
        });
      }
      const enc = new TextEncoder();
      let i = 0;
      let timer: ReturnType<typeof setTimeout> | undefined;
      return new Response(
        new ReadableStream<Uint8Array>({
          async pull(ctrl) {
            if (s.stallAfter !== undefined && i >= s.stallAfter) {
              // Hold the connection open without sending, until the reader gives up.
              await new Promise<void>((r) => timer = setTimeout(r, 60_000));
            } else if (s.dropAfter !== undefined && i >= s.dropAfter) {
              ctrl.error(new Error("connection lost"));
            } else if (i < events.length) {
              ctrl.enqueue(enc.encode(`data: ${JSON.stringify(events[i++])}\r\n\r\n`));
            } else ctrl.close();
          },
          cancel() {
            clearTimeout(timer);
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      );
    },
  );
  fake.url = server.origin;
  return fake;
}

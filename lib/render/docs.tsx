/**
 * The API reference at `/docs`: the OpenAPI document rendered on the server as one page (every
 * operation with its credentials, parameters, body and answers; every schema), no script and
 * nothing fetched from elsewhere.
 */
import type { VNode } from "preact";
import { renderDocument } from "./page.tsx";
import { PublicShell } from "./layout.tsx";

/** The parts of an OpenAPI 3.1 document the page reads. */
interface Doc {
  info: { title: string; version: string; description?: string };
  tags?: { name: string; description?: string }[];
  paths?: Record<string, Record<string, Operation>>;
  components?: { schemas?: Record<string, Schema> };
}
interface Operation {
  summary?: string;
  tags?: string[];
  security?: Record<string, string[]>[];
  parameters?: {
    name: string;
    in: string;
    required?: boolean;
    description?: string;
    schema?: Schema;
  }[];
  requestBody?: { content?: Record<string, { schema?: Schema }> };
  responses?: Record<
    string,
    { description?: string; content?: Record<string, { schema?: Schema }> }
  >;
}
type Schema = {
  $ref?: string;
  type?: string | string[];
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  anyOf?: Schema[];
  enum?: unknown[];
  const?: unknown;
  description?: string;
  default?: unknown;
} & Record<string, unknown>;

const refName = (ref: string) => ref.replace("#/components/schemas/", "");
const anchor = (kind: string, name: string) => `${kind}-${name.replace(/[^A-Za-z0-9_-]/g, "-")}`;

/** A schema in a line: its type, a link for a named one, the values of an enum. */
function TypeOf({ s }: { s: Schema | undefined }): VNode {
  if (!s) return <code>any</code>;
  if (s.$ref) return <a href={`#${anchor("schema", refName(s.$ref))}`}>{refName(s.$ref)}</a>;
  if (s.enum) return <code>{s.enum.map((v) => JSON.stringify(v)).join(" | ")}</code>;
  if (s.const !== undefined) return <code>{JSON.stringify(s.const)}</code>;
  if (s.anyOf) {
    return (
      <>
        {s.anyOf.map((x, i) => (
          <>
            {i ? " | " : ""}
            <TypeOf s={x} />
          </>
        ))}
      </>
    );
  }
  if (s.type === "array" || (Array.isArray(s.type) && s.type.includes("array"))) {
    return (
      <>
        array of <TypeOf s={s.items} />
      </>
    );
  }
  const t = Array.isArray(s.type) ? s.type.join(" | ") : s.type ?? "any";
  return <code>{t}</code>;
}

/** An object schema's fields as a table; any other schema as its type. */
function SchemaView({ s }: { s: Schema | undefined }) {
  if (!s?.properties) {
    return (
      <p>
        <TypeOf s={s} />
        {s?.description ? ` · ${s.description}` : ""}
      </p>
    );
  }
  const required = new Set(s.required ?? []);
  return (
    <table class="data">
      <thead>
        <tr>
          <th scope="col">field</th>
          <th scope="col">type</th>
          <th scope="col">about</th>
        </tr>
      </thead>
      <tbody>
        {Object.entries(s.properties).map(([name, p]) => (
          <tr>
            <th scope="row">
              <code>{name}</code>
              {required.has(name) ? "" : "?"}
            </th>
            <td>
              <TypeOf s={p} />
            </td>
            <td>{p.description ?? ""}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function OperationView({ method, path, op }: { method: string; path: string; op: Operation }) {
  const auth = (op.security ?? []).flatMap((r) => Object.keys(r));
  const body = Object.entries(op.requestBody?.content ?? {});
  return (
    <section class="card" id={anchor("op", `${method}-${path}`)}>
      <h3>
        <code>{method.toUpperCase()} {path}</code>
      </h3>
      {op.summary ? <p>{op.summary}</p> : null}
      <p class="muted">Credentials: {auth.length ? auth.join(" or ") : "none"}</p>
      {op.parameters?.length
        ? (
          <table class="data">
            <thead>
              <tr>
                <th scope="col">parameter</th>
                <th scope="col">in</th>
                <th scope="col">type</th>
                <th scope="col">about</th>
              </tr>
            </thead>
            <tbody>
              {op.parameters.map((p) => (
                <tr>
                  <th scope="row">
                    <code>{p.name}</code>
                    {p.required ? "" : "?"}
                  </th>
                  <td>{p.in}</td>
                  <td>
                    <TypeOf s={p.schema} />
                  </td>
                  <td>{p.description ?? ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )
        : null}
      {body.map(([type, media]) => (
        <>
          <h4>Body ({type})</h4>
          <SchemaView s={media.schema} />
        </>
      ))}
      <h4>Answers</h4>
      <ul>
        {Object.entries(op.responses ?? {}).map(([status, r]) => (
          <li>
            <strong>{status}</strong> {r.description}
            {Object.entries(r.content ?? {}).map(([type, media]) => (
              <>
                {" · "}
                <code>{type}</code> <TypeOf s={media.schema} />
              </>
            ))}
          </li>
        ))}
      </ul>
    </section>
  );
}

/**
 * The reference page of an OpenAPI document.
 *
 * @example
 * ```ts
 * app.get("/docs", () => docsPage(document()));
 * ```
 */
export function docsPage(document: object): Promise<Response> {
  const doc = document as Doc;
  const ops = Object.entries(doc.paths ?? {}).flatMap(([path, methods]) =>
    Object.entries(methods).map(([method, op]) => ({ path, method, op }))
  );
  const tags = doc.tags ?? [];
  const schemas = Object.entries(doc.components?.schemas ?? {});
  return renderDocument(
    "API reference",
    <PublicShell>
      <h1>{doc.info.title} API</h1>
      {doc.info.description ? <p>{doc.info.description}</p> : null}
      <p>
        The same as a machine-readable document: <a href="/v1/openapi.json">/v1/openapi.json</a>
        {" "}
        (OpenAPI 3.1).
      </p>
      <nav aria-label="Operations">
        <ul>
          {ops.map(({ path, method }) => (
            <li>
              <a href={`#${anchor("op", `${method}-${path}`)}`}>
                <code>{method.toUpperCase()} {path}</code>
              </a>
            </li>
          ))}
        </ul>
      </nav>
      {tags.map((tag) => {
        const mine = ops.filter(({ op }) => op.tags?.includes(tag.name));
        if (!mine.length) return null;
        return (
          <>
            <h2 id={anchor("tag", tag.name)}>{tag.name}</h2>
            {tag.description ? <p class="muted">{tag.description}</p> : null}
            {mine.map(({ path, method, op }) => (
              <OperationView method={method} path={path} op={op} />
            ))}
          </>
        );
      })}
      <h2 id="schemas">Schemas</h2>
      {schemas.map(([name, s]) => (
        <section class="card" id={anchor("schema", name)}>
          <h3>{name}</h3>
          {s.description ? <p>{s.description}</p> : null}
          <SchemaView s={s} />
        </section>
      ))}
    </PublicShell>,
  );
}

import assert from "node:assert/strict";

/**
 * RFC 4180 parser for tests: quoted fields with doubled quotes, commas and line breaks inside;
 * records end with CRLF, and the text must end with one.
 */
export function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [], field = "", i = 0, quoted = false;
  while (i < text.length) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') (field += '"', i += 2);
      else if (ch === '"') (quoted = false, i++);
      else (field += ch, i++);
    } else if (ch === '"') (quoted = true, i++);
    else if (ch === ",") (row.push(field), field = "", i++);
    else if (ch === "\r" && text[i + 1] === "\n") {
      row.push(field), rows.push(row), row = [], field = "", i += 2;
    } else (field += ch, i++);
  }
  assert.equal(field, "", "the CSV ends with CRLF");
  assert.equal(row.length, 0, "the CSV ends with CRLF");
  return rows;
}

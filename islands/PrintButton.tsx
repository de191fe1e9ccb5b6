/** Prints the page (a statement): the browser's print dialog, where "Save as PDF" also is. */
export default function PrintButton(_: Record<string, unknown>) {
  return <button type="button" onClick={() => globalThis.print()}>Print</button>;
}

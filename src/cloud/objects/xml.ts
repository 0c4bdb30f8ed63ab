/**
 * S3's XML: the documents the object store answers (built from plain values, every text escaped)
 * and the few request bodies it reads (CompleteMultipartUpload, Delete), which are flat lists of
 * elements, read with a bounded tag scan rather than a general XML parser.
 */

/** An S3 refusal: its HTTP status, S3 error code (NoSuchKey, ...) and one sentence. */
export class S3Error extends Error {
  override name = "S3Error";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** Headers the answer carries (416's Content-Range). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** Text content escaped (the documents have no attributes, so quotes stay as they are). */
export function escapeXml(s: string): string {
  return s.replace(/[&<>]/g, (c) => (c === "&" ? "&amp;" : c === "<" ? "&lt;" : "&gt;"));
}

function unescapeXml(s: string): string {
  return s.replace(/&(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);/g, (_, e: string) => {
    if (e[0] === "#") return String.fromCodePoint(e[1] === "x" ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10));
    return ({ amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" } as Record<string, string>)[e];
  });
}

/** An element tree as nested arrays: [name, text | children]. */
export type XmlNode = [string, string | number | boolean | XmlNode[] | undefined];

function render(node: XmlNode): string {
  const [name, value] = node;
  if (value === undefined) return "";
  const inner = Array.isArray(value) ? value.map(render).join("") : escapeXml(String(value));
  return `<${name}>${inner}</${name}>`;
}

/** A document whose root carries S3's namespace. */
export function xmlDocument(root: string, children: XmlNode[]): string {
  return (
    `<?xml version="1.0" encoding="UTF-8"?>\n<${root} xmlns="http://s3.amazonaws.com/doc/2006-03-01/">` +
    children.map(render).join("") +
    `</${root}>`
  );
}

export function errorDocument(err: S3Error, resource: string, requestId: string): string {
  return (
    `<?xml version="1.0" encoding="UTF-8"?>\n` +
    render([
      "Error",
      [
        ["Code", err.code],
        ["Message", err.message],
        ["Resource", resource],
        ["RequestId", requestId],
      ],
    ])
  );
}

/** The text of every `<tag>` element inside each `<group>` element of `xml`, in order. */
export function readGroups(xml: string, group: string, tags: string[]): Record<string, string>[] {
  const out: Record<string, string>[] = [];
  const groupRe = new RegExp(`<${group}(?:\\s[^>]*)?>([\\s\\S]*?)</${group}>`, "g");
  for (const m of xml.matchAll(groupRe)) {
    const rec: Record<string, string> = {};
    for (const t of tags) {
      const tm = new RegExp(`<${t}(?:\\s[^>]*)?>([\\s\\S]*?)</${t}>`).exec(m[1]);
      if (tm) rec[t] = unescapeXml(tm[1]);
    }
    out.push(rec);
  }
  return out;
}

/** The text of the first `<tag>` element of `xml`, if any. */
export function readTag(xml: string, tag: string): string | undefined {
  const m = new RegExp(`<${tag}(?:\\s[^>]*)?>([\\s\\S]*?)</${tag}>`).exec(xml);
  return m ? unescapeXml(m[1]) : undefined;
}

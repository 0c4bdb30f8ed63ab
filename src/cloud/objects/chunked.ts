/**
 * The aws-chunked body encoding real S3 clients stream uploads in: `SIZE[;chunk-signature=SIG]`
 * CRLF, SIZE bytes, CRLF, ..., a zero-size chunk, then (in the trailer forms) header lines such as
 * `x-amz-checksum-crc32:BASE64` and an empty line. The decoder passes the data bytes on as they
 * arrive (nothing is held beyond a header line) and checks what the sender vouched for: each
 * chunk's signature (chained from the request's), the trailer's signature, the checksum the
 * trailer names, and the decoded length. The blob being written is discarded if any check fails.
 */
import { createHash, type Hash } from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";
import { crc32 } from "node:zlib";
import { chunkSignature, trailerSignature, type SigningContext } from "./sigv4.js";
import { S3Error } from "./xml.js";

/** The longest chunk header or trailer line accepted. */
const MAX_LINE = 4096;
/** The longest trailer accepted (all lines). */
const MAX_TRAILER = 16 * 1024;

export interface ChunkedOptions {
  /** Signed chunks (STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]): check each chunk's signature. */
  signing?: SigningContext;
  /** A trailer follows the last chunk (the *-TRAILER forms); x-amz-trailer names its checksum. */
  trailer?: string;
  /** x-amz-decoded-content-length, when sent. */
  decodedLength?: number;
}

type State = "header" | "data" | "data-end" | "trailer" | "done";

export class AwsChunkedDecoder extends Transform {
  private state: State = "header";
  private line = "";
  private remaining = 0;
  private chunkHash: Hash | null = null;
  private chunkSig = "";
  private previousSig: string;
  private crlfSeen = 0;
  private decoded = 0;
  private crc = 0;
  private trailerText = "";
  /** The zero-size chunk was read: the next CRLF ends the body. */
  private finalCrlf = false;
  /** The crc32 of the decoded bytes, as a trailer checksum is written (base64 of big-endian). */
  get crc32Base64(): string {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(this.crc >>> 0);
    return b.toString("base64");
  }

  constructor(private readonly opts: ChunkedOptions) {
    super();
    this.previousSig = opts.signing?.seedSignature ?? "";
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    try {
      this.consume(chunk);
      done();
    } catch (e) {
      done(e as Error);
    }
  }

  override _flush(done: TransformCallback): void {
    if (this.state !== "done")
      return done(new S3Error(400, "IncompleteBody", "the aws-chunked body ended before its last chunk"));
    if (this.opts.decodedLength !== undefined && this.decoded !== this.opts.decodedLength)
      return done(
        new S3Error(
          400,
          "IncompleteBody",
          `the body decoded to ${this.decoded} bytes, but x-amz-decoded-content-length said ${this.opts.decodedLength}`,
        ),
      );
    done();
  }

  private consume(buf: Buffer): void {
    let i = 0;
    while (i < buf.length) {
      switch (this.state) {
        case "header":
        case "trailer": {
          const nl = buf.indexOf(0x0a, i);
          const end = nl < 0 ? buf.length : nl + 1;
          this.line += buf.toString("latin1", i, end);
          i = end;
          if (this.line.length > MAX_LINE)
            throw new S3Error(400, "InvalidRequest", "an aws-chunked header line is too long");
          if (nl < 0) break;
          const line = this.line.replace(/\r?\n$/, "");
          this.line = "";
          if (this.state === "header") this.startChunk(line);
          else this.trailerLine(line);
          break;
        }
        case "data": {
          const n = Math.min(this.remaining, buf.length - i);
          const part = buf.subarray(i, i + n);
          this.chunkHash?.update(part);
          this.crc = crc32(part, this.crc);
          this.decoded += n;
          this.push(part);
          this.remaining -= n;
          i += n;
          if (this.remaining === 0) this.endChunkData();
          break;
        }
        case "data-end": {
          // The CRLF after a chunk's data.
          const want = this.crlfSeen === 0 ? 0x0d : 0x0a;
          if (buf[i] !== want) throw new S3Error(400, "InvalidRequest", "an aws-chunked chunk is not followed by CRLF");
          i++;
          if (++this.crlfSeen === 2) {
            this.crlfSeen = 0;
            this.state = this.finalCrlf ? "done" : "header";
          }
          break;
        }
        case "done":
          // Trailing bytes after the final CRLF (some clients send none, some an extra CRLF).
          if (buf.subarray(i).toString("latin1").trim() !== "")
            throw new S3Error(400, "InvalidRequest", "bytes after the end of an aws-chunked body");
          i = buf.length;
          break;
      }
    }
  }

  private startChunk(line: string): void {
    const m = /^([0-9a-fA-F]{1,16})(?:;chunk-signature=([0-9a-f]{64}))?$/.exec(line);
    if (!m) throw new S3Error(400, "InvalidRequest", `"${line.slice(0, 80)}" is not an aws-chunked chunk header`);
    const size = parseInt(m[1], 16);
    if (this.opts.signing) {
      if (!m[2])
        throw new S3Error(403, "SignatureDoesNotMatch", "a chunk of a signed aws-chunked body has no signature");
      this.chunkSig = m[2];
      this.chunkHash = createHash("sha256");
    }
    this.remaining = size;
    if (size > 0) {
      this.state = "data";
      return;
    }
    this.endChunkData();
  }

  private endChunkData(): void {
    const last = this.remaining === 0 && this.state !== "data";
    if (this.opts.signing && this.chunkHash) {
      const expected = chunkSignature(this.opts.signing, this.previousSig, this.chunkHash.digest("hex"));
      if (expected !== this.chunkSig)
        throw new S3Error(403, "SignatureDoesNotMatch", "a chunk's signature does not match its bytes");
      this.previousSig = this.chunkSig;
      this.chunkHash = null;
    }
    if (last) {
      // The zero-size chunk: then the trailer (its own lines), or the CRLF that ends the body.
      this.state = this.opts.trailer !== undefined ? "trailer" : "data-end";
      if (this.opts.trailer === undefined) this.finalCrlf = true;
      return;
    }
    this.state = "data-end";
  }

  private trailerLine(line: string): void {
    if (line === "") {
      this.checkTrailer();
      this.state = "done";
      return;
    }
    this.trailerText += line + "\n";
    if (this.trailerText.length > MAX_TRAILER) throw new S3Error(400, "InvalidRequest", "the trailer is too long");
  }

  private checkTrailer(): void {
    const fields = new Map<string, string>();
    for (const l of this.trailerText.split("\n")) {
      const c = l.indexOf(":");
      if (c > 0) fields.set(l.slice(0, c).trim().toLowerCase(), l.slice(c + 1).trim());
    }
    if (this.opts.signing) {
      const sig = fields.get("x-amz-trailer-signature");
      const signedText = this.trailerText
        .split("\n")
        .filter((l) => l !== "" && !l.toLowerCase().startsWith("x-amz-trailer-signature"))
        .map((l) => l + "\n")
        .join("");
      if (sig !== trailerSignature(this.opts.signing, this.previousSig, signedText))
        throw new S3Error(403, "SignatureDoesNotMatch", "the trailer's signature does not match");
    }
    const name = (this.opts.trailer ?? "").toLowerCase();
    const value = fields.get(name);
    if (name === "" || value === undefined)
      throw new S3Error(400, "InvalidRequest", `the trailer does not carry ${name || "a checksum"}`);
    if (name === "x-amz-checksum-crc32") {
      if (value !== this.crc32Base64)
        throw new S3Error(400, "BadDigest", "The CRC32 you specified did not match the calculated checksum.");
    } else {
      throw new S3Error(400, "InvalidRequest", `the checksum ${name} is not supported (only x-amz-checksum-crc32)`);
    }
  }
}

// Images of the report as data: URIs (the report loads nothing from outside itself). The
// type comes from the bytes' signature, so a wrong file is caught here, not as a broken
// picture in the browser.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import type { ReportImage } from './types.ts';

const PNG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const JPEG = [0xff, 0xd8, 0xff];

const startsWith = (bytes: Uint8Array, sig: number[]) => bytes.length >= sig.length && sig.every((b, i) => bytes[i] === b);

/** `data:image/png;base64,...` (or image/jpeg); throws for other bytes. */
export function imageDataUri(image: ReportImage): string {
  const { bytes } = image;
  const type = startsWith(bytes, PNG) ? 'image/png' : startsWith(bytes, JPEG) ? 'image/jpeg' : null;
  if (!type) {
    const head = Array.from(bytes.subarray(0, 8), (b) => b.toString(16).padStart(2, '0')).join(' ');
    throw new Error(`report: image ${JSON.stringify(image.alt ?? '')} is neither PNG nor JPEG (first bytes: ${head || 'none'})`);
  }
  return `data:${type};base64,${Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64')}`;
}

/** An image file's bytes, its file name as the alternative text. */
export function imageFile(path: string, alt = basename(path)): ReportImage {
  const image = { bytes: new Uint8Array(readFileSync(path)), alt };
  try {
    imageDataUri(image); // fail now, naming the file, rather than when the report renders
  } catch (err) {
    throw new Error(`report: ${path}: ${(err as Error).message.replace(/^report: image "[^"]*" /, '')}`);
  }
  return image;
}

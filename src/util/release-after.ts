import { PassThrough, type Readable } from 'node:stream';
import { finished } from 'node:stream/promises';

/**
 * `source`'s bytes, ending only once `release` (an unmount, say) has finished: whoever reads to
 * the end may use what was released at once (remove the layer, mount it elsewhere) instead of
 * racing a release still under way. A failed release fails the stream. A reader that stops early
 * destroys `source`; the release runs either way.
 */
export function releaseAfter(source: Readable, release: () => Promise<void>): Readable {
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  source.pipe(out, { end: false });
  finished(source).then(
    () => release().then(() => out.end(), (err: unknown) => out.destroy(err as Error)),
    (err: unknown) => {
      out.destroy(err as Error);
      void release().catch(() => undefined);
    },
  );
  out.on('close', () => {
    if (!source.readableEnded) source.destroy();
  });
  return out;
}

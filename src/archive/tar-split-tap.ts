/**
 * Record tar-split (and the DiffID) of a layer's uncompressed tar beside whatever consumes its
 * chunks: each chunk is shown to the recorder before the consumer sees it (tapped-chunks.ts), so
 * no stream stage sits between the input and the driver, and a plain tar's chunks stay lent
 * (file-chunks.ts).
 *
 * Tried and dropped, recording on a worker thread (on two cores, what bounds an import is CPU):
 * - reading the chunks in shared memory made a 200 MB import slower (1.44 -> 1.66 s): V8 copies
 *   out of shared memory with slow relaxed-atomic copies, and a third busy thread slowed the file
 *   writer's thread too;
 * - posting a copy of each chunk in buffers handed back and forth: no faster (1.50 s either way),
 *   10% more CPU. The event loop was left a quarter idle, but the copies (~90 ms) and transfers
 *   (~0.5 ms a postMessage) took back what the thread took off it.
 */
import { createWriteStream } from 'node:fs';
import { strataError } from '../errors.js';
import type { TappableChunks } from './tapped-chunks.js';
import { TarSplitRecorder, type TarSplitResult } from './tar-split.js';

/**
 * Start recording `input` into `sink` (a path: tar-split.json.gz). Call before reading begins;
 * the promise settles once the input has ended and the records are on disk, or with the first
 * failure, including the input being closed before its end.
 */
export function recordTarSplit(input: TappableChunks, sink: string): Promise<TarSplitResult> {
  const recorder = new TarSplitRecorder(createWriteStream(sink));
  input.tap((chunk) => recorder.record(chunk));
  input.once('end', () => recorder.end());
  input.once('close', () => {
    if (!input.readableEnded) recorder.destroy(input.errored ?? strataError('INTERNAL', 'the layer input was closed before its end'));
  });
  recorder.on('error', () => undefined); // nobody reads it: its failure comes from finished()
  return recorder.finished();
}

/**
 * Worker-thread side of OffThreadTarSplitRecorder: one TarSplitRecorder per recording id,
 * fed the chunks the main thread copies over, acknowledging each once it is parsed and hashed.
 */
import { parentPort } from 'node:worker_threads';
import { createWriteStream } from 'node:fs';
import { TarSplitRecorder } from './tar-split.js';
import type { ToWorker, FromWorker } from './tar-split-offthread.js';

const port = parentPort!;
const recordings = new Map<number, TarSplitRecorder>();

function send(message: FromWorker): void {
  port.postMessage(message);
}

function fail(id: number, err: unknown): void {
  if (!recordings.delete(id)) return;
  const e = err as { message?: string; code?: string };
  send({ type: 'error', id, message: e.message ?? String(err), code: e.code });
}

port.on('message', (m: ToWorker) => {
  switch (m.type) {
    case 'start': {
      const recorder = new TarSplitRecorder(createWriteStream(m.sinkPath), m.options);
      recorder.on('error', (err) => fail(m.id, err));
      recorder.resume(); // the bytes themselves go to the applier on the main thread
      recordings.set(m.id, recorder);
      return;
    }
    case 'chunk': {
      const recorder = recordings.get(m.id);
      if (!recorder) return;
      recorder.write(Buffer.from(m.data), (err) => {
        if (!err) send({ type: 'ack', id: m.id, bytes: m.data.byteLength });
      });
      return;
    }
    case 'end': {
      const recorder = recordings.get(m.id);
      if (!recorder) return;
      recorder.end();
      recorder.finished().then(
        (result) => {
          recordings.delete(m.id);
          send({ type: 'done', id: m.id, diffId: result.diffId, size: result.size });
        },
        (err: unknown) => fail(m.id, err),
      );
      return;
    }
    case 'abort': {
      const recorder = recordings.get(m.id);
      recordings.delete(m.id);
      recorder?.destroy();
      return;
    }
  }
});

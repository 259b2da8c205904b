/**
 * Worker side of SmallFileWriter (file-writer.ts): creates each file of a batch with the calls
 * the applier would make (open O_EXCL|O_NOFOLLOW, write, chown, chmod, utimes, close), in order,
 * and answers once per batch. The first failure ends the batch and is reported with its index.
 */
import { parentPort } from 'node:worker_threads';
import { closeSync, constants, fchmodSync, fchownSync, futimesSync, openSync, writeSync } from 'node:fs';
import { FILE_FIELDS, FileField, type BatchReply, type FileBatch } from './file-batch.js';

const O_CREATE_FILE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
const port = parentPort!;

function write(batch: FileBatch): BatchReply {
  const data = Buffer.from(batch.data);
  const paths = batch.paths.split('\0');
  const n = batch.fields;
  for (let i = 0; i < paths.length; i++) {
    const at = i * FILE_FIELDS;
    try {
      const fd = openSync(paths[i]!, O_CREATE_FILE, 0o600);
      try {
        const end = n[at + FileField.Offset]! + n[at + FileField.Length]!;
        for (let off = n[at + FileField.Offset]!; off < end;) off += writeSync(fd, data, off, end - off);
        if (batch.chown) fchownSync(fd, n[at + FileField.Uid]!, n[at + FileField.Gid]!);
        fchmodSync(fd, n[at + FileField.Mode]!);
        futimesSync(fd, n[at + FileField.Atime]!, n[at + FileField.Mtime]!);
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      return { id: batch.id, data: batch.data, failed: { index: i, message: e.message, code: e.code, errno: e.errno, syscall: e.syscall } };
    }
  }
  return { id: batch.id, data: batch.data };
}

port.on('message', (batch: FileBatch) => {
  const reply = write(batch);
  port.postMessage(reply, [reply.data]);
});

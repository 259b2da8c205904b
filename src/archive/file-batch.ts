/**
 * The messages between SmallFileWriter (file-writer.ts) and its thread (file-writer-worker.ts),
 * in a module of their own so that the thread loads nothing else.
 */

/**
 * A batch as posted: the files' numbers in one typed array and their paths in one string, which
 * the worker's message copies in one piece each (an array of objects, one per file, cost the
 * applier's thread ~0.3 ms a batch to serialize: ~60 ms of a 10,000-file import).
 */
export interface FileBatch {
  id: number;
  chown: boolean;
  /** The files' bytes (a reused buffer: only the files' ranges matter); handed back in the reply. */
  data: ArrayBuffer;
  /** The files' absolute paths, joined by NUL (which no path holds). */
  paths: string;
  /** FILE_FIELDS numbers a file: where its bytes are in `data`, then its metadata (FileField). */
  fields: Float64Array;
}

/** A file's numbers in FileBatch.fields, in this order. */
export const FileField = { Offset: 0, Length: 1, Mode: 2, Uid: 3, Gid: 4, Atime: 5, Mtime: 6 } as const;
export const FILE_FIELDS = 7;

export interface BatchReply {
  id: number;
  data: ArrayBuffer;
  failed?: { index: number; message: string; code?: string | undefined; errno?: number | undefined; syscall?: string | undefined };
}

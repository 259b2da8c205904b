import type { Command } from 'commander';
import { createReadStream, createWriteStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { refuseIfServiceHolds, rootOf } from './dmsetup.js';
import { openNamedThin } from '../../thin/dmsetup.js';
import { MapperRegistry } from '../../thin/mapper.js';
import type { Extent } from '../../thin/thin-device.js';
import { FileBlockDevice } from '../../thin/block-device.js';
import { ThinMetadata } from '../../thin/metadata.js';
import { dumpXml } from '../../thin/xml.js';
import { restoreXml } from '../../thin/restore.js';
import { checkMetadata } from '../../thin/check.js';
import { NbdClient } from '../../nbd/client.js';
import { service } from '../../nbd/service-client.js';
import { routed } from '../../nbd/dmsetup-routing.js';
import type { ActiveDevice } from '../../nbd/service-protocol.js';
import { lockFile, type FileLock } from '../../util/file-lock.js';
import { parseSize } from '../../util/units.js';
import { writeChunk } from '../context.js';
import { isStrataError, strataError } from '../../errors.js';

const CHUNK = 1 << 20;
const WINDOW = 1 << 30;

async function* chunksOf(path: string): AsyncGenerator<Buffer> {
  const stream = path === '-' ? process.stdin : createReadStream(path, { highWaterMark: CHUNK });
  let pending: Buffer[] = [];
  let size = 0;
  for await (const c of stream as AsyncIterable<Buffer>) {
    pending.push(c);
    size += c.length;
    if (size >= CHUNK) {
      yield Buffer.concat(pending);
      pending = [];
      size = 0;
    }
  }
  if (size > 0) yield Buffer.concat(pending);
}

/** What `thin read|write` need of a device, opened here or reached through the service. */
interface DeviceIo {
  size: number;
  read(buf: Buffer, offset: number): Promise<void>;
  write(buf: Buffer, offset: number): Promise<void>;
  flush(): Promise<void>;
  /** Mapped and unmapped runs covering [offset, offset+length), in order. */
  mapped(offset: number, length: number): Promise<Extent[]>;
  close(): Promise<void>;
}

/**
 * A named thin device for I/O. While the service runs it holds the pool (and its flock), so the
 * device is reached over its NBD socket (activated first if it is not served yet); otherwise the
 * pool is opened here. Suspended devices and pools refuse I/O either way.
 */
async function openDevice(root: string, name: string): Promise<DeviceIo> {
  const active = await routed<ActiveDevice | null>(root, () => service.activate(root, name), async () => null);
  if (active === null) {
    const { pool, dev } = await openNamedThin(new MapperRegistry(root), name);
    return {
      size: dev.size,
      read: (buf, offset) => dev.read(buf, offset),
      write: (buf, offset) => dev.write(buf, offset),
      flush: () => dev.flush(),
      mapped: (offset, length) => dev.mapped(offset, length),
      close: () => pool.close(),
    };
  }
  // the service lets I/O to a suspended device wait for resume; the CLI refuses it, as without the service
  for (const e of [await new MapperRegistry(root).get(active.pool), { name, suspended: active.suspended }]) {
    if (e.suspended) throw strataError('DEVICE_SUSPENDED', `${e.name} is suspended`, { id: e.name });
  }
  const c = await NbdClient.connect(active.socket, name);
  return {
    size: c.size,
    read: (buf, offset) => c.read(buf, offset),
    write: (buf, offset) => c.write(buf, offset),
    flush: () => c.flush(),
    async mapped(offset, length) {
      const out: Extent[] = [];
      const end = offset + length;
      // block status may answer for less than was asked: ask again from where it stopped
      for (let pos = offset; pos < end;) {
        const from = pos;
        for (const e of await c.blockStatus(pos, end - pos)) {
          const len = Math.min(e.length, end - e.offset);
          out.push({ offset: e.offset, length: len, mapped: !e.hole });
          pos = e.offset + len;
        }
        if (pos <= from) throw strataError('PROTOCOL_ERROR', `block status of ${name} at ${from} made no progress`);
      }
      return out;
    },
    close: () => c.close(),
  };
}

/** Lock a pool's metadata file; refused at once when the service holds the pool (its metadata is live). */
async function lockMetadata(root: string, path: string, shared: boolean): Promise<FileLock> {
  try {
    return await lockFile(path, { shared, timeoutMs: 0 });
  } catch (err) {
    if (!isStrataError(err, 'LOCK_TIMEOUT')) throw err;
  }
  await refuseIfServiceHolds(root, path);
  return lockFile(path, { shared });
}

/** Open metadata for reading with a shared lock (no writer can be mid-commit under us). */
async function withMetadata<T>(root: string, path: string, fn: (md: ThinMetadata) => Promise<T>): Promise<T> {
  const dev = await FileBlockDevice.open(path, { readOnly: true });
  const lock = await lockMetadata(root, path, true).catch(async (err) => {
    await dev.close();
    throw err;
  });
  try {
    return await fn(await ThinMetadata.open(dev, { readOnly: true }));
  } finally {
    await dev.close();
    await lock.release();
  }
}

export function registerThinCommands(program: Command): void {
  const thin = program.command('thin').description('move bytes in and out of thin devices; dump, check and restore pool metadata');

  thin.command('write')
    .description('write FILE (or - for stdin) into a thin device, then flush')
    .argument('<name>', 'thin device name (strata dmsetup ls)')
    .argument('<file>')
    .option('--offset <bytes>', 'byte offset in the device (64k, 1G, ...)', '0')
    .action(async (name: string, file: string, opts: { offset: string }, cmd: Command) => {
      const dev = await openDevice(rootOf(cmd), name);
      try {
        let pos = parseSize(opts.offset);
        for await (const chunk of chunksOf(file)) {
          await dev.write(chunk, pos);
          pos += chunk.length;
        }
        await dev.flush();
      } finally {
        await dev.close();
      }
    });

  thin.command('read')
    .description('read from a thin device into FILE (unmapped ranges stay holes) or - for stdout')
    .argument('<name>')
    .requiredOption('-o, --output <file>', 'output file, - for stdout')
    .option('--offset <bytes>', 'byte offset in the device', '0')
    .option('--length <bytes>', 'bytes to read (default: to the end of the device)')
    .action(async (name: string, opts: { output: string; offset: string; length?: string }, cmd: Command) => {
      const dev = await openDevice(rootOf(cmd), name);
      try {
        const offset = parseSize(opts.offset);
        if (offset > dev.size) throw strataError('OUT_OF_RANGE', `offset ${offset} is past the ${dev.size}-byte device`);
        const length = opts.length === undefined ? dev.size - offset : parseSize(opts.length);
        if (opts.output === '-') {
          const sink = process.stdout;
          for (let pos = 0; pos < length; pos += CHUNK) {
            const buf = Buffer.alloc(Math.min(CHUNK, length - pos));
            await dev.read(buf, offset + pos);
            await writeChunk(sink, buf);
          }
          return;
        }
        const outFile = await open(opts.output, 'w');
        try {
          await outFile.truncate(length);
          // only mapped ranges are read; windows keep the extent lists short on huge devices
          for (let win = offset; win < offset + length; win += WINDOW) {
            for (const ext of await dev.mapped(win, Math.min(WINDOW, offset + length - win))) {
              if (!ext.mapped) continue;
              for (let pos = ext.offset; pos < ext.offset + ext.length; pos += CHUNK) {
                const buf = Buffer.alloc(Math.min(CHUNK, ext.offset + ext.length - pos));
                await dev.read(buf, pos);
                await outFile.write(buf, 0, buf.length, pos - offset);
              }
            }
          }
        } finally {
          await outFile.close();
        }
      } finally {
        await dev.close();
      }
    });

  thin.command('dump')
    .description('print pool metadata as thin_dump XML')
    .argument('<metafile>')
    .option('-o, --output <file>', 'write to a file instead of stdout')
    .action(async (metafile: string, opts: { output?: string }, cmd: Command) => {
      const sink = opts.output ? createWriteStream(opts.output) : process.stdout;
      // a file's write error is thrown by writeChunk (as sink.errored), not left unhandled
      if (opts.output) sink.on('error', () => undefined);
      await withMetadata(rootOf(cmd), metafile, (md) => dumpXml(md, (s) => writeChunk(sink, s)));
      if (opts.output) await new Promise<void>((r, j) => (sink as ReturnType<typeof createWriteStream>).end((e?: Error | null) => (e ? j(e) : r())));
    });

  thin.command('check')
    .description('check pool metadata: every tree, every reference count (like thin_check)')
    .argument('<metafile>')
    .option('-q, --quiet', 'print nothing; the exit status tells')
    .option('--clear-needs-check-flag', 'if the metadata is clean, clear its needs_check flag')
    .action(async (metafile: string, opts: { quiet?: boolean; clearNeedsCheckFlag?: boolean }, cmd: Command) => {
      const report = await withMetadata(rootOf(cmd), metafile, async (md) => ({ ...(await checkMetadata(md)), transactionId: md.transactionId }));
      if (!opts.quiet) {
        process.stdout.write(`TRANSACTION_ID=${report.transactionId}\nDEVICES=${report.devices}\nMAPPINGS=${report.mappings}\n` +
          `METADATA_BLOCKS_USED=${report.metadataBlocksUsed}\nDATA_BLOCKS_USED=${report.dataBlocksUsed}\n`);
        for (const i of report.issues) process.stdout.write(`${i.fatal ? 'error' : 'warning'}: ${i.kind}: ${i.message}\n`);
      }
      if (!report.ok) throw strataError('METADATA_CORRUPT', `${metafile}: ${report.issues.filter((i) => i.fatal).length} metadata error(s)`, { path: metafile });
      if (opts.clearNeedsCheckFlag) {
        const dev = await FileBlockDevice.open(metafile);
        const lock = await lockMetadata(rootOf(cmd), metafile, false);
        try {
          const md = await ThinMetadata.open(dev, {});
          if (md.needsCheck) await md.clearNeedsCheck();
        } finally {
          await dev.close();
          await lock.release();
        }
      }
    });

  thin.command('restore')
    .description('write fresh pool metadata from thin_dump XML (the output file must exist and be large enough)')
    .requiredOption('-i, --input <xml>', 'XML file, - for stdin')
    .requiredOption('-o, --output <metafile>', 'metadata file to overwrite')
    .action(async (opts: { input: string; output: string }, cmd: Command) => {
      const dev = await FileBlockDevice.open(opts.output);
      const lock = await lockMetadata(rootOf(cmd), opts.output, false).catch(async (err) => {
        await dev.close();
        throw err;
      });
      try {
        await restoreXml(dev, chunksOf(opts.input));
      } finally {
        await dev.close();
        await lock.release();
      }
    });
}

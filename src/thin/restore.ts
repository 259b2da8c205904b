import { BLOCK_SIZE } from './format/constants.js';
import type { BlockDevice } from './block-device.js';
import { ThinMetadata } from './metadata.js';
import { parseXml } from './xml.js';
import { strataError } from '../errors.js';

/**
 * thin_restore: build fresh metadata on `dev` from thin_dump XML. Block 0 is zeroed first, so
 * whatever the device held is replaced. Commits every `commitEvery` dirty blocks to bound memory.
 */
export async function restoreXml(
  dev: BlockDevice, chunks: AsyncIterable<string | Buffer>, opts: { commitEvery?: number } = {},
): Promise<{ devices: number; mappings: number }> {
  let md: ThinMetadata | null = null;
  let devices = 0;
  let mappings = 0;
  const commitEvery = opts.commitEvery ?? 8192;
  await parseXml(chunks, {
    async superblock(sb) {
      if (md) throw strataError('INVALID_ARGUMENT', 'more than one <superblock>');
      await dev.write(Buffer.alloc(BLOCK_SIZE), 0);
      md = await ThinMetadata.open(dev, { dataBlockSize: sb.dataBlockSize, nrDataBlocks: sb.nrDataBlocks });
      md.restoreSuperblock({ time: sb.time, transId: sb.transaction, flags: sb.flags });
    },
    async device(id, d) {
      await md!.restoreDevice(id, d);
      devices++;
    },
    async mapping(id, v, d, len, time) {
      for (let i = 0; i < len; i++) {
        await md!.restoreMapping(id, v + i, d + i, time);
        if (md!.tm.dirtyCount >= commitEvery) await md!.commit();
      }
      mappings += len;
    },
  });
  const done = md as ThinMetadata | null;
  if (!done) throw strataError('INVALID_ARGUMENT', 'no <superblock> in the XML');
  await done.commit();
  await dev.flush();
  return { devices, mappings };
}

/**
 * Which NBD error an export failure becomes (proto.md "Error values": EDQUOT/EFBIG are reported
 * as ENOSPC; ENOTSUP is reserved for FAST_ZERO; anything we cannot name is EIO).
 */
import { isStrataError, isErrno } from '../errors.js';
import { NBD_ERR, type NbdErrno } from './protocol.js';

export function nbdErrnoFor(err: unknown, fastZero = false): NbdErrno {
  if (isStrataError(err)) {
    switch (err.code) {
      case 'POOL_NO_SPACE':
      case 'METADATA_NO_SPACE':
        return NBD_ERR.ENOSPC;
      case 'POOL_READ_ONLY':
        return NBD_ERR.EPERM;
      case 'OUT_OF_RANGE':
      case 'INVALID_ARGUMENT':
        return NBD_ERR.EINVAL;
      case 'NOT_IMPLEMENTED':
        return fastZero ? NBD_ERR.ENOTSUP : NBD_ERR.EINVAL;
      default:
        return NBD_ERR.EIO;
    }
  }
  if (isErrno(err, 'ENOSPC', 'EDQUOT', 'EFBIG')) return NBD_ERR.ENOSPC;
  if (isErrno(err, 'EROFS', 'EPERM', 'EACCES')) return NBD_ERR.EPERM;
  if (isErrno(err, 'EINVAL')) return NBD_ERR.EINVAL;
  return NBD_ERR.EIO;
}

import { runDriverSuite } from '../conformance/driver-suite.js';
import { createAufsDriver, probeAufs } from '../../src/drivers/aufs/aufs-driver.js';

runDriverSuite('aufs', (root) => createAufsDriver({ root, options: {} }), {
  unavailable: async () => (process.getuid?.() === 0 ? probeAufs('') : 'mounts need root'),
});

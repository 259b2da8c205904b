import { runDriverSuite } from '../conformance/driver-suite.js';
import { createVfsDriver } from '../../src/drivers/vfs/vfs-driver.js';

runDriverSuite('vfs', (root) => createVfsDriver({ root, options: {} }));

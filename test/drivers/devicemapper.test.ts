import { runDriverSuite } from '../conformance/driver-suite.js';
import { createDevicemapperDriver, probeDevicemapper } from '../../src/drivers/devicemapper/devicemapper-driver.js';

// small sizes keep the suite quick; the defaults (100G/2G/10G) are tested in devicemapper-pool.test.ts
const options = { 'dm.basesize': '64M', 'dm.loopdatasize': '2G', 'dm.loopmetadatasize': '64M' };

runDriverSuite('devicemapper', (root) => createDevicemapperDriver({ root, options }), { unavailable: probeDevicemapper, depth: 16 });

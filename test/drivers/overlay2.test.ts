import { runDriverSuite } from '../conformance/driver-suite.js';
import { createOverlay2Driver } from '../../src/drivers/overlay2/overlay2-driver.js';
import { probeOverlay2 } from '../../src/drivers/overlay2/overlay-support.js';
import { tmpdir } from 'node:os';

// 128 deep: the top layer mounts 127 lowers, past one page of absolute paths (relative fallback).
runDriverSuite('overlay2', (root) => createOverlay2Driver({ root, options: {} }), {
  unavailable: () => probeOverlay2(process.env.STRATA_TEST_TMP ?? tmpdir()),
  depth: 128,
});

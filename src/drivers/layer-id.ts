import { strataError } from '../errors.js';

// Driver ids are Docker cache ids (64 hex) or mount ids with an `-init` suffix; tests and tools
// also use short readable ids. Anything that could climb out of the driver home is refused.
const VALID_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export function isLayerId(id: string): boolean {
  return VALID_ID.test(id) && !id.includes('..');
}

export function checkLayerId(id: string): void {
  if (!isLayerId(id)) {
    throw strataError('INVALID_ID', `invalid layer id ${JSON.stringify(id)}`, { id });
  }
}

/**
 * One error class for the whole engine. Callers branch on `code` (stable, never the message);
 * `category` is a short fixed list that maps onto CLI exit statuses (and gRPC codes, should a
 * containerd snapshotter front-end ever be added).
 */

export type ErrorCategory =
  | 'NotFound'
  | 'AlreadyExists'
  | 'InvalidArgument'
  | 'FailedPrecondition'
  | 'NotSupported'
  | 'ResourceExhausted'
  | 'DataLoss'
  | 'Internal';

/** Every code the engine raises, with its category. Add a code here, nowhere else. */
export const ERROR_CODES = {
  // store / drivers
  LAYER_NOT_FOUND: 'NotFound',
  IMAGE_NOT_FOUND: 'NotFound',
  CONTAINER_NOT_FOUND: 'NotFound',
  REFERENCE_NOT_FOUND: 'NotFound',
  PATH_NOT_FOUND: 'NotFound',
  LAYER_EXISTS: 'AlreadyExists',
  CONTAINER_EXISTS: 'AlreadyExists',
  LAYER_IN_USE: 'FailedPrecondition',
  IMAGE_IN_USE: 'FailedPrecondition',
  LAYER_MOUNTED: 'FailedPrecondition',
  LAYER_NOT_MOUNTED: 'FailedPrecondition',
  DRIVER_NOT_SUPPORTED: 'NotSupported',
  DRIVER_MISMATCH: 'FailedPrecondition',
  INVALID_ID: 'InvalidArgument',
  INVALID_ARGUMENT: 'InvalidArgument',
  INVALID_OPTION: 'InvalidArgument',
  INVALID_REFERENCE: 'InvalidArgument',
  LOCK_TIMEOUT: 'ResourceExhausted',
  STORE_CORRUPT: 'DataLoss',
  DIGEST_MISMATCH: 'DataLoss',
  MOUNT_FAILED: 'Internal',
  // archives
  INVALID_ARCHIVE: 'InvalidArgument',
  TRUNCATED_ARCHIVE: 'InvalidArgument',
  UNSUPPORTED_ARCHIVE: 'NotSupported',
  PATH_ESCAPE: 'InvalidArgument',
  DUPLICATE_PATH: 'InvalidArgument',
  ARCHIVE_TOO_LARGE: 'ResourceExhausted',
  // thin pool
  POOL_NO_SPACE: 'ResourceExhausted',
  METADATA_NO_SPACE: 'ResourceExhausted',
  METADATA_CORRUPT: 'DataLoss',
  DEVICE_NOT_FOUND: 'NotFound',
  DEVICE_EXISTS: 'AlreadyExists',
  DEVICE_BUSY: 'FailedPrecondition',
  DEVICE_SUSPENDED: 'FailedPrecondition',
  POOL_READ_ONLY: 'FailedPrecondition',
  TRANSACTION_MISMATCH: 'FailedPrecondition',
  INVALID_TABLE: 'InvalidArgument',
  INVALID_MESSAGE: 'InvalidArgument',
  OUT_OF_RANGE: 'InvalidArgument',
  // nbd
  PROTOCOL_ERROR: 'InvalidArgument',
  // generic
  NOT_IMPLEMENTED: 'NotSupported',
  INTERNAL: 'Internal',
} as const satisfies Record<string, ErrorCategory>;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface ErrorContext {
  id?: string;
  path?: string;
  block?: number;
  [key: string]: unknown;
}

export class StrataError extends Error {
  override readonly name = 'StrataError';
  readonly code: ErrorCode;
  readonly category: ErrorCategory;
  readonly context: ErrorContext;

  constructor(code: ErrorCode, message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.category = ERROR_CODES[code];
    this.context = context;
  }
}

/** Build a StrataError: `fail('LAYER_NOT_FOUND', 'layer abc not found', { id })`. */
export function strataError(code: ErrorCode, message: string, context?: ErrorContext, cause?: unknown): StrataError {
  return new StrataError(code, message, context, cause === undefined ? undefined : { cause });
}

export function isStrataError(err: unknown, code?: ErrorCode): err is StrataError {
  return err instanceof StrataError && (code === undefined || err.code === code);
}

/** Node's errno-shaped errors (`ENOENT` and friends). */
export function isErrno(err: unknown, ...codes: string[]): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string' &&
    (codes.length === 0 || codes.includes((err as NodeJS.ErrnoException).code as string));
}

/** Exit status for a category, so scripts can tell "not found" from "in use" without parsing. */
export function exitStatusFor(category: ErrorCategory): number {
  switch (category) {
    case 'InvalidArgument': return 2;
    case 'NotFound': return 3;
    case 'AlreadyExists': return 4;
    case 'FailedPrecondition': return 5;
    case 'NotSupported': return 6;
    case 'ResourceExhausted': return 7;
    case 'DataLoss': return 8;
    case 'Internal': return 1;
  }
}

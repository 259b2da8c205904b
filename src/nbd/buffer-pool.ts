/**
 * Read buffers reused per connection. nbdcopy and qemu-img read in fixed sizes (256 KiB chunks
 * and the like); allocating each afresh made buffer allocation and GC the largest costs on the
 * read path. A buffer comes back only once the socket has written it out.
 */
export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;

  constructor(private readonly maxBytes = 16 * 1024 * 1024, private readonly maxBuffer = 4 * 1024 * 1024) {}

  get(size: number): Buffer {
    const list = this.free.get(size);
    const buf = list?.pop();
    if (buf) {
      this.pooledBytes -= size;
      return buf;
    }
    return Buffer.allocUnsafeSlow(size);
  }

  put(buf: Buffer): void {
    const size = buf.length;
    if (size === 0 || size > this.maxBuffer || this.pooledBytes + size > this.maxBytes) return;
    let list = this.free.get(size);
    if (!list) {
      list = [];
      this.free.set(size, list);
    }
    list.push(buf);
    this.pooledBytes += size;
  }
}

/**
 * POSIX `cksum` (CRC-32, polynomial 0x04C11DB7, MSB first, with the length appended, then complemented), to check a
 * payload that went through the sandbox without paying for a cryptographic hash inside it (sha256sum runs at ~340 MB/s
 * on this machine, which alone would cap a 300 MB/s throughput figure).
 */
const TABLE = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let crc = i << 24;
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x80000000 ? (crc << 1) ^ 0x04c11db7 : crc << 1;
    table[i] = crc >>> 0;
  }
  return table;
})();

export function posixCksum(data: Uint8Array): string {
  let crc = 0;
  for (let i = 0; i < data.length; i++) {
    crc = ((crc << 8) ^ (TABLE[((crc >>> 24) ^ (data[i] as number)) & 0xff] as number)) >>> 0;
  }
  for (let length = data.length; length > 0; length = Math.floor(length / 256)) {
    crc = ((crc << 8) ^ (TABLE[((crc >>> 24) ^ (length & 0xff)) & 0xff] as number)) >>> 0;
  }
  return `${(~crc >>> 0).toString()} ${data.length}`;
}

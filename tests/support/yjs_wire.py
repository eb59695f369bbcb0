"""Hand-built pieces of the Yjs update format, for updates a Yjs library would never write."""


def var(n: int) -> bytes:
    """An unsigned LEB128 integer, as Yjs encodes lengths, clients and clocks."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)

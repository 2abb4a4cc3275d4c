"""An independent Modbus TCP peer for RTDS's tests: pymodbus's server with
registers whose byte patterns are computed here with `struct`, not by RTDS.

Usage: pymodbus_peer.py PORT
Prints `request FC ADDRESS COUNT` on stdout for every request it serves, so a
test can count what RTDS sent. Addresses not listed below are invalid and
answer exception 2 (illegal data address).

Holding registers (0-based):
  0-1   f32 123.5 ABCD       2-3   f32 123.5 CDAB
  4-5   f32 123.5 BADC       6-7   f32 123.5 DCBA
  8-9   u32 0x12345678 ABCD  10-11 i32 -123456 CDAB
  12    i16 -2               13    u16 65535
  14-17 f64 -1.25 ABCD       18-21 f64 -1.25 DCBA
  22-25 i64 -1234567890123 ABCD
  26-29 u64 0x0102030405060708 CDAB (register order reversed)
  30-33 string "PYMODBUS"    34    0x8009 (bits 0, 3, 15)
  40-59 memory (writes)      60-99 invalid          100-109 memory
Input registers: 0-1 f32 -7.5 ABCD, 2 u16 42.
Coils: 0-15 1011 0010 1111 0000, 20-29 memory.
Discrete inputs: 0-7 0101 1100.
"""

import asyncio
import struct
import sys

from pymodbus.server import StartAsyncTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


def regs(fmt, value, order="ABCD"):
    """Registers for `value` packed big-endian as `fmt`, then reordered."""
    raw = struct.pack(">" + fmt, value)
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def holding():
    hr = {}

    def put(addr, values):
        for i, v in enumerate(values):
            hr[addr + i] = v

    put(0, regs("f", 123.5, "ABCD"))
    put(2, regs("f", 123.5, "CDAB"))
    put(4, regs("f", 123.5, "BADC"))
    put(6, regs("f", 123.5, "DCBA"))
    put(8, regs("I", 0x12345678))
    put(10, regs("i", -123456, "CDAB"))
    put(12, regs("h", -2))
    put(13, [65535])
    put(14, regs("d", -1.25))
    put(18, regs("d", -1.25, "DCBA"))
    put(22, regs("q", -1234567890123))
    put(26, regs("Q", 0x0102030405060708, "CDAB"))
    put(30, [int.from_bytes(b"PYMODBUS"[i : i + 2], "big") for i in range(0, 8, 2)])
    put(34, [0x8009])
    return [
        SimData(address=0, values=[hr[a] for a in range(35)], datatype=DataType.REGISTERS),
        SimData(address=40, count=20, values=0, datatype=DataType.REGISTERS),
        SimData(address=100, count=10, values=0, datatype=DataType.REGISTERS),
    ]


async def log_request(function_code, _start, address, count, _regs, _values):
    print(f"request {function_code} {address} {count}", flush=True)


async def main(port):
    bits = lambda s: [c == "1" for c in s]  # noqa: E731
    device = SimDevice(
        id=0,
        simdata=(
            [
                SimData(address=0, values=bits("1011001011110000"), datatype=DataType.BITS),
                SimData(address=20, values=[False] * 10, datatype=DataType.BITS),
            ],
            [SimData(address=0, values=bits("01011100"), datatype=DataType.BITS)],
            holding(),
            [SimData(address=0, values=regs("f", -7.5) + [42], datatype=DataType.REGISTERS)],
        ),
        action=log_request,
    )
    await StartAsyncTcpServer(context=device, address=("127.0.0.1", port))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))

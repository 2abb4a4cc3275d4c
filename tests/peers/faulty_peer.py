"""A Modbus TCP peer that misbehaves on purpose, for RTDS's deadline tests.

Usage: faulty_peer.py MODE
Listens on a free loopback port of its own choosing and prints
`listening PORT` first.
  dribble  answers read-holding-registers correctly, one byte every 0.6 s
  stray    answers every request with frames of other transaction ids, one
           every 0.2 s, never the right one
  http     answers like a web server
Registers read as their own address. Standard library only; frames are
built here with `struct` from the Modbus application protocol, not by RTDS.
"""

import socket
import socketserver
import struct
import sys
import time


def reply_frame(tid, unit, pdu):
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        try:
            while True:
                head = read_exact(sock, 7)
                tid, _pid, length, unit = struct.unpack(">HHHB", head)
                pdu = read_exact(sock, length - 1)
                fc = pdu[0]
                if MODE == "http":
                    sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    continue
                if fc == 3:
                    addr, count = struct.unpack(">HH", pdu[1:5])
                    body = b"".join(struct.pack(">H", a) for a in range(addr, addr + count))
                    answer = bytes([3, len(body)]) + body
                else:
                    answer = bytes([fc | 0x80, 1])
                if MODE == "dribble":
                    for b in reply_frame(tid, unit, answer):
                        sock.sendall(bytes([b]))
                        time.sleep(0.6)
                elif MODE == "stray":
                    for k in range(1, 1000):
                        sock.sendall(reply_frame((tid + k) & 0xFFFF, unit, answer))
                        time.sleep(0.2)
        except (ConnectionError, OSError):
            pass


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    MODE = sys.argv[1]
    with Server(("127.0.0.1", 0), Handler) as srv:
        print(f"listening {srv.server_address[1]}", flush=True)
        srv.serve_forever()

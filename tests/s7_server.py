"""An independent S7 PLC for tests/s7.rs: python-snap7's server on loopback.

Registers DB1 (V memory), DB10 (every type), DB20 (1,000 words), bit
memory, inputs and outputs with known contents (the same values
tests/s7.rs expects), prints {"port": N} and then answers commands on
stdin, one per line:

  counts   print {"reads": r, "writes": w, "clients": c} (server events)
  stop     stop the server (connections dropped, port closed)
  start    start it again on the same port
  quit     stop and exit
"""

import json
import struct
import sys
import threading

import snap7
from snap7.server import EVC_CLIENT_ADDED, EVC_DATA_READ, EVC_DATA_WRITE
from snap7.type import SrvArea


def s7_string(max_len, text):
    raw = text.encode("ascii")
    return bytes([max_len, len(raw)]) + raw + bytes(max_len - len(raw))


def areas():
    db10 = bytearray(64)
    db10[0] = 0b0000_0010  # DBX0.1 true, DBX0.0 false
    db10[1] = 0xAB  # DBB1 = 171
    db10[2:4] = struct.pack(">H", 0x1234)  # DBW2 word = 4660
    db10[4:6] = struct.pack(">h", -1234)  # DBW4 int
    db10[6:10] = struct.pack(">I", 0xDEADBEEF)  # DBD6 dword
    db10[10:14] = struct.pack(">i", -123456)  # DBD10 dint
    db10[14:18] = struct.pack(">f", 23.5)  # DBD14 real
    db10[18:26] = struct.pack(">d", -1250.0)  # DBB18 lreal
    db10[26:38] = s7_string(10, "hello")  # DBB26 string(10)
    db10[38:40] = struct.pack(">h", 250)  # DBW38 int, scaled 0.1 -> 25.0
    db1 = bytearray(256)
    db1[100] = 7  # VB100
    db1[102:104] = struct.pack(">H", 1000)  # VW102
    db1[104:108] = struct.pack(">f", 1.5)  # VD104
    db20 = bytearray(2000)
    for i in range(1000):
        db20[2 * i : 2 * i + 2] = struct.pack(">H", i)  # DBW(2i) = i
    mk = bytearray(64)
    mk[10] = 0x81  # M10.0 and M10.7 true
    mk[12:14] = struct.pack(">H", 500)  # MW12
    mk[16:20] = struct.pack(">i", 70000)  # MD16
    pe = bytearray(16)
    pe[0] = 0b0000_0101  # I0.0 true, I0.1 false, I0.2 true
    pe[2:4] = struct.pack(">H", 321)  # IW2
    pa = bytearray(16)
    pa[0] = 0x01  # Q0.0 true
    pa[2:4] = struct.pack(">H", 42)  # QW2
    return [
        (SrvArea.DB, 1, db1),
        (SrvArea.DB, 10, db10),
        (SrvArea.DB, 20, db20),
        (SrvArea.MK, 0, mk),
        (SrvArea.PE, 0, pe),
        (SrvArea.PA, 0, pa),
    ]


def main():
    counts = {"reads": 0, "writes": 0, "clients": 0}
    lock = threading.Lock()

    def on_event(event):
        key = {
            EVC_DATA_READ: "reads",
            EVC_DATA_WRITE: "writes",
            EVC_CLIENT_ADDED: "clients",
        }.get(event.EvtCode)
        if key:
            with lock:
                counts[key] += 1

    memory = areas()

    def new_server(port):
        server = snap7.server.Server(log=False)
        for area, index, data in memory:
            server.register_area(area, index, data)
        server.set_events_callback(on_event)
        server.start_to("127.0.0.1", port)
        return server

    server = new_server(0)
    port = server.server_socket.getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "counts":
            with lock:
                print(json.dumps(counts), flush=True)
        elif command == "stop":
            server.stop()
            print(json.dumps({"stopped": True}), flush=True)
        elif command == "start":
            server = new_server(port)
            print(json.dumps({"started": True}), flush=True)
        elif command == "quit":
            break
    server.stop()


if __name__ == "__main__":
    main()

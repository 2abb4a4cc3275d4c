"""An independent OPC UA server for RTDS's tests: Python asyncua.

Usage: opcua_server.py PORT [--max-nodes-per-read N] [--secure DIR] [--ramp]
                         [--ramp-from N]

Namespace 2 ("urn:rtds:test") holds, under the object Line1:
  ns=2;s=Line1.Temp      Double   21.5
  ns=2;i=1001            Int32    -42
  ns=2;s=Line1.Big       UInt64   18446744073709551615
  ns=2;s=Line1.Run       Boolean  true
  ns=2;s=Line1.Batch     String   "B-17"
  ns=2;s=Line1.Profile   Double[] [1.5, 2.5, 3.5]
  ns=2;s=Line1.Setpoint  Int32    0, writable; every change is printed as
                                  `setpoint N` on stdout
  ns=2;s=Line1.Wide      Int64    0, writable; changes print `wide N`
  ns=2;s=Line1.Stamp     DateTime 2026-01-02T03:04:05Z, writable; changes print
                                  `stamp ISO-TIME` (UTC, no zone)
  ns=2;s=Line1.Levels    Int16[]  [0, 0], writable; changes print `levels [A, B]`
  ns=2;s=Line1.Ramp      Int32    with --ramp: 1, 2, 3 … one step every 50 ms,
                                  each step printed as `ramp N`
  ns=2;s=Line1.Steps     Int32    with --ramp: 0, 1, 2, 10, 11, 30, 0 … one
                                  step every 50 ms (a deadband of 5 passes
                                  only 0, 10 and 30)
  ns=2;s=Line1.Bytes     ByteString 00 01 fe ff
  ns=2;s=Line1.Label     LocalizedText ("en-US", "Running, \"fast\"")
  ns=2;s=Line1.Names     String[] ["a,b", "c", "", "q\"u\\o"]
  ns=2;s=Line1.Empty     String[] []
  ns=2;s=Line1.OneEmpty  String[] [""]
  ns=2;s=Line1.Huge      Double[] [1e300, -0.0, 0.1, 5e-324]
  ns=2;s=Line1.Nan       Double   NaN
  ns=2;s=Line1.Id        Guid     (a type RTDS cannot read)
  ns=2;s=Line1.Flag      Boolean  true, writable; changes print `flag V`
  ns=2;s=Line1.Big64     UInt64   0, writable; changes print `big64 V`
  ns=2;g=72962b91-fa75-4ae6-8d28-b404dc7daf63   Double  7.25  (a GUID node id)
  ns=2;b=cnRkcw==        Int32    99 (an opaque node id, bytes "rtds")

--max-nodes-per-read N  announces N as MaxNodesPerRead, refuses larger Read
                        calls with BadTooManyOperations and prints
                        `read K nodes` for every client's Read of the tags'
                        namespace.
--ramp-from N           the ramp's first value is N + 1 (distinct runs)
SIGUSR1                 pauses the ramp and prints `paused at N` (the last
                        value written); a second SIGUSR1 resumes it
--secure DIR            only Basic256Sha256 SignAndEncrypt, with a
                        self-signed certificate made in DIR (server.der,
                        also printed as `thumbprint HEX`), and only the user
                        `operator` with password `s3cret` may log in.
Prints `listening` once it serves.
"""

import argparse
import asyncio
import hashlib
import signal
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_session import InternalSession
from asyncua.server.user_managers import UserManager


class Operators(UserManager):
    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username == "operator" and password == "s3cret":
            return User(role=UserRole.Admin, name="operator")
        print(f"login refused for {username!r}", flush=True)
        return None


def limit_reads(limit):
    original = InternalSession.read

    async def read(self, params):
        ours = [n for n in params.NodesToRead if n.NodeId.NamespaceIndex == 2]
        if ours and self.external:
            print(f"read {len(params.NodesToRead)} nodes", flush=True)
        if len(params.NodesToRead) > limit:
            raise ua.UaStatusCodeError(ua.StatusCodes.BadTooManyOperations)
        return await original(self, params)

    InternalSession.read = read


async def main(args):
    secure = args.secure is not None
    server = Server(user_manager=Operators() if secure else None)
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{args.port}/rtds/")
    if secure:
        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from cryptography.x509.oid import ExtendedKeyUsageOID

        d = Path(args.secure)
        d.mkdir(parents=True, exist_ok=True)
        uri = "urn:rtds:test:server"
        await setup_self_signed_certificate(
            d / "server-key.pem",
            d / "server.der",
            uri,
            socket.gethostname(),
            [ExtendedKeyUsageOID.SERVER_AUTH],
            {"countryName": "DE", "organizationName": "RTDS tests", "commonName": "asyncua"},
        )
        await server.set_application_uri(uri)
        await server.load_certificate(str(d / "server.der"))
        await server.load_private_key(str(d / "server-key.pem"))
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        server.set_security_IDs(["Username"])
        der = (d / "server.der").read_bytes()
        print(f"thumbprint {hashlib.sha1(der).hexdigest().upper()}", flush=True)
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    if args.max_nodes_per_read:
        limit_reads(args.max_nodes_per_read)
        node = server.get_node(
            ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)
        )
        await node.write_value(ua.Variant(args.max_nodes_per_read, ua.VariantType.UInt32))
    idx = await server.register_namespace("urn:rtds:test")
    line = await server.nodes.objects.add_object(ua.NodeId("Line1", idx), "Line1")

    async def var(nid, name, value, vtype):
        return await line.add_variable(ua.NodeId(nid, idx), name, ua.Variant(value, vtype))

    await var("Line1.Temp", "Temp", 21.5, ua.VariantType.Double)
    await var(1001, "Count", -42, ua.VariantType.Int32)
    await var("Line1.Big", "Big", 18446744073709551615, ua.VariantType.UInt64)
    await var("Line1.Run", "Run", True, ua.VariantType.Boolean)
    await var("Line1.Batch", "Batch", "B-17", ua.VariantType.String)
    await var("Line1.Profile", "Profile", [1.5, 2.5, 3.5], ua.VariantType.Double)
    sp = await var("Line1.Setpoint", "Setpoint", 0, ua.VariantType.Int32)
    await sp.set_writable()
    wide = await var("Line1.Wide", "Wide", 0, ua.VariantType.Int64)
    await wide.set_writable()
    ramp = await var("Line1.Ramp", "Ramp", 0, ua.VariantType.Int32)
    steps = await var("Line1.Steps", "Steps", 0, ua.VariantType.Int32)
    await line.add_variable(
        ua.NodeId(uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63"), idx, ua.NodeIdType.Guid),
        "ByGuid",
        ua.Variant(7.25, ua.VariantType.Double),
    )
    await line.add_variable(
        ua.NodeId(b"rtds", idx, ua.NodeIdType.ByteString), "Opaque", ua.Variant(99, ua.VariantType.Int32)
    )
    stamp = await var(
        "Line1.Stamp", "Stamp", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), ua.VariantType.DateTime
    )
    await stamp.set_writable()
    levels = await var("Line1.Levels", "Levels", [0, 0], ua.VariantType.Int16)
    await levels.set_writable()
    await var("Line1.Bytes", "Bytes", b"\x00\x01\xfe\xff", ua.VariantType.ByteString)
    await var("Line1.Label", "Label", ua.LocalizedText('Running, "fast"', "en-US"), ua.VariantType.LocalizedText)
    await var("Line1.Names", "Names", ["a,b", "c", "", 'q"u\\o'], ua.VariantType.String)
    await line.add_variable(
        ua.NodeId("Line1.Empty", idx),
        "Empty",
        ua.Variant([], ua.VariantType.String, is_array=True),
    )
    await var("Line1.OneEmpty", "OneEmpty", [""], ua.VariantType.String)
    await var("Line1.Huge", "Huge", [1e300, -0.0, 0.1, 5e-324], ua.VariantType.Double)
    await var("Line1.Nan", "Nan", float("nan"), ua.VariantType.Double)
    await var("Line1.Id", "Id", uuid.UUID("0e4aa9c0-0000-4000-8000-000000000001"), ua.VariantType.Guid)
    flag = await var("Line1.Flag", "Flag", True, ua.VariantType.Boolean)
    await flag.set_writable()
    big64 = await var("Line1.Big64", "Big64", 0, ua.VariantType.UInt64)
    await big64.set_writable()
    paused = {"on": False}

    def toggle(*_):
        paused["on"] = not paused["on"]

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, toggle)
    async with server:
        print("listening", flush=True)
        last = {"setpoint": 0, "wide": 0, "stamp": None, "levels": [0, 0], "flag": True, "big64": 0}
        step = args.ramp_from
        reported = None
        while True:
            watched = (("setpoint", sp), ("wide", wide), ("stamp", stamp), ("levels", levels),
                       ("flag", flag), ("big64", big64))
            for name, node in watched:
                value = await node.read_value()
                if name == "stamp":
                    value = value.astimezone(timezone.utc).replace(tzinfo=None).isoformat()
                    if last[name] is None:
                        last[name] = value
                if value != last[name]:
                    print(f"{name} {value}", flush=True)
                    last[name] = value
            if args.ramp and paused["on"]:
                if reported != step:
                    print(f"paused at {step}", flush=True)
                    reported = step
            elif args.ramp:
                reported = None
                step += 1
                await ramp.write_value(ua.Variant(step, ua.VariantType.Int32))
                await steps.write_value(ua.Variant([0, 1, 2, 10, 11, 30][step % 6], ua.VariantType.Int32))
                print(f"ramp {step}", flush=True)
            await asyncio.sleep(0.05)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--max-nodes-per-read", type=int, default=0)
    p.add_argument("--secure")
    p.add_argument("--ramp", action="store_true")
    p.add_argument("--ramp-from", type=int, default=0)
    asyncio.run(main(p.parse_args()))

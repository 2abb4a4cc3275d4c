"""An independent OPC UA server for RTDS's tests: Python asyncua.

Usage: opcua_server.py PORT
Namespace 2 ("urn:rtds:test") holds, under the object Line1:
  ns=2;s=Line1.Temp      Double   21.5
  ns=2;i=1001            Int32    -42
  ns=2;s=Line1.Big       UInt64   18446744073709551615
  ns=2;s=Line1.Run       Boolean  true
  ns=2;s=Line1.Batch     String   "B-17"
  ns=2;s=Line1.Profile   Double[] [1.5, 2.5, 3.5]
  ns=2;s=Line1.Setpoint  Int32    0, writable; every change is printed as
                                  `setpoint N` on stdout
Prints `listening` once it serves.
"""

import asyncio
import sys

from asyncua import Server, ua


async def main(port):
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/rtds/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
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
    async with server:
        print("listening", flush=True)
        last = 0
        while True:
            value = await sp.read_value()
            if value != last:
                print(f"setpoint {value}", flush=True)
                last = value
            await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))

"""An independent OPC UA subscriber for RTDS's tests: Python asyncua.

Usage: opcua_subscriber.py ENDPOINT NODE [--publish-ms N] [--sampling-ms N]

Subscribes to NODE with the given publishing and sampling intervals and
prints `value V` on stdout for every data change it receives, then `lost`
and exits when the connection breaks. Prints `subscribed` once the
subscription exists. The reference a test compares RTDS's archive with:
what an OPC UA client with the same settings received from the server.
"""

import argparse
import asyncio
import sys

from asyncua import Client


class Handler:
    def datachange_notification(self, node, val, data):
        print(f"value {val}", flush=True)


async def main(a):
    client = Client(a.endpoint, timeout=2)
    await client.connect()
    sub = await client.create_subscription(a.publish_ms, Handler())
    node = client.get_node(a.node)
    await sub.subscribe_data_change(node, queuesize=100, sampling_interval=a.sampling_ms)
    print("subscribed", flush=True)
    try:
        while True:
            await asyncio.sleep(0.2)
            await client.check_connection()
    except Exception:
        print("lost", flush=True)
        sys.exit(0)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("endpoint")
    p.add_argument("node")
    p.add_argument("--publish-ms", type=int, default=200)
    p.add_argument("--sampling-ms", type=int, default=50)
    asyncio.run(main(p.parse_args()))

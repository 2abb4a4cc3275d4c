"""A plain MQTT subscriber for RTDS's tests (paho-mqtt, independent of RTDS):
subscribes to a topic filter and writes every message it receives as one
JSON line, flushed: {"topic", "payload" (the text, or null when not UTF-8),
"hex", "qos", "retain", "rx" (ms since the epoch)}.

Usage: mqtt_dump.py --port N --topic FILTER --out FILE
           [--host 127.0.0.1] [--cafile CA.pem] [--username U --password P]

Prints `mqtt_dump: subscribed` once the SUBACK came; `mqtt_dump: error ...`
and exit 2 when the broker refuses. Runs until SIGTERM.
"""

import argparse
import json
import os
import sys
import time

import paho.mqtt.client as mqtt


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cafile")
    p.add_argument("--username")
    p.add_argument("--password")
    a = p.parse_args()
    out = open(a.out, "w", encoding="utf-8")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if a.username is not None:
        c.username_pw_set(a.username, a.password)
    if a.cafile:
        c.tls_set(ca_certs=a.cafile)

    def on_connect(client, userdata, flags, reason, properties):
        if reason.is_failure:
            print(f"mqtt_dump: error connection refused: {reason}", flush=True)
            os._exit(2)
        client.subscribe(a.topic, qos=1)

    def on_subscribe(client, userdata, mid, reasons, properties):
        print("mqtt_dump: subscribed", flush=True)

    def on_message(client, userdata, msg):
        try:
            text = msg.payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        rec = {"topic": msg.topic, "payload": text, "hex": msg.payload.hex(), "qos": msg.qos,
               "retain": bool(msg.retain), "rx": int(time.time() * 1000)}
        out.write(json.dumps(rec) + "\n")
        out.flush()

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect(a.host, a.port, keepalive=10)
    c.loop_forever()


if __name__ == "__main__":
    sys.exit(main())

"""An independent Sparkplug B 3.0 host application for RTDS's tests: paho-mqtt
for MQTT, Google's protobuf runtime for the payloads, with the schema written
out below from the Sparkplug 3.0.0 specification (6.4.1), not from RTDS.

Usage: sparkplug_host.py --host 127.0.0.1 --port N [--username U --password P]
           [--cafile CA.pem] --group G [--host-id H] [--client-id C] --out FILE.jsonl

It connects with MQTT 5 (clean start, session expiry 0: 5.3), subscribes to
spBv1.0/G/# at QoS 1 with "retain as published" (the publisher's retain flag
is seen) and "no local" (its own commands do not come back), then prints
`sparkplug_host: subscribed` (with --host-id: once its STATE online is also
acknowledged). A refused connection prints `sparkplug_host: error ...` and
exits 2. Every message received becomes one JSON line in FILE, flushed:
  {"kind":"message","topic","namespace","group","type","node","device","qos",
   "retain","timestamp","seq","metrics":[{"name","alias","datatype","field",
   "value","is_historical","is_transient","is_null","timestamp",
   "resolved_name","resolved_datatype"[,"properties","metadata"]}],"hex","rx"}
Absent fields are null. "datatype" is the enum name (6.4.16) as sent,
"resolved_*" add what an alias-only or datatype-less metric had in its birth,
"field" is the protobuf value field used, "hex" the raw payload. Values:
integers (Int64, UInt64 up to 18446744073709551615, DateTime ms) are exact
JSON integers; floats Python repr, which round-trips (a Float is its float32
widened exactly; NaN and infinities as "NaN", "Infinity", "-Infinity");
String/Text/UUID strings; Bytes/File hex; the 3.0 arrays (6.4.17: packed
little-endian; BooleanArray a u32 count then MSB-first bits; StringArray
NUL-terminated) lists; DataSet, Template and PropertySet objects.

With --host-id H it is a 3.0 primary host (4.2.3, 5.3, 5.13, 6.4.27): its
Will is spBv1.0/STATE/H {"online": false, "timestamp": T}, QoS 1, retained,
T the connect time; once subscribed it publishes {"online": true,
"timestamp": T} the same way, and again whenever it sees itself declared
offline (5.3).

Commands on stdin, one JSON object a line; each is answered on stdout by
`sparkplug_host: ok CMD` or `sparkplug_host: error ...`, and in FILE by a
{"kind":"sent",...} or {"kind":"error",...} line. EOF acts as quit.
  {"cmd":"rebirth","node":"edge1"}   NCMD 'Node Control/Rebirth' = true (5.17)
  {"cmd":"dcmd","node":"edge1","device":"plc1","metric":"Setpoint",
   "datatype":"Int64","value":-5}
      DCMD. "alias":N instead of (or as well as) "metric". "datatype" defaults
      to the birth's; it goes on the wire only with "with_datatype":true (6.4.6:
      SHOULD NOT be sent). "is_null":true sends a null. "metrics":[{...},...]
      sends several. {"cmd":"ncmd",...} is the same for node metrics. Sent at
      QoS 0, not retained, with a payload timestamp and no seq (6.4.23-24).
  {"cmd":"raw","topic":T,"hex":"0a01..","qos":0,"retain":false}   any bytes
  {"cmd":"state","online":false|true}
      STATE for H: offline with the current time; online after an offline
      reconnects with a new Will timestamp and publishes online with it, as a
      restarted host would (a STATE older than the last one is ignored: 5.4).
  {"cmd":"quit"}   publishes STATE offline first (5.14) when H is online.

The checker adds {"kind":"violation","rule","detail","topic","type","node",
"device","seq"} lines after a message that breaks an edge node rule; the rule
is the spec's requirement id (tck-id-...) or its section:
- seq present on NBIRTH, NDATA, DBIRTH, DDATA, DDEATH; 0 on NBIRTH, then one
  more on each message of the edge node, 255 wrapping to 0 (4.2.1.1.2,
  4.2.1.2.2, 4.2.2.1.2-4.2.2.3.2, 6.4.5); none on NDEATH (6.4.25).
- NBIRTH: a bdSeq metric, Int64 in 0..255, and 'Node Control/Rebirth', Boolean
  false, without alias (4.2.1.1.2, 5.4, 5.17, 6.4.19). NDEATH: only bdSeq,
  equal to the one of the NBIRTH before it (4.2.1.3.2, 6.4.25).
- birth metrics: a name (also when it has an alias), a valid datatype, a
  timestamp, and a value or is_null (not both) (4.2.1.1.2, 4.2.2.1.2, 5.16,
  6.4.6); aliases unique across the edge node's NBIRTH and DBIRTHs (6.4.6).
- NDATA/DDATA only after the node's/device's birth (DBIRTH only after NBIRTH;
  an NBIRTH voids the devices' births, a DDEATH its device's) (5.6, 5.15,
  6.4.20-22); each metric declared in that birth, by alias or by name but not
  both (6.4.6, read as the TCK does), with its birth datatype if one is sent,
  and a timestamp.
- a value in its datatype's field (6.4.17; UInt32 is also accepted in
  long_value, where Eclipse Tahu's Java encoder puts it) and in range (Int8 to
  Int32 may come zero- or sign-extended to 32 bits); one value field at most;
  no unknown protobuf field (a wrong field number or wire type); UTF-8 strings.
- a payload timestamp on all but NDEATH; NBIRTH, NDATA, DBIRTH, DDATA and
  DDEATH at QoS 0; nothing retained (4.2.1-4.2.2, 6.4.19-26).
- topic spBv1.0/G/TYPE/node, plus /device exactly for the D types (4.1).
"""

import argparse
import json
import math
import os
import struct
import sys
import threading
import time

import paho.mqtt.client as mqtt
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from paho.mqtt.subscribeoptions import SubscribeOptions

# The Sparkplug B schema of 6.4.1 (proto2), a message a line: field=number:type,
# '*' repeated. The spec nests these in Payload, which changes nothing on the
# wire. Its value fields are a oneof there; plain here, so that a payload
# setting two of them is caught instead of silently keeping the last.
SCHEMA = {
    "Payload": "timestamp=1:uint64 metrics=2:Metric* seq=3:uint64 uuid=4:string body=5:bytes",
    "Metric": "name=1:string alias=2:uint64 timestamp=3:uint64 datatype=4:uint32"
    " is_historical=5:bool is_transient=6:bool is_null=7:bool metadata=8:MetaData"
    " properties=9:PropertySet int_value=10:uint32 long_value=11:uint64 float_value=12:float"
    " double_value=13:double boolean_value=14:bool string_value=15:string bytes_value=16:bytes"
    " dataset_value=17:DataSet template_value=18:Template extension_value=19:Extension",
    "MetaData": "is_multi_part=1:bool content_type=2:string size=3:uint64 seq=4:uint64"
    " file_name=5:string file_type=6:string md5=7:string description=8:string",
    "PropertySet": "keys=1:string* values=2:PropertyValue*",
    "PropertyValue": "type=1:uint32 is_null=2:bool int_value=3:uint32 long_value=4:uint64"
    " float_value=5:float double_value=6:double boolean_value=7:bool string_value=8:string"
    " propertyset_value=9:PropertySet propertysets_value=10:PropertySetList"
    " extension_value=11:Extension",
    "PropertySetList": "propertyset=1:PropertySet*",
    "DataSet": "num_of_columns=1:uint64 columns=2:string* types=3:uint32* rows=4:Row*",
    "Row": "elements=1:DataSetValue*",
    "DataSetValue": "int_value=1:uint32 long_value=2:uint64 float_value=3:float"
    " double_value=4:double boolean_value=5:bool string_value=6:string extension_value=7:Extension",
    "Template": "version=1:string metrics=2:Metric* parameters=3:Parameter*"
    " template_ref=4:string is_definition=5:bool",
    "Parameter": "name=1:string type=2:uint32 int_value=3:uint32 long_value=4:uint64"
    " float_value=5:float double_value=6:double boolean_value=7:bool string_value=8:string"
    " extension_value=9:Extension",
    "Extension": "",  # "extensions 1 to max": what it holds stays unknown
}


def message_classes():
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="sparkplug_b.proto", package="spb", syntax="proto2")
    for name, fields in SCHEMA.items():
        msg = proto.message_type.add(name=name)
        for field in fields.split():
            fname, rest = field.split("=")
            number, ftype = rest.split(":")
            label = F.LABEL_REPEATED if ftype.endswith("*") else F.LABEL_OPTIONAL
            f = msg.field.add(name=fname, number=int(number), label=label)
            ftype = ftype.rstrip("*")
            if ftype in SCHEMA:
                f.type, f.type_name = F.TYPE_MESSAGE, ".spb." + ftype
            else:
                f.type = getattr(F, "TYPE_" + ftype.upper())
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName("spb." + n)) for n in SCHEMA}


PB = message_classes()

# 6.4.16: the DataType enum, in number order.
DATATYPES = (
    "Unknown", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float",
    "Double", "Boolean", "String", "DateTime", "Text", "UUID", "DataSet", "Bytes", "File", "Template",
    "PropertySet", "PropertySetList", "Int8Array", "Int16Array", "Int32Array", "Int64Array",
    "UInt8Array", "UInt16Array", "UInt32Array", "UInt64Array", "FloatArray", "DoubleArray",
    "BooleanArray", "StringArray", "DateTimeArray",
)
DT = {name: number for number, name in enumerate(DATATYPES)}
INT_BITS = {"Int8": 8, "Int16": 16, "Int32": 32, "Int64": 64,
            "UInt8": 8, "UInt16": 16, "UInt32": 32, "UInt64": 64}
ARRAYS = {"Int8Array": "b", "Int16Array": "h", "Int32Array": "i", "Int64Array": "q",
          "UInt8Array": "B", "UInt16Array": "H", "UInt32Array": "I", "UInt64Array": "Q",
          "FloatArray": "f", "DoubleArray": "d", "DateTimeArray": "Q"}
# 6.4.17: the protobuf field of each datatype's value.
FIELD = {**dict.fromkeys(("Int8", "Int16", "Int32", "UInt8", "UInt16", "UInt32"), "int_value"),
         **dict.fromkeys(("Int64", "UInt64", "DateTime"), "long_value"),
         **dict.fromkeys(("String", "Text", "UUID"), "string_value"),
         **dict.fromkeys(("Bytes", "File", "BooleanArray", "StringArray", *ARRAYS), "bytes_value"),
         "Float": "float_value", "Double": "double_value", "Boolean": "boolean_value",
         "DataSet": "dataset_value", "Template": "template_value"}
VALUE_FIELDS = {"int_value", "long_value", "float_value", "double_value", "boolean_value",
                "string_value", "bytes_value", "dataset_value", "template_value",
                "propertyset_value", "propertysets_value", "extension_value"}
EDGE_TYPES = ("NBIRTH", "NDEATH", "NDATA", "DBIRTH", "DDEATH", "DDATA")
REBIRTH = "Node Control/Rebirth"


def now_ms():
    return int(time.time() * 1000)


def fields_of(msg):
    return {f.name: v for f, v in msg.ListFields()}


def json_float(x):
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def type_name(number):
    return DATATYPES[number] if number is not None and number < len(DATATYPES) else number


def decode_value(dtype, field, raw, problems):
    """The value `raw` found in protobuf field `field`, read as Sparkplug `dtype` (6.4.17)."""
    expected = FIELD.get(dtype)
    if expected and field != expected and (dtype, field) != ("UInt32", "long_value"):
        problems.append(("6.4.17", f"{dtype} value in {field}, expected {expected}"))
    if isinstance(raw, bytes) and field == "string_value":
        problems.append(("6.4.17", "string_value is not UTF-8"))
        return raw.hex()
    if dtype in INT_BITS and isinstance(raw, int):
        bits, signed = INT_BITS[dtype], dtype.startswith("Int")
        sign_extended = signed and bits < 32 and raw >= (1 << 32) - (1 << (bits - 1))
        if raw >= 1 << bits and not (sign_extended and field == "int_value"):
            problems.append(("6.4.17", f"{raw} does not fit {dtype}"))
        raw &= (1 << bits) - 1
        return raw - (1 << bits) if signed and raw >> (bits - 1) else raw
    if dtype in ARRAYS and isinstance(raw, bytes):
        size = struct.calcsize(ARRAYS[dtype])
        if len(raw) % size:
            problems.append(("6.4.17", f"{dtype} of {len(raw)} bytes"))
        values = struct.unpack(f"<{len(raw) // size}{ARRAYS[dtype]}", raw[: len(raw) // size * size])
        return [json_float(v) if isinstance(v, float) else v for v in values]
    if dtype == "BooleanArray" and isinstance(raw, bytes):
        count, bits = int.from_bytes(raw[:4], "little"), raw[4:]
        if len(raw) < 4 or len(bits) != (count + 7) // 8:
            problems.append(("6.4.17", f"BooleanArray of {len(raw)} bytes for {count} values"))
        return [bool(bits[i // 8] >> (7 - i % 8) & 1) for i in range(min(count, 8 * len(bits)))]
    if dtype == "StringArray" and isinstance(raw, bytes):
        if raw and not raw.endswith(b"\0"):
            problems.append(("6.4.17", "StringArray not NUL-terminated"))
        return [s.decode("utf-8", "replace") for s in raw.split(b"\0")[:-1]]
    if field == "dataset_value":
        return decode_dataset(raw, problems)
    if field == "template_value":
        return decode_template(raw, problems)
    if field == "propertyset_value":
        return decode_properties(raw, problems)
    if field == "propertysets_value":
        return [decode_properties(p, problems) for p in raw.propertyset]
    if field == "extension_value":
        return {"extension": raw.SerializeToString().hex()}
    if isinstance(raw, bytes):
        return raw.hex()
    return json_float(raw) if isinstance(raw, float) else raw


def one_value(msg, dtype, problems):
    """(field, value) of the value field set in `msg`: a oneof in the spec (6.4.6)."""
    present = [(f, v) for f, v in fields_of(msg).items() if f in VALUE_FIELDS]
    if len(present) > 1:
        problems.append(("6.4.6", "several value fields: " + ", ".join(f for f, _ in present)))
    if not present:
        return None, None
    field, raw = present[0]
    return field, decode_value(dtype, field, raw, problems)


def decode_properties(ps, problems):
    if len(ps.keys) != len(ps.values):
        problems.append(("tck-id-payloads-propertyset-keys-array-size",
                         f"{len(ps.keys)} keys, {len(ps.values)} values"))
    out = {}
    for key, pv in zip(ps.keys, ps.values):
        t = type_name(pv.type) if pv.HasField("type") else None
        out[key] = {"type": t, "is_null": pv.is_null, "value": one_value(pv, t, problems)[1]}
    return out


def decode_dataset(ds, problems):
    types = [type_name(t) for t in ds.types]
    if not ds.num_of_columns == len(ds.columns) == len(types):
        counts = f"{ds.num_of_columns}, {len(ds.columns)} columns, {len(types)} types"
        problems.append(("tck-id-payloads-dataset-column-num-headers", f"num_of_columns {counts}"))
    rows = [[one_value(v, t, problems)[1] for v, t in zip(row.elements, types)] for row in ds.rows]
    return {"num_of_columns": ds.num_of_columns, "columns": list(ds.columns), "types": types,
            "rows": rows}


def decode_template(t, problems):
    f = fields_of(t)
    params = [{"name": p.name if p.HasField("name") else None,
               "type": type_name(p.type) if p.HasField("type") else None,
               "value": one_value(p, type_name(p.type) if p.HasField("type") else None, problems)[1]}
              for p in t.parameters]
    return {"version": f.get("version"), "template_ref": f.get("template_ref"),
            "is_definition": f.get("is_definition"), "parameters": params,
            "metrics": [decode_metric(m, None, None, problems) for m in t.metrics]}


def decode_metric(m, birth_name, birth_type, problems):
    f = fields_of(m)
    dtype = type_name(f["datatype"]) if "datatype" in f else birth_type
    field, value = one_value(m, dtype, problems)
    name = f.get("name")
    if isinstance(name, bytes):
        problems.append(("6.4.6", "metric name is not UTF-8"))
        name = name.decode("utf-8", "replace")
    out = {"name": name, "alias": f.get("alias"), "datatype": type_name(f.get("datatype")),
           "field": field, "value": value, "is_historical": m.is_historical,
           "is_transient": m.is_transient, "is_null": m.is_null, "timestamp": f.get("timestamp"),
           "resolved_name": name if name is not None else birth_name, "resolved_datatype": dtype}
    if "properties" in f:
        out["properties"] = decode_properties(m.properties, problems)
    if "metadata" in f:
        out["metadata"] = fields_of(m.metadata)
    return out


def unknown_fields(msg, path="payload"):
    """Fields the schema does not know (a wrong number or wire type), Extension's excepted."""
    found = [f"{path}: field {u.field_number} wire type {u.wire_type}" for u in UnknownFieldSet(msg)]
    for fd, value in msg.ListFields():
        if fd.message_type is None or fd.message_type.name == "Extension":
            continue
        subs = enumerate(value) if fd.is_repeated else [(None, value)]
        for i, sub in subs:
            found += unknown_fields(sub, f"{path}.{fd.name}" + ("" if i is None else f"[{i}]"))
    return found


class Birth:
    """One NBIRTH's or DBIRTH's metrics: name -> datatype, alias -> name."""

    def __init__(self):
        self.types, self.names = {}, {}


class Edge:
    def __init__(self):
        self.seq = None  # the last seq it sent, None out of a session
        self.bdseq = None  # the bdSeq of its last NBIRTH
        self.node = None  # Birth of its NBIRTH, None when dead
        self.devices = {}  # device -> Birth of its DBIRTH, while alive


class Checker:
    """The edge node rules of the docstring, per edge node of the group."""

    def __init__(self):
        self.edges = {}

    def check(self, t, payload, qos, retain, node, device):
        """The violations (rule, detail) of one edge node message, and its decoded metrics."""
        v = []
        edge = self.edges.setdefault(node, Edge())
        f = fields_of(payload)
        if t != "NDEATH":
            if qos != 0:
                v.append((f"tck-id-topics-{t.lower()}-mqtt", f"QoS {qos}, must be 0"))
            if "timestamp" not in f:
                v.append((f"tck-id-payloads-{t.lower()}-timestamp", "no payload timestamp"))
        if retain:
            v.append(("tck-id-payloads-ndeath-will-message-retain" if t == "NDEATH"
                      else f"tck-id-topics-{t.lower()}-mqtt", "retained"))
        v += [("6.4.1", "unknown " + u) for u in unknown_fields(payload)]
        self.check_seq(t, f.get("seq"), edge, v)

        if t == "NBIRTH":
            edge.node, edge.devices = Birth(), {}
            scope = edge.node
        elif t == "DBIRTH":
            if edge.node is None:
                v.append(("tck-id-message-flow-device-birth-publish-nbirth-wait",
                          "DBIRTH before NBIRTH"))
            scope = edge.devices[device] = Birth()
        elif t == "NDEATH":
            scope = None
        else:  # NDATA, DDATA, DDEATH
            scope = edge.node if t == "NDATA" else edge.devices.get(device)
            if scope is None:
                rule = {"NDATA": "tck-id-payloads-ndata-order", "DDATA": "tck-id-payloads-ddata-order"}
                v.append((rule.get(t, "5.15"), f"{t} before its {'N' if t == 'NDATA' else 'D'}BIRTH"))
            if t == "DDEATH":
                edge.devices.pop(device, None)

        metrics = []
        for m in payload.metrics:
            problems = []
            if t in ("NBIRTH", "DBIRTH"):
                out = decode_metric(m, None, None, problems)
                self.check_birth_metric(t, out, edge, scope, problems)
            elif t in ("NDATA", "DDATA"):
                name, dtype = self.resolve(t, m, scope, problems)
                out = decode_metric(m, name, dtype, problems)
                if out["timestamp"] is None:
                    problems.append(("tck-id-payloads-name-birth-data-requirement", "no timestamp"))
            else:
                out = decode_metric(m, None, None, problems)
            label = out["resolved_name"] if out["resolved_name"] is not None else out["alias"]
            v += [(rule, f"metric {label!r}: {detail}") for rule, detail in problems]
            metrics.append(out)

        if t == "NBIRTH":
            self.check_nbirth(metrics, edge, v)
        elif t == "NDEATH":
            self.check_ndeath(metrics, edge, v)
            edge.node, edge.devices, edge.seq = None, {}, None
        return v, metrics

    def check_seq(self, t, seq, edge, v):
        if t == "NDEATH":
            if seq is not None:
                v.append(("tck-id-payloads-ndeath-seq", f"NDEATH with seq {seq}"))
            return
        rule = {"NBIRTH": "tck-id-topics-nbirth-seq-num",
                "DBIRTH": "tck-id-topics-dbirth-seq"}.get(t, f"tck-id-topics-{t.lower()}-seq-num")
        if seq is None:
            v.append(("tck-id-payloads-sequence-num-always-included", f"{t} without seq"))
            return
        if seq > 255:
            v.append((rule, f"seq {seq} > 255"))
        if t == "NBIRTH" and seq != 0:
            v.append((rule, f"NBIRTH seq {seq}, must be 0"))
        elif t != "NBIRTH" and edge.seq is not None and seq != (edge.seq + 1) % 256:
            v.append((rule, f"seq {seq} after {edge.seq}, expected {(edge.seq + 1) % 256}"))
        edge.seq = seq

    def check_birth_metric(self, t, out, edge, scope, problems):
        name, alias = out["name"], out["alias"]
        if name is None:
            problems.append(("tck-id-payloads-alias-birth-requirement" if alias is not None
                             else f"tck-id-topics-{t.lower()}-metrics", "no name"))
            return
        if out["datatype"] in (None, "Unknown") or isinstance(out["datatype"], int):
            problems.append(("tck-id-payloads-metric-datatype-req", f"datatype {out['datatype']}"))
        rule = f"tck-id-operational-behavior-data-publish-{t[0].lower()}birth-values"
        if out["field"] is None and not out["is_null"]:
            problems.append((rule, "no value and not is_null"))
        if out["field"] is not None and out["is_null"]:
            problems.append((rule, "is_null with a value"))
        if out["timestamp"] is None:
            problems.append(("tck-id-payloads-name-birth-data-requirement", "no timestamp"))
        if alias is not None:
            births = (edge.node, *edge.devices.values())
            owner = [b.names[alias] for b in births if b and alias in b.names]
            if owner:
                problems.append(("tck-id-payloads-alias-uniqueness", f"alias {alias} also {owner[0]!r}"))
            scope.names[alias] = name
        scope.types[name] = out["datatype"]

    def resolve(self, t, m, scope, problems):
        """Name and birth datatype of a data metric, whose alias or name must be in the birth."""
        name = m.name if m.HasField("name") else None
        if scope is None:
            return name, None
        birth, rule = f"the latest {t[0]}BIRTH", "tck-id-payloads-alias-data-cmd-requirement"
        if m.HasField("alias"):
            if m.alias not in scope.names:
                problems.append((rule, f"alias {m.alias} not in {birth}"))
                return name, None
            if name is not None:
                problems.append((rule, "name and alias in data"))
            name = scope.names[m.alias]
        elif name is None:
            problems.append(("tck-id-payloads-name-requirement", "neither name nor alias"))
            return None, None
        elif name not in scope.types:
            problems.append((f"tck-id-operational-behavior-data-publish-{t[0].lower()}birth",
                             f"not in {birth}"))
            return name, None
        birth_type = scope.types.get(name)
        if m.HasField("datatype") and type_name(m.datatype) != birth_type:
            problems.append(("tck-id-payloads-metric-datatype-value",
                             f"datatype {type_name(m.datatype)}, the birth said {birth_type}"))
        return name, birth_type

    def check_nbirth(self, metrics, edge, v):
        by_name = {m["name"]: m for m in metrics}
        bd, rb = by_name.get("bdSeq"), by_name.get(REBIRTH)
        edge.bdseq = bd and bd["value"]
        if bd is None:
            v.append(("tck-id-payloads-nbirth-bdseq", "NBIRTH without bdSeq"))
        else:
            self.check_bdseq(bd, v)
        if rb is None:
            v.append(("tck-id-payloads-nbirth-rebirth-req", f"NBIRTH without {REBIRTH!r}"))
        else:
            if rb["datatype"] != "Boolean" or rb["value"] is not False:
                v.append(("tck-id-payloads-nbirth-rebirth-req",
                          f"{REBIRTH} is {rb['datatype']} {rb['value']!r}, must be Boolean false"))
            if rb["alias"] is not None:
                v.append(("tck-id-operational-behavior-data-commands-rebirth-name-aliases",
                          f"{REBIRTH} has alias {rb['alias']}"))

    def check_bdseq(self, bd, v):
        if bd["datatype"] != "Int64":
            v.append(("tck-id-message-flow-edge-node-birth-publish-nbirth-payload-bdSeq",
                      f"bdSeq datatype {bd['datatype']}, must be Int64"))
        if type(bd["value"]) is not int or not 0 <= bd["value"] <= 255:
            v.append(("tck-id-message-flow-edge-node-birth-publish-will-message-payload-bdSeq",
                      f"bdSeq {bd['value']!r} not in 0..255"))

    def check_ndeath(self, metrics, edge, v):
        bd = [m for m in metrics if m["name"] == "bdSeq"]
        if len(metrics) != 1 or not bd:
            v.append(("tck-id-topics-ndeath-payload",
                      f"NDEATH metrics {[m['name'] for m in metrics]}, must be bdSeq alone"))
        if bd:
            self.check_bdseq(bd[0], v)
            if edge.bdseq is not None and bd[0]["value"] != edge.bdseq:
                v.append(("tck-id-payloads-ndeath-bdseq",
                          f"NDEATH bdSeq {bd[0]['value']}, its NBIRTH had {edge.bdseq}"))


def encode_value(metric, dtype, value):
    """Sets `value` on a PB Metric as Sparkplug `dtype` (6.4.17; IntN as N-bit two's complement)."""
    if dtype in INT_BITS:
        bits = INT_BITS[dtype]
        lo = -(1 << (bits - 1)) if dtype.startswith("Int") else 0
        if type(value) is not int or not lo <= value < lo + (1 << bits):
            raise ValueError(f"{value!r} is not a {dtype}")
        setattr(metric, FIELD[dtype], value & ((1 << bits) - 1))
    elif dtype in ("Float", "Double"):
        setattr(metric, FIELD[dtype], float(value))  # float("NaN") works too
    elif dtype == "Boolean":
        metric.boolean_value = bool(value)
    elif dtype in ("String", "Text", "UUID"):
        metric.string_value = value
    elif dtype == "DateTime":
        metric.long_value = value
    elif dtype in ("Bytes", "File"):
        metric.bytes_value = bytes.fromhex(value)
    elif dtype in ARRAYS:
        metric.bytes_value = struct.pack(f"<{len(value)}{ARRAYS[dtype]}", *value)
    elif dtype == "BooleanArray":
        bits = bytearray((len(value) + 7) // 8)
        for i, b in enumerate(value):
            bits[i // 8] |= bool(b) << (7 - i % 8)
        metric.bytes_value = len(value).to_bytes(4, "little") + bytes(bits)
    elif dtype == "StringArray":
        metric.bytes_value = b"".join(s.encode() + b"\0" for s in value)
    else:
        raise ValueError(f"cannot send a {dtype}")


class Host:
    def __init__(self, args):
        self.args, self.group, self.host_id = args, args.group, args.host_id
        self.out = None  # the --out file, open while run() runs
        self.lock = threading.Lock()
        self.checker = Checker()
        self.ready = False
        self.want_online = True  # STATE online wanted (until "state" false or quit)
        self.state_mid = None
        self.will_ts = None
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id,
                                      protocol=mqtt.MQTTv5)
        if args.username is not None:
            c.username_pw_set(args.username, args.password)
        if args.cafile:
            c.tls_set(ca_certs=args.cafile)
        c.on_connect, c.on_subscribe, c.on_message = self.on_connect, self.on_subscribe, self.on_message
        c.on_publish, c.on_disconnect = self.on_publish, self.on_disconnect

    def write(self, record):
        line = json.dumps(record, default=lambda o: o.hex() if isinstance(o, bytes) else str(o))
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()

    def state(self, online, ts):
        """Topic and payload of this host's STATE (4.2.3.1.2, 4.2.3.2.2)."""
        return f"spBv1.0/STATE/{self.host_id}", json.dumps({"online": online, "timestamp": ts})

    def start(self):
        if self.host_id:  # 5.13: the Will is STATE offline with the connect time, QoS 1, retained
            self.will_ts = now_ms()
            self.client.will_set(*self.state(False, self.will_ts), qos=1, retain=True)
        self.client.connect(self.args.host, self.args.port, keepalive=10, clean_start=True)
        self.client.loop_start()

    def on_connect(self, client, userdata, flags, reason, properties):
        self.write({"kind": "host", "event": "connected", "reason": str(reason)})
        if reason.is_failure:
            print(f"sparkplug_host: error connection refused: {reason}", flush=True)
            os._exit(2)
        # 5.3: subscribe to the namespace and to its own STATE, then publish STATE
        opts = SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True)
        topics = [(f"spBv1.0/{self.group}/#", opts)]
        if self.host_id:
            topics.append((self.state(True, 0)[0], SubscribeOptions(qos=1, retainAsPublished=True)))
        client.subscribe(topics)

    def on_subscribe(self, client, userdata, mid, reasons, properties):
        if any(r.is_failure for r in reasons):
            print(f"sparkplug_host: error subscription refused: {reasons}", flush=True)
            os._exit(2)
        if self.host_id and self.want_online:  # STATE online with the Will's timestamp (5.3)
            self.state_mid = client.publish(*self.state(True, self.will_ts), 1, True).mid
        elif not self.ready:
            self.ready = True
            print("sparkplug_host: subscribed", flush=True)

    def on_publish(self, client, userdata, mid, reason, properties):
        if mid == self.state_mid and not self.ready:
            self.ready = True
            print("sparkplug_host: subscribed", flush=True)

    def on_disconnect(self, client, userdata, flags, reason, properties):
        self.write({"kind": "host", "event": "disconnected", "reason": str(reason)})

    def on_message(self, client, userdata, msg):
        record = {"kind": "message", "rx": now_ms(), "topic": msg.topic, "qos": msg.qos,
                  "retain": bool(msg.retain), "hex": msg.payload.hex()}
        if self.host_id and msg.topic == self.state(True, 0)[0]:
            record.update(kind="state", payload=msg.payload.decode("utf-8", "replace"))
            self.write(record)
            try:
                online = json.loads(msg.payload).get("online")
            except (ValueError, AttributeError):
                online = None
            if online is False and self.want_online:  # 5.3: declared offline, but it is not
                client.publish(*self.state(True, self.will_ts), 1, True)
            return
        parts = msg.topic.split("/") + [None] * 5
        t = parts[2]
        record.update(namespace=parts[0], group=parts[1], type=t, node=parts[3], device=parts[4],
                      timestamp=None, seq=None, metrics=[])
        violations = []
        n = 5 if t and t[0] == "D" else 4  # levels: a device id just for D types (4.1)
        if t not in EDGE_TYPES + ("NCMD", "DCMD") or not all(parts[:n]) or parts[n] is not None:
            form = "spBv1.0/group_id/message_type/edge_node_id[/device_id]"
            violations.append(("tck-id-topic-structure", f"not {form}"))
        try:
            payload = PB["Payload"].FromString(msg.payload)
        except DecodeError as e:
            violations.append(("6.4.1", f"not a Sparkplug B payload: {e}"))
            payload = None
        if payload is not None:
            f = fields_of(payload)
            record.update(timestamp=f.get("timestamp"), seq=f.get("seq"))
            record.update({k: f[k] for k in ("uuid", "body") if k in f})
            if t in EDGE_TYPES and not violations:
                found, record["metrics"] = self.checker.check(t, payload, msg.qos, msg.retain,
                                                              parts[3], parts[4])
                violations += found
            else:
                record["metrics"] = [decode_metric(m, None, None, []) for m in payload.metrics]
        self.write(record)
        for rule, detail in violations:
            self.write({"kind": "violation", "rule": rule, "detail": detail, "topic": msg.topic,
                        "type": t, "node": parts[3], "device": parts[4], "seq": record["seq"]})

    # ---- commands ----

    def birth_type(self, node, device, name, alias):
        edge = self.checker.edges.get(node)
        birth = edge and (edge.devices.get(device) if device else edge.node)
        return birth.types.get(birth.names.get(alias, name)) if birth else None

    def command(self, cmd):
        """Carries out one stdin command; False for quit."""
        kind = cmd.get("cmd")
        if kind == "rebirth":  # 5.17: NCMD with Node Control/Rebirth = true
            kind, cmd = "ncmd", {"node": cmd["node"], "metric": REBIRTH, "datatype": "Boolean",
                                 "value": True, "with_datatype": True}
        if kind in ("ncmd", "dcmd"):
            node, device = cmd["node"], cmd["device"] if kind == "dcmd" else None
            payload = PB["Payload"](timestamp=now_ms())  # 6.4.23-24: a timestamp, no seq
            for spec in cmd.get("metrics", [cmd]):
                name, alias = spec.get("metric"), spec.get("alias")
                m = payload.metrics.add(timestamp=now_ms())
                if name is not None:
                    m.name = name
                if alias is not None:
                    m.alias = alias
                dtype = spec.get("datatype") or self.birth_type(node, device, name, alias)
                if dtype is None:
                    raise ValueError(f"no datatype for {name or alias!r}: give one or await the birth")
                if spec.get("with_datatype"):
                    m.datatype = DT[dtype]
                if spec.get("is_null"):
                    m.is_null = True
                else:
                    encode_value(m, dtype, spec["value"])
            topic = f"spBv1.0/{self.group}/{kind.upper()}/{node}" + (f"/{device}" if device else "")
            self.publish(topic, payload.SerializeToString(), 0, False)
        elif kind == "raw":
            self.publish(cmd["topic"], bytes.fromhex(cmd.get("hex", "")), cmd.get("qos", 0),
                         cmd.get("retain", False))
        elif kind == "state":
            if not self.host_id:
                raise ValueError("state needs --host-id")
            self.set_state(bool(cmd["online"]))
        elif kind == "quit":
            return False
        else:
            raise ValueError(f"unknown command {kind!r}")
        return True

    def publish(self, topic, data, qos, retain):
        if isinstance(data, str):
            data = data.encode()
        self.client.publish(topic, data, qos, retain).wait_for_publish(5)
        self.write({"kind": "sent", "topic": topic, "qos": qos, "retain": retain, "hex": data.hex()})

    def set_state(self, online):
        if not online:
            self.want_online = False
            self.publish(*self.state(False, now_ms()), 1, True)
        elif self.want_online:
            self.publish(*self.state(True, self.will_ts), 1, True)
        else:  # back online as a new session: a new Will timestamp, STATE online with it
            self.client.disconnect()
            self.client.loop_stop()
            self.want_online = True
            self.start()

    def run(self):
        with open(self.args.out, "w", encoding="utf-8") as self.out:
            self.serve()
        print("sparkplug_host: ok quit", flush=True)

    def serve(self):
        self.start()
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                cmd = json.loads(line)
                if not self.command(cmd):
                    break
                print(f"sparkplug_host: ok {cmd.get('cmd')}", flush=True)
            except Exception as e:  # noqa: BLE001 (a test's mistake must not kill the host)
                self.write({"kind": "error", "line": line.strip(), "error": repr(e)})
                print(f"sparkplug_host: error {e!r}", flush=True)
        if self.host_id and self.want_online and self.client.is_connected():
            self.want_online = False  # 5.14: STATE offline before disconnecting
            self.publish(*self.state(False, now_ms()), 1, True)
        self.client.disconnect()
        self.client.loop_stop()


def main():
    p = argparse.ArgumentParser(description="An independent Sparkplug B 3.0 host for RTDS's tests.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--cafile", help="CA certificate: connect with TLS")
    p.add_argument("--group", required=True)
    p.add_argument("--host-id", help="act as the primary host with this id (STATE)")
    p.add_argument("--client-id", default="", help="MQTT client id (default: the broker's choice)")
    p.add_argument("--out", required=True)
    Host(p.parse_args()).run()


if __name__ == "__main__":
    main()

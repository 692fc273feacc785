#!/usr/bin/env python3
"""Cross-checks regnotify's Avro codec against fastavro, an Avro implementation we did not write.

Usage:
  check.py write-events OUT_DIR
      Encodes sample MerchantRegistrationDecided events with fastavro, each as raw Avro binary
      (<name>.raw) and in single-object encoding (<name>.so), and writes the events as JSON
      (events.json, Avro field names) for the Rust side to compare its decoding against.
  check.py read-rust DIR
      Decodes every <name>.bin outcome regnotify wrote (single-object or Confluent framing) and
      compares it with <name>.json; compares regnotify's parsing canonical forms
      (canonical/<schema file>.txt) and fingerprints with fastavro's.

Exit status 0 when everything matches; otherwise each mismatch is printed and the status is 1.
Needs: pip install fastavro
"""

import io
import json
import sys
from pathlib import Path

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

SCHEMAS = Path(__file__).resolve().parent.parent.parent / "schemas"
INPUT_SCHEMA = "MerchantRegistrationDecided.avsc"
OUTCOME_SCHEMA = "RegistrationNotifyOutcome.avsc"

SAMPLE_EVENTS = {
    "approved": {
        "eventId": "0b5f7c1e-6c8a-4a57-9d62-4a1d1f0e9a11",
        "occurredAt": 1764000000123,
        "referenceMerchantId": "M-0001",
        "registrationRequestId": "REQ-0001",
        "decision": "APPROVED",
        "rejectionReason": None,
        "pspId": None,
    },
    "rejected_unicode": {
        "eventId": "9a6d6f39-2b0e-4a4e-8b1a-0d5b6f2f7c33",
        "occurredAt": 0,
        "referenceMerchantId": "商户-é-🙂",
        "registrationRequestId": "R" * 64,
        "decision": "REJECTED",
        "rejectionReason": "licence expired — ünïcode",
        "pspId": "psp-hk",
    },
    "negative_time": {
        "eventId": "00000000-0000-4000-8000-000000000000",
        "occurredAt": -1,
        "referenceMerchantId": "m",
        "registrationRequestId": "r",
        "decision": "REJECTED",
        "rejectionReason": None,
        "pspId": "",
    },
}


def load(name):
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


def strip_logical_types(schema):
    """The same wire schema without logical types, so fastavro returns plain ints and strings."""
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    return schema


def single_object_header(schema_json):
    canonical = to_parsing_canonical_form(parse_schema(schema_json))
    return b"\xc3\x01" + bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def write_events(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    schema_json = load(INPUT_SCHEMA)
    parsed = parse_schema(schema_json)
    header = single_object_header(schema_json)
    for name, event in SAMPLE_EVENTS.items():
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, event)
        body = buf.getvalue()
        (out / f"{name}.raw").write_bytes(body)
        (out / f"{name}.so").write_bytes(header + body)
    (out / "events.json").write_text(json.dumps(SAMPLE_EVENTS, ensure_ascii=False), encoding="utf-8")
    return 0


def read_rust(in_dir):
    base = Path(in_dir)
    failures = []

    for name in (INPUT_SCHEMA, OUTCOME_SCHEMA):
        ours = (base / "canonical" / f"{name}.txt").read_text(encoding="utf-8")
        theirs = to_parsing_canonical_form(parse_schema(load(name)))
        if ours != theirs:
            failures.append(f"{name}: canonical form differs\n  regnotify: {ours}\n  fastavro:  {theirs}")

    schema_json = load(OUTCOME_SCHEMA)
    reader = parse_schema(strip_logical_types(schema_json))
    header = single_object_header(schema_json)
    bins = sorted(base.glob("*.bin"))
    if not bins:
        failures.append(f"no .bin outcome files in {base}")
    for path in bins:
        data = path.read_bytes()
        if data[:2] == b"\xc3\x01":
            if data[:10] != header:
                failures.append(f"{path.name}: single-object header {data[:10].hex()} != fastavro's {header.hex()}")
                continue
            body = data[10:]
        elif data[:1] == b"\x00" and len(data) >= 5:
            body = data[5:]
        else:
            failures.append(f"{path.name}: unknown framing {data[:2].hex()}")
            continue
        stream = io.BytesIO(body)
        try:
            decoded = fastavro.schemaless_reader(stream, reader, None)
        except Exception as e:  # noqa: BLE001 - any failure is a mismatch to report
            failures.append(f"{path.name}: fastavro cannot decode: {e!r}")
            continue
        if stream.read():
            failures.append(f"{path.name}: bytes left over after the datum")
        expected = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        if decoded != expected:
            failures.append(f"{path.name}: decoded {decoded!r}\n  expected {expected!r}")

    for failure in failures:
        print(f"MISMATCH {failure}")
    if not failures:
        print(f"ok: {len(bins)} outcomes and 2 canonical forms agree with fastavro {fastavro.__version__}")
    return 1 if failures else 0


def main(argv):
    if len(argv) == 3 and argv[1] == "write-events":
        return write_events(argv[2])
    if len(argv) == 3 and argv[1] == "read-rust":
        return read_rust(argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

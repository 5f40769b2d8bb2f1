#!/usr/bin/env python3
"""Publish UsageEvents to Kafka from Python (confluent-kafka), validated first
against schemas/usage_event.schema.json (jsonschema, draft 2020-12).

    python publish.py TENANT FEATURE QUANTITY   publish one event, e.g. acme api_calls 1
    python publish.py check [VECTORS.jsonl]     validate the shared test vectors, print verdicts
    python publish.py send MESSAGES.jsonl       validate each message; publish the valid ones

KAFKA_BROKERS (127.0.0.1:19092) and USAGE_TOPIC (usage.events) say where to
publish; USAGE_SCHEMA overrides the schema path. A .jsonl file has one JSON
object per line: {"name": ..., "b64": <message bytes, base64>}.

The producer keeps confluent-kafka's defaults except acks=all and idempotence:
its default partitioner is librdkafka's CRC32 (consistent_random), which the
consumer re-routes to the tenant's Murmur2 partition (see the root README).
"""
import base64
import datetime
import decimal
import json
import os
import sys
import time
import uuid

import jsonschema
from confluent_kafka import KafkaException, Producer
from jsonschema import Draft202012Validator

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA = os.environ.get("USAGE_SCHEMA", os.path.join(HERE, "..", "..", "schemas", "usage_event.schema.json"))
VECTORS = os.path.join(HERE, "..", "testdata", "vectors.jsonl")
MAX_BYTES = 32768  # one encoded event, as the consumer counts it
MAX_FUTURE = datetime.timedelta(minutes=5)
ATTEMPTS = 5  # publish rounds; every round resends the same bytes, so the same id
CLIENT_ID = "usagemeter-example-python"
# Kafka records do not carry the client id: this optional header names the
# publisher in the consumer's re-route metrics (the publisher to fix).
HEADERS = [("usage.publisher", CLIENT_ID.encode())]


class Refused(Exception):
    """The event breaks the contract; the message names the field and the rule."""


def uuid7():
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits.
    Python 3.14 has uuid.uuid7; this is the same layout for 3.9+."""
    if hasattr(uuid, "uuid7"):
        return str(uuid.uuid7())
    ms = time.time_ns() // 1_000_000
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
    return str(uuid.UUID(int=value))


def _no_duplicates(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise Refused(f"{k}: duplicate member name")
        obj[k] = v
    return obj


def _no_constant(name):
    raise Refused(f"{name} is not JSON")


def _well_formed(value, path="event"):
    """json.loads lets unpaired surrogate escapes (\\ud800) through."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise Refused(f"{path}: unpaired surrogate escape") from e
    elif isinstance(value, dict):
        for k, v in value.items():
            _well_formed(k, path)
            _well_formed(v, k if path == "event" else path)


def _is_integer(checker, instance):
    """JSON Schema's integer is any number without a fraction: 1.0 is one."""
    if isinstance(instance, bool):
        return False
    if isinstance(instance, decimal.Decimal):
        return instance.is_finite() and instance == instance.to_integral_value()
    return isinstance(instance, int)


def _fraction_digits(d):
    """Fractional digits of a Decimal by value (0.1234567890 has 9), exact
    whatever its exponent: no context rounding."""
    sign, digits, exp = d.as_tuple()
    digits = list(digits)
    while exp < 0 and len(digits) > 1 and digits[-1] == 0:
        digits.pop()
        exp += 1
    if all(x == 0 for x in digits):
        return 0
    return max(0, -exp)


class EventValidator:
    """The consumer's contract: the JSON Schema, plus the rules its
    description lists as inexpressible in JSON Schema (size, duplicate names,
    UTF-8, future skew, years 1970-2105, fractional digits of a JSON-number
    quantity, billing_period = the timestamp's UTC month)."""

    def __init__(self, schema_path=SCHEMA):
        with open(schema_path, "rb") as f:
            schema = json.loads(f.read().decode("utf-8"), parse_float=decimal.Decimal)
        types = Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer)
        cls = jsonschema.validators.extend(Draft202012Validator, type_checker=types)
        formats = Draft202012Validator.FORMAT_CHECKER
        if "date-time" not in formats.checkers:
            raise RuntimeError("jsonschema cannot check date-time: pip install rfc3339-validator")
        self._schema = cls(schema, format_checker=formats)

    def validate(self, data, now=None):
        """Returns the event (a dict) from the message bytes, or raises Refused."""
        if len(data) > MAX_BYTES:
            raise Refused(f"event: {len(data)} bytes, more than {MAX_BYTES}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Refused(f"event: not UTF-8 ({e.reason})") from e
        try:
            event = json.loads(text, object_pairs_hook=_no_duplicates, parse_float=decimal.Decimal,
                               parse_constant=_no_constant)
        except json.JSONDecodeError as e:
            raise Refused(f"event: not JSON ({e.msg})") from e
        _well_formed(event)
        err = jsonschema.exceptions.best_match(self._schema.iter_errors(event))
        if err is not None:
            field = "/".join(map(str, err.absolute_path)) or "event"
            raise Refused(f"{field}: {err.message}"[:300])
        ts = datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
        utc = ts.astimezone(datetime.timezone.utc)
        now = now or datetime.datetime.now(datetime.timezone.utc)
        if utc > now + MAX_FUTURE:
            raise Refused(f"timestamp: {event['timestamp']} is more than 5 minutes in the future")
        if not 1970 <= utc.year <= 2105:
            raise Refused(f"timestamp: {event['timestamp']} is outside 1970-2105 in UTC")
        q = event["quantity"]
        if isinstance(q, decimal.Decimal) and _fraction_digits(q) > 9:
            raise Refused(f"quantity: {q} has more than 9 fractional digits")
        period = event.get("billing_period")
        if period is not None and period != utc.strftime("%Y-%m"):
            raise Refused(f"billing_period: {period} is not the UTC month of timestamp ({utc:%Y-%m})")
        return event


def new_event(tenant, feature, quantity):
    """An event with a UUIDv7 id, fixed once: a retry must send the same id."""
    return {
        "id": uuid7(),
        "tenant_id": tenant,
        "feature_type": feature,
        "quantity": quantity,  # an exact decimal string such as "1.5", never a float
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def new_producer():
    return Producer({
        "bootstrap.servers": os.environ.get("KAFKA_BROKERS", "127.0.0.1:19092"),
        "acks": "all",
        "enable.idempotence": True,
        "client.id": CLIENT_ID,
    })


def publish(producer, topic, messages):
    """Publishes (key, value) pairs; the ones whose delivery failed are sent
    again, byte for byte (same id, so counted once), up to ATTEMPTS rounds.
    Returns the messages that still failed."""
    pending = list(messages)
    for attempt in range(1, ATTEMPTS + 1):
        failed = []

        def report(err, msg, m=None):
            if err is not None:
                print(f"delivery failed (attempt {attempt}): {err}", file=sys.stderr)
                failed.append(m)

        for key, value in pending:
            while True:
                try:
                    producer.produce(topic, key=key, value=value, headers=HEADERS,
                                     on_delivery=lambda err, msg, m=(key, value): report(err, msg, m))
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.1)
            producer.poll(0)
        producer.flush()  # waits for every delivery report of this round
        if not failed:
            return []
        pending = failed
        time.sleep(min(2 ** attempt, 10) / 10)
    return pending


def read_jsonl(path):
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                yield rec["name"], base64.b64decode(rec["b64"])


def cmd_check(path):
    validator = EventValidator()
    for name, data in read_jsonl(path):
        try:
            validator.validate(data)
            print(f"{name}\tok")
        except Refused as e:
            print(f"{name}\trefused: {str(e).splitlines()[0]}")
    return 0


def cmd_send(path, topic):
    validator = EventValidator()
    messages, refused = [], 0
    for name, data in read_jsonl(path):
        try:
            event = validator.validate(data)
        except Refused as e:  # never sent: it would only reach the DLQ
            print(f"{name}\trefused: {str(e).splitlines()[0]}")
            refused += 1
            continue
        messages.append((event["tenant_id"].encode("utf-8"), data))
    producer = new_producer()
    failed = publish(producer, topic, messages)
    print(json.dumps({"sent": len(messages) - len(failed), "refused": refused, "failed": len(failed)}))
    return 1 if failed else 0


def cmd_publish(tenant, feature, quantity, topic):
    event = new_event(tenant, feature, quantity)
    data = json.dumps(event, separators=(",", ":")).encode("utf-8")
    try:
        EventValidator().validate(data)
    except Refused as e:
        print(f"not published: {e}", file=sys.stderr)
        return 2
    failed = publish(new_producer(), topic, [(tenant.encode("utf-8"), data)])
    if failed:
        print(f"not published after {ATTEMPTS} attempts: {event['id']}", file=sys.stderr)
        return 1
    print(f"published {event['id']} to {topic}")
    return 0


def main(argv):
    topic = os.environ.get("USAGE_TOPIC", "usage.events")
    try:
        if len(argv) >= 1 and argv[0] == "check" and len(argv) <= 2:
            return cmd_check(argv[1] if len(argv) == 2 else VECTORS)
        if len(argv) == 2 and argv[0] == "send":
            return cmd_send(argv[1], topic)
        if len(argv) == 3:
            return cmd_publish(argv[0], argv[1], argv[2], topic)
    except (KafkaException, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Validates messages against a JSON Schema with Python's jsonschema (draft
2020-12, format checking on): an implementation independent of the Go
pipeline, used by schemas/differential_test.go (and usable by hand).

    check_schema_py.py SCHEMA.json CORPUS.jsonl

CORPUS has one JSON object per line, {"b64": "<message bytes, base64>"}.
For each line it prints "ok" or "refuse: <why>". Parsing is strict, as a
publisher's JSON library should be: UTF-8 only, no unpaired surrogates,
no duplicate member names, no NaN/Infinity, numbers read exactly (Decimal).
"""
import base64
import decimal
import json
import numbers
import sys

import jsonschema
from jsonschema import Draft202012Validator


class Refused(Exception):
    pass


def no_duplicates(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise Refused(f"duplicate member name {k!r}")
        obj[k] = v
    return obj


def no_constant(name):
    raise Refused(f"{name} is not JSON")


def check_text(value):
    """Refuses unpaired surrogates, which json.loads lets through."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise Refused("unpaired surrogate escape") from e
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k)
            check_text(v)
    elif isinstance(value, list):
        for v in value:
            check_text(v)


def parse(data):
    try:
        text = data.decode("utf-8")  # strict: invalid UTF-8 is refused
    except UnicodeDecodeError as e:
        raise Refused(f"not UTF-8: {e}") from e
    try:
        value = json.loads(text, object_pairs_hook=no_duplicates, parse_float=decimal.Decimal,
                           parse_constant=no_constant)
    except json.JSONDecodeError as e:
        raise Refused(f"not JSON: {e}") from e
    check_text(value)
    return value


def is_integer(checker, instance):
    """JSON Schema's integer is a number with no fractional part (1.0 is
    one); parse_float=Decimal makes 1.0 a Decimal, which the default
    checker (int, or float.is_integer) would not count."""
    if isinstance(instance, bool):
        return False
    if isinstance(instance, int):
        return True
    if isinstance(instance, decimal.Decimal):
        return instance.is_finite() and instance == instance.to_integral_value()
    return isinstance(instance, numbers.Number) and float(instance).is_integer()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1], "rb") as f:
        schema = json.loads(f.read().decode("utf-8"), parse_float=decimal.Decimal)
    Draft202012Validator.check_schema(schema)
    formats = Draft202012Validator.FORMAT_CHECKER
    if "date-time" not in formats.checkers:
        sys.exit("jsonschema cannot check format date-time: install rfc3339-validator (scripts/deps.sh does)")
    types = Draft202012Validator.TYPE_CHECKER.redefine("integer", is_integer)
    cls = jsonschema.validators.extend(Draft202012Validator, type_checker=types)
    validator = cls(schema, format_checker=formats)
    out = []
    with open(sys.argv[2], "rb") as f:
        for line in f:
            if not line.strip():
                continue
            data = base64.b64decode(json.loads(line)["b64"])
            try:
                instance = parse(data)
                err = jsonschema.exceptions.best_match(validator.iter_errors(instance))
                if err is not None:
                    raise Refused(f"{'/'.join(map(str, err.absolute_path))}: {err.message}"[:200])
                out.append("ok")
            except Refused as e:
                out.append("refuse: " + str(e).replace("\n", " "))
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()

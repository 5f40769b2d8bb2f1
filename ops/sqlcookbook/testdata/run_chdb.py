#!/usr/bin/env python3
"""Runs the SQL cookbook on a current ClickHouse engine (chdb), for ops/sqlcookbook.

Reads a JSON spec on stdin: {"migrations": [sql, ...], "inserts": [{"table": t, "rows":
[{col: value}, ...]}], "queries": {name: sql}}. Creates a fresh database, applies the
migrations, inserts the rows (JSONEachRow), runs each query (JSONCompact) and prints
{"engine": version, "results": {name: [[cell, ...], ...]}} on stdout. A failing statement
exits 1 naming it. Run with .cache/venv/bin/python (scripts/deps.sh chdb).
"""

import json
import sys
import tempfile


def main():
    spec = json.load(sys.stdin)
    from chdb import session as chs

    out = {}
    with tempfile.TemporaryDirectory(prefix="chdb-cookbook-") as tmp:
        sess = chs.Session(tmp)
        try:
            sess.query("CREATE DATABASE IF NOT EXISTS usage")
            sess.query("USE usage")
            out["engine"] = str(sess.query("SELECT version()", "TSV")).strip()
            for stmt in spec["migrations"]:
                sess.query(stmt)
            for ins in spec["inserts"]:
                if ins["rows"]:
                    body = "\n".join(json.dumps(r) for r in ins["rows"])
                    sess.query(f"INSERT INTO {ins['table']} FORMAT JSONEachRow\n{body}")
            results = {}
            for name, sql in spec["queries"].items():
                try:
                    res = sess.query(sql, "JSONCompact")
                except Exception as e:  # chdb raises on SQL errors
                    print(f"query {name} failed on chdb: {e}\n{sql}", file=sys.stderr)
                    return 1
                text = str(res).strip()
                results[name] = json.loads(text)["data"] if text else []
            out["results"] = results
        finally:
            sess.close()
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

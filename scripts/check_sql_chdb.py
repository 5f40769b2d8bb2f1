#!/usr/bin/env python3
"""Check ClickHouse SQL files against a current ClickHouse engine (chdb, embedded).

Usage: .cache/venv/bin/python scripts/check_sql_chdb.py [-v] FILE_OR_DIR...

Directories expand to their *.sql files in name order. All statements of all files
run in file order in one throw-away chdb session and database, so later files may
use tables created by earlier ones. `--` and `/* */` comments are stripped and
statements are split on `;` outside quotes. Exits 1 naming the file, line and
statement of the first failure. (scripts/deps.sh chdb installs the venv.)

--parse-only parses each statement with the engine's own parser (formatQuery) instead
of running it: for the cluster schema (schemas/migrations Variant), whose Replicated*
and Distributed engines need ZooKeeper, macros and a cluster an embedded engine lacks.
"""

import argparse
import os
import sys
import tempfile


def split_statements(text):
    """Yields (line_number, statement) with comments removed, split on unquoted ';'."""
    out = []
    start_line = None
    line = 1
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"`":
            # Copy a quoted literal/identifier verbatim (backslash escapes, doubled quotes).
            j = i + 1
            while j < n:
                if text[j] == "\\":
                    j += 2
                    continue
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            chunk = text[i : j + 1]
            if start_line is None:
                start_line = line
            out.append(chunk)
            line += chunk.count("\n")
            i = j + 1
            continue
        if text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            line += text.count("\n", i, j)
            out.append(" ")
            i = j
            continue
        if c == ";":
            stmt = "".join(out).strip()
            if stmt:
                yield start_line, stmt
            out, start_line = [], None
            i += 1
            continue
        if c == "\n":
            line += 1
        elif not c.isspace() and start_line is None:
            start_line = line
        out.append(c)
        i += 1
    stmt = "".join(out).strip()
    if stmt:
        yield start_line, stmt


def sql_files(paths):
    for p in paths:
        if os.path.isdir(p):
            names = sorted(f for f in os.listdir(p) if f.endswith(".sql"))
            if not names:
                sys.exit(f"check_sql_chdb: no .sql files in {p}")
            for f in names:
                yield os.path.join(p, f)
        elif os.path.isfile(p):
            yield p
        else:
            sys.exit(f"check_sql_chdb: {p}: no such file or directory")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help=".sql files or directories")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each statement as it runs")
    ap.add_argument("--parse-only", action="store_true", help="parse with formatQuery instead of running")
    args = ap.parse_args()

    try:
        import chdb
        from chdb import session as chs
    except ImportError:
        sys.exit("check_sql_chdb: chdb is not installed; run scripts/deps.sh chdb and use .cache/venv/bin/python")

    files = list(sql_files(args.paths))
    count = 0
    with tempfile.TemporaryDirectory(prefix="chdb-check-") as tmp:
        sess = chs.Session(tmp)
        try:
            # A fresh database so unqualified names never touch chdb's defaults.
            sess.query("CREATE DATABASE IF NOT EXISTS sqlcheck")
            sess.query("USE sqlcheck")
            engine = str(sess.query("SELECT version()", "TSV")).strip()
            for path in files:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
                for line, stmt in split_statements(text):
                    if args.verbose:
                        print(f"{path}:{line}: {stmt.splitlines()[0][:100]}")
                    try:
                        if args.parse_only:
                            quoted = stmt.replace("\\", "\\\\").replace("'", "\\'")
                            sess.query(f"SELECT formatQuery('{quoted}')")
                        else:
                            sess.query(stmt)
                    except Exception as e:  # chdb raises ChdbError (a RuntimeError) on SQL errors
                        print(f"FAIL {path}:{line}\n--- statement ---\n{stmt}\n--- error ---\n{e}", file=sys.stderr)
                        return 1
                    count += 1
        finally:
            sess.close()
    print(f"ok: {count} statements in {len(files)} files (chdb {chdb.__version__}, ClickHouse {engine})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

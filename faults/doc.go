// Package faults is the fault suite of the pipeline: its tests build the
// real usage-consumer and usage-aggregator binaries, run them against a
// private Apache Kafka broker and a private ClickHouse server, inject the
// faults of issue 6 (SIGKILLs, a second member, engine restarts, keyless
// and misrouted publishers, producer retries, an overflowing quantity)
// while traffic flows, and end every case with the exact-totals check of
// the raw table, the four aggregate tables and the quota state against a
// count made independently in Go. See README.md. It has no exported API.
package faults

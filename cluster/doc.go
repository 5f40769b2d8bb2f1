// Package cluster holds only tests: the pipeline "beyond one machine", on
// a 3-broker Kafka KRaft cluster and on 2 replicated ClickHouse servers with
// ZooKeeper, all started on loopback by scripts/cluster.sh. The services
// run as their real binaries (testenv.BuildCommands); totals are checked
// against an independent count of what the topic holds.
package cluster

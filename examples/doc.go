// Package examples holds no library code: it is the Go test module that
// installs nothing itself (scripts/deps.sh does) and runs the publishers in
// python/, node/ and java/ against the shared test vectors and against the
// real broker, consumer and aggregator. See README.md.
package examples

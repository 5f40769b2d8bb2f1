// Package e2e holds billing-sync's end-to-end tests (e2e_test.go): the real
// usage-consumer, usage-aggregator and usage-billing-sync binaries, built
// from the working tree, against the shared Kafka broker and ClickHouse
// server (a private topic set and database per run), with usage published
// through the Go SDK and a stateful fake Stripe served over loopback HTTP
// that forwards every accepted write to stripe-mock and holds each of its
// answers to Stripe's OpenAPI spec. It has no non-test code.
package e2e

// Package scenario holds billing-sync's scenario suite: months of
// simulated time in seconds, with one controllable clock shared by the
// syncer and the fake Stripe (stripefake.Clock), usage in a private
// ClickHouse database, and the fake's subscription model (anchored
// periods, invoices that finalize after their grace, statuses, item
// changes). Every scenario ends with the fake's invoiced quantities equal
// to ClickHouse's totals to the unit, or a reported, named difference,
// and checks totals right after Sync passes. harness_test.go is the
// shared world; add scenarios beside periods_test.go. It has no non-test
// code.
package scenario

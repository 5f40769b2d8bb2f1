// Package firsthour holds tests only: a new user's first hour, run as they
// would run it. `make run` is started for real and stopped with SIGTERM and
// SIGINT (nothing it started may be left), its printed drift command must
// read the Stripe that was billed, and the README's kcat one-liner and Go
// snippet are executed and compiled as written. See README.md.
package firsthour

// Package api holds usage-api's contract: the OpenAPI 3.1 description that
// the server's tests validate every response against. The service is in
// server and cmd/usage-api.
package api

import _ "embed"

//go:embed openapi.yaml
var openAPI []byte

// OpenAPI returns openapi.yaml.
func OpenAPI() []byte { return openAPI }

-- wrk script for usage-api POST /v1/check (scripts/bench.sh): 12 demo
-- tenants, the demo admin key, and one request per connection every 2 ms,
-- so 28 connections offer at most 14k requests/s (about 10k once each
-- request's own latency is added).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer demo-admin-key"
local n = 0
function request()
  n = n + 1
  return wrk.format(nil, "/v1/check", nil,
    string.format('{"tenant_id":"tenant-%02d","feature_type":"api_calls","quantity":"1"}', n % 12 + 1))
end
function delay()
  return 2
end

-- wrk script for usage-api POST /v1/check (api/bench/wrkbench, scripts/bench.sh):
-- 12 demo tenants, the demo admin key, and one request per connection every
-- 2 ms, so 28 connections offer at most 14k requests/s (about 10k once each
-- request's own latency is added). The same script drives the bare net/http
-- floor (wrkbench floor), so both are paced identically.
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
-- One line of JSON for wrkbench: latencies in microseconds, as wrk keeps them.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end

-- wrk script for usage-api POST /v1/check/batch (api/bench/wrkbench): the
-- checks of check.lua, 10 per call, and one call per connection every
-- 20 ms, so 28 connections offer the same checks per second as check.lua
-- (at most 14k) in a tenth of the requests.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer demo-admin-key"
local n = 0
function request()
  local items = {}
  for i = 1, 10 do
    n = n + 1
    items[i] = string.format('{"tenant_id":"tenant-%02d","feature_type":"api_calls","quantity":"1"}', n % 12 + 1)
  end
  return wrk.format(nil, "/v1/check/batch", nil, '{"checks":[' .. table.concat(items, ",") .. ']}')
end
function delay()
  return 20
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

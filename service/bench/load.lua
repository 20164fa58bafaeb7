-- wrk script for bench.py. By default it posts payments (POST /v1/payments,
-- a fresh Idempotency-Key per request), each for a merchant picked at random
-- from the API keys in BENCH_API_KEYS (comma-separated), as pgbench's TPC-B
-- picks a random branch; with BENCH_GET_PATH set it reads that path instead.
-- BENCH_DELAY_MS paces each connection: it waits that long before each
-- request (a merchant's normal traffic, below its rate limit). Prints one
-- JSON line at the end for bench.py to parse; 429s are counted apart too.

local threads = {}
local api_keys = {}
for key in string.gmatch(os.getenv("BENCH_API_KEYS") or "", "[^,]+") do
  table.insert(api_keys, key)
end
local get_path = os.getenv("BENCH_GET_PATH")
local expected = get_path and 200 or 201
local run = os.getenv("BENCH_RUN_ID") or tostring(os.time())
local body = '{"amount": 100, "currency": "NGN"}'
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if delay_ms then
  function delay()
    return delay_ms
  end
end

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(_)
  math.randomseed(os.time() * 100 + thread_id)
  sent = 0
  unexpected = 0
  last_unexpected = 0
  limited = 0
end

function request()
  sent = sent + 1
  local headers = {
    ["Authorization"] = "Bearer " .. api_keys[math.random(#api_keys)],
  }
  if get_path then
    return wrk.format("GET", get_path, headers)
  end
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = run .. "-" .. thread_id .. "-" .. sent
  return wrk.format("POST", "/v1/payments", headers, body)
end

function response(status, _, _)
  if status == 429 then
    limited = limited + 1
  end
  if status ~= expected then
    unexpected = unexpected + 1
    last_unexpected = status
  end
end

function done(summary, latency, _)
  local errors = summary.errors
  local unexpected_total = 0
  local limited_total = 0
  local last_status = 0
  for _, thread in ipairs(threads) do
    unexpected_total = unexpected_total + thread:get("unexpected")
    limited_total = limited_total + thread:get("limited")
    if thread:get("last_unexpected") ~= 0 then
      last_status = thread:get("last_unexpected")
    end
  end
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "unexpected_status": %d, "last_unexpected": %d,'
      .. ' "limited": %d, "socket_errors": %d, "p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, unexpected_total, last_status, limited_total,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end

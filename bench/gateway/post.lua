-- wrk script: POST a small chat completion and report latency percentiles.
--
-- Environment:
--   BENCH_KEY    bearer token sent as "Authorization: Bearer <key>" (default sk-bench)
--   BENCH_MODEL  model name in the request body (default bench-model)
--
-- done() prints one line that starts with "BENCH_RESULT " followed by a JSON object:
--   requests, duration_us, rps, p50_us, p90_us, p99_us, mean_us, max_us, non2xx,
--   connect_errors, read_errors, write_errors, timeouts.
-- non2xx counts every response whose status is not 2xx (counted per thread in response()).

local key = os.getenv("BENCH_KEY") or "sk-bench"
local model = os.getenv("BENCH_MODEL") or "bench-model"

wrk.method = "POST"
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"hello"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  first_bad = ""
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    if non2xx == 0 then
      first_bad = tostring(status) .. " " .. string.sub(body or "", 1, 200)
    end
    non2xx = non2xx + 1
  end
end

local function jstr(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local bad = 0
  local sample = ""
  for _, t in ipairs(threads) do
    local n = t:get("non2xx") or 0
    if n > 0 and sample == "" then
      sample = t:get("first_bad") or ""
    end
    bad = bad + n
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"rps":%.2f,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,'
      .. '"non2xx":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,'
      .. '"timeouts":%d,"first_non2xx":%s}\n',
    summary.requests, summary.duration, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max,
    bad, e.connect, e.read, e.write, e.timeout, jstr(sample)))
end

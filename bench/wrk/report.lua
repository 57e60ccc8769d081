-- Shared by warm.lua and fresh.lua (loaded with dofile): the machine-readable result line the harness parses.
-- One line on stdout, `SGBENCH_RESULT {json}`, printed by done(): requests, the errors wrk counts (socket
-- connect/read/write/timeout, and `status` = responses with status >= 400), RPS, latency percentiles in
-- microseconds, and the token-pool counters each thread publishes (`consumed`, `wraps`; 0 for warm runs).
local report = {}
local threads = {}

function report.setup(thread)
   threads[#threads + 1] = thread
end

local function thread_sum(name)
   local total = 0
   for _, thread in ipairs(threads) do
      total = total + (tonumber(thread:get(name)) or 0)
   end
   return total
end

function report.done(summary, latency, requests)
   local seconds = summary.duration / 1e6
   local errors = summary.errors
   io.write(string.format(
      'SGBENCH_RESULT {"requests": %d, "duration_s": %.6f, "rps": %.3f, "bytes": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}, '
         .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}, '
         .. '"consumed": %d, "wraps": %d}\n',
      summary.requests, seconds, summary.requests / seconds, summary.bytes,
      errors.connect, errors.read, errors.write, errors.timeout, errors.status,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      thread_sum("consumed"), thread_sum("wraps")))
end

return report

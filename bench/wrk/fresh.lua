-- Scenarios `fresh-es384` / `fresh-rs256`: a different token on every request, read from a pool file (one
-- token per line), starting at a given line so a measured run never reuses the tokens its warm-up sent.
-- Requests are formatted once in init() (before wrk's clock starts), so request() is just a table lookup.
-- Each thread publishes `consumed` (requests handed to wrk) and `wraps` (times the pool ran out and started
-- over: from then on tokens repeat and a cache may hit, so the harness flags such a run).
-- Only the first LIMIT lines are read (all when LIMIT is absent or 0).
-- Usage: wrk -t1 -c32 -d10s -s bench/wrk/fresh.lua URL -- POOL_FILE START_LINE [LIMIT]
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(here .. "report.lua")

setup = report.setup
done = report.done

local requests = {}
local count = 0
local index = 0

function init(args)
   local path = args[1]
   local start = tonumber(args[2]) or 0
   local limit = tonumber(args[3]) or 0
   for token in io.lines(path) do
      if limit > 0 and count >= limit then
         break
      end
      if token ~= "" then
         count = count + 1
         requests[count] = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. token })
      end
   end
   if count == 0 then
      error("fresh.lua: no tokens in " .. path)
   end
   index = start % count
   consumed = 0
   wraps = math.floor(start / count)
end

function request()
   index = index + 1
   if index > count then
      index = 1
      wraps = wraps + 1
   end
   consumed = consumed + 1
   return requests[index]
end

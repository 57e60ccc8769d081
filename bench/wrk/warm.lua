-- Scenario `warm` (and `rs256`): the same request on every call, `Authorization: Bearer <token>` from the
-- first script argument (none when it is empty). No request() function, so wrk sends a prebuilt request and
-- the client costs as little as wrk allows.
-- Usage: wrk -t1 -c32 -d10s -s bench/wrk/warm.lua URL -- TOKEN
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(here .. "report.lua")

setup = report.setup
done = report.done

function init(args)
   local token = args[1]
   if token ~= nil and token ~= "" then
      wrk.headers["Authorization"] = "Bearer " .. token
   end
   consumed = 0
   wraps = 0
end

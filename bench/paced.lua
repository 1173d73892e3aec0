-- wrk script for bench/throughput.py --pace MS: each connection waits MS milliseconds after
-- an answer before it sends its next request, so every target is offered about the same rate
-- (connections x 1000 / (MS + latency) req/s) instead of as much as it can take.
local pause = 0

function init(args)
  pause = tonumber(args[1]) or 0
end

function delay()
  return pause
end

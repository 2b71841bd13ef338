-- wrk script: POST /v1/score with the transactions in WRK_BODY. With WRK_MISS=1 each
-- request changes the amounts (new model inputs: cache misses); otherwise every request
-- repeats the same body (cache hits after the first).
local file = io.open(os.getenv("WRK_BODY"))
local body = file:read("*a")
file:close()
local miss = os.getenv("WRK_MISS") == "1"
local n = 0
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
wrk.method = "POST"
wrk.path = "/v1/score"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  if miss then
    -- A new amount per request and thread, distinct even as float32 model inputs.
    local amount = string.format("%d.%d", (n % 100000) + 1, id or 0)
    local changed = body:gsub('"amt":%s*[%d%.]+', '"amt": ' .. amount)
    return wrk.format(nil, nil, nil, changed)
  end
  return wrk.format(nil, nil, nil, body)
end

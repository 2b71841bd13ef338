-- wrk script: GET /v1/transactions/{id} over ids read from the file in WRK_IDS.
local ids = {}
local file = io.open(os.getenv("WRK_IDS") or "ids.txt")
for line in file:lines() do ids[#ids + 1] = line end
file:close()
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/v1/transactions/" .. ids[(n % #ids) + 1])
end

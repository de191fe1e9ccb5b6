-- wrk script: POSTs one JSON body with extra headers, rotating over a list of bearer tokens, and
-- prints a JSON summary line at the end (errors.status counts replies with status >= 400).
-- Usage: wrk ... -s bench/post.lua URL -- BODY_FILE TOKENS_FILE [HEADER ...]
-- TOKENS_FILE holds one token per line ("-" for none); each HEADER is "name: value".

local requests = {}
local n = 0
local i = 0

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function init(args)
  local body = slurp(args[1])
  local tokens = {}
  if args[2] ~= "-" then
    for line in io.lines(args[2]) do
      if line ~= "" then tokens[#tokens + 1] = line end
    end
  end
  local headers = { ["Content-Type"] = "application/json" }
  for k = 3, #args do
    local name, value = args[k]:match("^([^:]+):%s*(.*)$")
    headers[name] = value
  end
  if #tokens == 0 then tokens[1] = false end
  for _, t in ipairs(tokens) do
    if t then headers["Authorization"] = "Bearer " .. t end
    requests[#requests + 1] = wrk.format("POST", nil, headers, body)
  end
  n = #requests
  -- Threads start at different offsets so that they do not walk the tokens in step.
  i = math.random(n) - 1
end

function request()
  i = (i % n) + 1
  return requests[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  -- The latency at every whole percentile (1 to 99, then 99.9): loads run side by side (one per
  -- router process) are merged from these.
  local pcts = {}
  for p = 1, 99 do pcts[#pcts + 1] = string.format("%d", latency:percentile(p)) end
  pcts[#pcts + 1] = string.format("%d", latency:percentile(99.9))
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"pcts_us":[%s]}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout, table.concat(pcts, ",")))
end

-- wrk script for make bench (benches/perf/wrk.rs): each wrk thread drives one connection (wrk runs with as
-- many threads as connections) as a client of its own, with its own bearer token and path, taken from line N
-- of the file named by BENCH_CLIENTS ("<token> <path>" per line). BENCH_METHOD (default GET) and BENCH_BODY
-- (JSON, optional) are the same for every request, so each thread formats its request once.

local clients = nil
local next_client = 1

function setup(thread)
  if clients == nil then
    clients = {}
    for line in io.lines(os.getenv("BENCH_CLIENTS")) do
      local token, path = line:match("^(%S+)%s+(%S+)$")
      table.insert(clients, { token = token, path = path })
    end
  end
  local client = clients[next_client]
  if client == nil then
    error("BENCH_CLIENTS has fewer lines than wrk has threads")
  end
  thread:set("token", client.token)
  thread:set("path", client.path)
  next_client = next_client + 1
end

function init(args)
  local body = os.getenv("BENCH_BODY")
  if body == "" then
    body = nil
  end
  local headers = { ["Authorization"] = "Bearer " .. token }
  if body ~= nil then
    headers["Content-Type"] = "application/json"
  end
  formatted = wrk.format(os.getenv("BENCH_METHOD") or "GET", path, headers, body)
end

function request()
  return formatted
end

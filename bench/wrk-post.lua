-- wrk script: POSTs the sample payloads with a fresh conversation_id on every request.
-- Usage: wrk -t2 -c64 -d10s --latency -s bench/wrk-post.lua "http://127.0.0.1:8080/v1/notifications?token=TOKEN"
local bodies = {}
local dir = os.getenv("PAYLOADS") or "examples/payloads"
for _, name in ipairs({"abandoned-long-wait.json", "outbound-no-answer.json", "quirky-types.json", "udesk-example.json"}) do
  local f = assert(io.open(dir .. "/" .. name, "r"))
  bodies[#bodies + 1] = f:read("*a")
  f:close()
end
local counter = 0
local thread_id = 0
setup = function(thread)
  thread:set("thread_id", thread_id)
  thread_id = thread_id + 1
end
request = function()
  counter = counter + 1
  local body = bodies[(counter % #bodies) + 1]
  local id = string.format("%d%d%09d", os.time(), thread_id, counter)
  body = body:gsub('"conversation_id":%s*"?[0-9]+"?', '"conversation_id":' .. id, 1)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

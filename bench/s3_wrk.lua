-- wrk driver for bench/s3.py: presigned S3 GETs and PUTs, one URL per line in a file.
--
--   wrk -t T -c C -d D --latency -s bench/s3_wrk.lua http://HOST:PORT \
--       -- MODE THREADS GET_FILE PUT_FILE BODY_BYTES PUT_EVERY [FRESH]
--
-- MODE      get | put | mixed
-- THREADS   the -t value again (a thread cannot see how many siblings it has)
-- GET_FILE  presigned GET paths (path?query, no host), or "-" for none
-- PUT_FILE  presigned PUT paths over distinct keys, or "-" for none
-- BODY_BYTES  PUT body size; the body is one fixed string, so Content-Length matches it
-- PUT_EVERY   mixed mode: every PUT_EVERY-th request of a thread is a PUT
-- FRESH     1: the GET file holds a distinct signature per request; a thread that runs
--           out of GET URLs (and so sends one again) counts it in `wraps` too
--
-- Thread k (1-based) takes lines k, k+T, k+2T, ... so no two threads PUT the same key.
-- GET requests are formatted once in init (wrk sends the same bytes each time round);
-- PUTs are formatted per request (pre-formatting 100 KiB bodies per key would cost GBs).
-- A thread that runs out of PUT keys starts again at its first (an overwrite) and counts
-- it in `wraps`, which done() reports. No response() callback: defining one makes wrk
-- hand every response to Lua, which would make the generator the bottleneck.
-- The Host header comes from the URL on the command line, and it must equal the host the
-- URLs were signed for (presigned SigV4 signs `host`).

local threads = {}
local next_id = 1

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

local function read_lines(path, id, nthreads)
   local lines = {}
   if path == "-" then
      return lines
   end
   local n = 0
   for line in io.lines(path) do
      if n % nthreads == id - 1 and #line > 0 then
         table.insert(lines, line)
      end
      n = n + 1
   end
   return lines
end

function init(args)
   mode = args[1]
   local nthreads = tonumber(args[2])
   local body_bytes = tonumber(args[5])
   put_every = tonumber(args[6])
   fresh_gets = args[7] == "1"
   gets = {}
   for _, path in ipairs(read_lines(args[3], id, nthreads)) do
      table.insert(gets, wrk.format("GET", path))
   end
   puts = read_lines(args[4], id, nthreads)
   body = string.rep("p", body_bytes)
   if (mode ~= "put" and #gets == 0) or (mode ~= "get" and #puts == 0) then
      error("s3_wrk.lua: no URLs for mode " .. mode .. " in thread " .. id)
   end
   get_index, put_index, sent, wraps = 0, 0, 0, 0
end

local function next_get()
   get_index = get_index % #gets + 1
   if fresh_gets and get_index == 1 and sent > 1 then
      wraps = wraps + 1
   end
   return gets[get_index]
end

local function next_put()
   put_index = put_index + 1
   if put_index > #puts then
      put_index = 1
      wraps = wraps + 1
   end
   return wrk.format("PUT", puts[put_index], nil, body)
end

function request()
   sent = sent + 1
   if mode == "get" then
      return next_get()
   elseif mode == "put" then
      return next_put()
   elseif sent % put_every == 0 then
      return next_put()
   end
   return next_get()
end

function done(summary, latency, requests)
   local total_wraps = 0
   for _, thread in ipairs(threads) do
      total_wraps = total_wraps + (thread:get("wraps") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
      '"errors_connect": %d, "errors_read": %d, "errors_write": %d, ' ..
      '"errors_status": %d, "errors_timeout": %d, "wraps": %d, ' ..
      '"latency_us_mean": %.1f, "latency_us_max": %d, "latency_us_p50": %d, ' ..
      '"latency_us_p90": %d, "latency_us_p99": %d, "latency_us_p999": %d}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout, total_wraps,
      latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)))
end

"""The Lua scripts of the Redis Streams backend, and the reader of ``READ``'s reply.

``NACK`` and ``REPLAY`` make a retry or a replay one atomic step; ``PROMOTE`` moves due
retries into the retry stream. ``APPEND`` and ``READ`` exist for speed: a pure-Python client
(redis-py without hiredis) spends most of its time per message packing commands and parsing
replies, so ``APPEND`` adds a whole batch with one command and one reply, and ``READ`` is
``XREADGROUP`` (without ``BLOCK``) on both streams of a group with its reply flattened to two
strings: the entry ids, attempts and lengths, then every message's data back to back. Parsing
a protocol element costs redis-py several Python calls (a line read, a length, an exact read)
whichever its size, about as much as the rest of a delivery; slicing the data apart costs a
copy. ``parse_batch`` does that. The consumer reads with ``READ`` while a backlog lasts and
with the ordinary blocking ``XREADGROUP`` once it has caught up.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["APPEND", "NACK", "PROMOTE", "READ", "REPLAY", "Entry", "parse_batch"]

#: (0 for the topic's stream or 1 for the group's retry stream, entry id, fields, deliveries)
Entry = tuple[int, bytes, Mapping[bytes, bytes], int]

# nack: park the message in the delay set (scored by the server's clock) and ack the original,
# in one step. KEYS: delay set, source stream. ARGV: group, entry id, delay ms, member, 1 to
# also delete the entry (retry streams belong to one group: nobody else needs it).
NACK = """
local t = redis.call('TIME')
local due = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], due, ARGV[4])
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
if ARGV[5] == '1' then redis.call('XDEL', KEYS[2], ARGV[2]) end
return due
"""

# Move due members of the delay set to the retry stream. KEYS: delay set, retry stream.
# ARGV: how many at most. Returns {moved, ms until the next one is due or -1}.
PROMOTE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  local a = string.find(m, '|', 1, true)
  local b = string.find(m, '|', a + 1, true)
  redis.call('XADD', KEYS[2], '*', 'd', string.sub(m, b + 1), 'a', string.sub(m, 1, a - 1))
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then return {#due, tonumber(nxt[2]) - now} end
return {#due, -1}
"""

# Replay one dead letter: re-publish it only if this call removed it from the DLQ, so two
# replays running at once publish it once. KEYS: DLQ stream, topic stream. ARGV: DLQ entry
# id, data, maxlen (0: none).
REPLAY = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[3] == '0' then
  redis.call('XADD', KEYS[2], '*', 'd', ARGV[2])
else
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'd', ARGV[2])
end
return 1
"""

# XADD of every ARGV after the first to the stream KEYS[1] (field d); ARGV[1] is the approximate
# MAXLEN, 0 for none. One command and one reply for a whole batch: a pipeline of XADDs costs a
# pure-Python client a command to pack and a reply to parse per message.
APPEND = """
local maxlen = tonumber(ARGV[1])
for i = 2, #ARGV do
  if maxlen > 0 then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'd', ARGV[i])
  else
    redis.call('XADD', KEYS[1], '*', 'd', ARGV[i])
  end
end
return #ARGV - 1
"""

# XREADGROUP on the topic's and the retry stream (KEYS), flattened: the reply is
# {"<0|1> <entry id> <attempt field or 0> <data length> ...", all the data concatenated}.
# ARGV: group, consumer, count.
READ = """
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
                         'STREAMS', KEYS[1], KEYS[2], '>', '>')
if not reply then return {} end
local meta, out = {}, {}
for _, stream in ipairs(reply) do
  local source = stream[1] == KEYS[1] and '0' or '1'
  for _, entry in ipairs(stream[2]) do
    local fields, data, attempt = entry[2], '', '0'
    for i = 1, #fields, 2 do
      if fields[i] == 'd' then data = fields[i + 1]
      elseif fields[i] == 'a' then attempt = fields[i + 1] end
    end
    meta[#meta + 1] = source .. ' ' .. entry[1] .. ' ' .. attempt .. ' ' .. #data
    out[#out + 1] = data
  end
end
if #meta == 0 then return {} end
return {table.concat(meta, ' '), table.concat(out)}
"""


def parse_batch(reply: list[bytes]) -> list[Entry]:
    """The entries of a ``READ`` reply, each a first delivery (``XREADGROUP >``)."""
    if len(reply) < 2:
        return []
    meta = reply[0].split(b" ")
    blob = reply[1]
    entries: list[Entry] = []
    add = entries.append
    at = 0
    for i in range(0, len(meta), 4):
        end = at + int(meta[i + 3])
        add((1 if meta[i] == b"1" else 0, meta[i + 1], {b"d": blob[at:end], b"a": meta[i + 2]}, 1))
        at = end
    if at != len(blob):
        raise ValueError(f"READ reply: {len(blob) - at} bytes of data past the last entry")
    return entries

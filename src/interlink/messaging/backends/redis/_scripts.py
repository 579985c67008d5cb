"""The Lua scripts of the Redis Streams backend, and the reader of ``READ``'s reply.

``NACK`` and ``REPLAY`` make a retry or a replay one atomic step; ``PROMOTE`` moves due
retries into the retry stream. ``APPEND`` and ``READ`` exist for speed: a pure-Python client
(redis-py without hiredis) spends most of its time per message packing commands and parsing
replies, so ``APPEND`` adds a whole batch with one command and one reply, and ``READ`` is
``XREADGROUP`` (without ``BLOCK``) on both streams of a group with its reply flattened to two
strings: the entry ids and attempts, then every message's data in one MessagePack array.
Parsing a protocol element costs redis-py several Python calls (a line read, a length, an
exact read) whichever its size, about as much as the rest of a delivery; reading a length
prefix and slicing costs a fraction of that. ``parse_batch`` does it. The consumer reads with
``READ`` while a backlog lasts and with the ordinary blocking ``XREADGROUP`` once it has caught
up.
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
# {"<0|1> <entry id> <attempt field or 0> ...", every data in one MessagePack array}.
# cmsgpack.pack writes into one growing buffer; table.concat would merge the long strings pairwise
# into ever longer intermediate ones, and took the server longer than the read itself.
# ARGV: group, consumer, count.
READ = """
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
                         'STREAMS', KEYS[1], KEYS[2], '>', '>')
if not reply then return {} end
local meta, out, n, k = {}, {}, 0, 0
for _, stream in ipairs(reply) do
  local source = stream[1] == KEYS[1] and '0' or '1'
  local entries = stream[2]
  for j = 1, #entries do
    local entry = entries[j]
    local fields, data, attempt = entry[2], '', '0'
    for i = 1, #fields, 2 do
      if fields[i] == 'd' then data = fields[i + 1]
      elseif fields[i] == 'a' then attempt = fields[i + 1] end
    end
    meta[n + 1], meta[n + 2], meta[n + 3] = source, entry[1], attempt
    n = n + 3
    k = k + 1
    out[k] = data
  end
end
if k == 0 then return {} end
return {table.concat(meta, ' '), cmsgpack.pack(out)}
"""


def _strings(packed: bytes) -> list[bytes]:
    """The strings of a MessagePack array of strings, as ``cmsgpack.pack`` writes one."""
    kind = packed[0]
    if kind & 0xF0 == 0x90:  # fixarray
        count, at = kind & 0x0F, 1
    elif kind == 0xDC:  # array 16
        count, at = int.from_bytes(packed[1:3], "big"), 3
    elif kind == 0xDD:  # array 32
        count, at = int.from_bytes(packed[1:5], "big"), 5
    else:
        raise ValueError(f"READ reply: not a MessagePack array (0x{kind:02x})")
    found: list[bytes] = []
    add = found.append
    for _ in range(count):
        kind = packed[at]
        if kind == 0xDA:  # str 16: a message of 256 bytes to 64 KiB, the usual
            size = int.from_bytes(packed[at + 1 : at + 3], "big")
            at += 3
        elif kind & 0xE0 == 0xA0:  # fixstr
            size = kind & 0x1F
            at += 1
        elif kind == 0xD9:  # str 8
            size = packed[at + 1]
            at += 2
        elif kind == 0xDB:  # str 32
            size = int.from_bytes(packed[at + 1 : at + 5], "big")
            at += 5
        else:
            raise ValueError(f"READ reply: not a MessagePack string (0x{kind:02x})")
        add(packed[at : at + size])
        at += size
    if at != len(packed):
        raise ValueError(f"READ reply: {len(packed) - at} bytes past the last string")
    return found


def parse_batch(reply: list[bytes]) -> list[Entry]:
    """The entries of a ``READ`` reply, each a first delivery (``XREADGROUP >``)."""
    if len(reply) < 2:
        return []
    meta = reply[0].split(b" ")
    datas = _strings(reply[1])
    if len(meta) != 3 * len(datas):
        raise ValueError(f"READ reply: {len(meta)} ids and attempts for {len(datas)} messages")
    return [
        (1 if meta[i] == b"1" else 0, meta[i + 1], {b"d": data, b"a": meta[i + 2]}, 1)
        for i, data in zip(range(0, len(meta), 3), datas, strict=True)
    ]

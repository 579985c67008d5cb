"""The Lua scripts of the Redis Streams backend, and the reader of ``READ``'s reply.

``NACK`` and ``REPLAY`` make a retry or a replay one atomic step; ``PROMOTE`` moves due
retries into the retry stream. ``APPEND`` and ``READ`` exist for speed: a pure-Python client
(redis-py without hiredis) spends most of its time per message packing commands and parsing
replies, so ``APPEND`` adds a whole batch with one command and one reply, and ``READ`` is
``XREADGROUP`` (without ``BLOCK``) on both streams of a group with its reply flattened to two
strings: the entry ids and field counts, then every entry's fields in one MessagePack array.
Parsing a protocol element costs redis-py several Python calls (a line read, a length, an
exact read) whichever its size, about as much as the rest of a delivery; reading a length
prefix and slicing costs a fraction of that. ``parse_batch`` does it. The consumer reads with
``READ`` while a backlog lasts and with the ordinary blocking ``XREADGROUP`` once it has caught
up.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["APPEND", "NACK", "PROMOTE", "READ", "REPLAY", "Entry", "pack", "parse_batch"]

#: (0 for the topic's stream or 1 for the group's retry stream, entry id, fields, deliveries)
Entry = tuple[int, bytes, Mapping[bytes, bytes], int]

# nack: park the message in the delay set (scored by the server's clock) and ack the original,
# in one step. KEYS: delay set, source stream. ARGV: group, entry id, delay ms, member (a unique
# prefix up to '|', then the copy's fields as a MessagePack array, see ``pack``), 1 to also
# delete the entry (retry streams belong to one group: nobody else needs it).
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
  redis.call('XADD', KEYS[2], '*', unpack(cmsgpack.unpack(string.sub(m, a + 1))))
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then return {#due, tonumber(nxt[2]) - now} end
return {#due, -1}
"""

# Replay one dead letter: re-publish it only if this call removed it from the DLQ, so two
# replays running at once publish it once. KEYS: DLQ stream, topic stream. ARGV: DLQ entry
# id, maxlen (0: none), then the entry's fields (name, value, ...).
REPLAY = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local args = {KEYS[2]}
if ARGV[2] ~= '0' then args = {KEYS[2], 'MAXLEN', '~', ARGV[2]} end
args[#args + 1] = '*'
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('XADD', unpack(args))
return 1
"""

# XADD of a batch to the stream KEYS[1]: one command and one reply for the whole batch (a
# pipeline of XADDs costs a pure-Python client a command to pack and a reply to parse per
# message, and every field an argument to pack). The messages of a batch share their fields
# but for the id, so each distinct set of shared fields is sent once. ARGV: the approximate
# MAXLEN (0 for none), the id field's name, the number of shared sets, each set as its length
# then its names and values, then per message: its set's number, its id, its data.
APPEND = """
local maxlen = tonumber(ARGV[1])
local idname = ARGV[2]
local sets, i = {}, 4
for s = 1, tonumber(ARGV[3]) do
  local n, set = tonumber(ARGV[i]), {}
  for j = 1, n do set[j] = ARGV[i + j] end
  sets[s] = set
  i = i + n + 1
end
local count = 0
while i <= #ARGV do
  local args = {KEYS[1]}
  if maxlen > 0 then args = {KEYS[1], 'MAXLEN', '~', maxlen} end
  local k = #args
  args[k + 1], args[k + 2], args[k + 3], args[k + 4], args[k + 5] = '*', 'data', ARGV[i + 2],
    idname, ARGV[i + 1]
  k = k + 5
  for _, v in ipairs(sets[tonumber(ARGV[i])]) do
    k = k + 1
    args[k] = v
  end
  redis.call('XADD', unpack(args))
  count = count + 1
  i = i + 3
end
return count
"""

# XREADGROUP on the topic's and the retry stream (KEYS), flattened: the reply is
# {"<0|1> <entry id> <number of field strings> ...", every field name and value of every entry
# in one MessagePack array}. Only numbers and entry ids are joined with spaces: field values
# (which may hold anything, spaces included) travel in the MessagePack array.
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
    local fields = entry[2]
    meta[n + 1], meta[n + 2], meta[n + 3] = source, entry[1], #fields
    n = n + 3
    for i = 1, #fields do
      k = k + 1
      out[k] = fields[i]
    end
  end
end
if n == 0 then return {} end
return {table.concat(meta, ' '), cmsgpack.pack(out)}
"""


def pack(strings: list[bytes]) -> bytes:
    """A MessagePack array of strings (what ``cmsgpack.unpack`` reads back as Lua strings)."""
    count = len(strings)
    if count < 16:
        parts = [bytes((0x90 | count,))]
    elif count < 0x10000:
        parts = [b"\xdc" + count.to_bytes(2, "big")]
    else:
        parts = [b"\xdd" + count.to_bytes(4, "big")]
    for item in strings:
        size = len(item)
        if size < 32:
            parts.append(bytes((0xA0 | size,)))
        elif size < 0x100:
            parts.append(b"\xd9" + bytes((size,)))
        elif size < 0x10000:
            parts.append(b"\xda" + size.to_bytes(2, "big"))
        else:
            parts.append(b"\xdb" + size.to_bytes(4, "big"))
        parts.append(item)
    return b"".join(parts)


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
    strings = _strings(reply[1])
    if len(meta) % 3:
        raise ValueError(f"READ reply: {len(meta)} ids and counts")
    found: list[Entry] = []
    at = 0
    for i in range(0, len(meta), 3):
        end = at + int(meta[i + 2])
        found.append(
            (
                1 if meta[i] == b"1" else 0,
                meta[i + 1],
                dict(zip(strings[at:end:2], strings[at + 1 : end : 2], strict=True)),
                1,
            )
        )
        at = end
    if at != len(strings):
        raise ValueError(f"READ reply: {len(strings) - at} strings past the last entry")
    return found

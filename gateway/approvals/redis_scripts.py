"""Lua scripts for the Redis approval store: each state change is one script, so it is atomic across replicas.

Keys are derived inside the scripts from a prefix (ARGV[1]); the store targets one Redis (or a
primary), not a cluster. Every change PUBLISHes the item id on `<prefix>events` so waiting
replicas wake up. Times come from the calling replica (ARGV), except heartbeats (Redis TIME).
"""

from __future__ import annotations

from typing import Final

# Shared helpers prepended to every script.
_HELPERS: Final = """
local P = ARGV[1]
local function item_key(id) return P .. 'item:' .. id end
local function finish(id, state, now, keep_ms)
  local key = item_key(id)
  redis.call('HSET', key, 'state', state, 'decided_at', now)
  redis.call('ZREM', P .. 'pending', id)
  redis.call('ZADD', P .. 'decided', now, id)
  redis.call('PEXPIRE', key, keep_ms)
  redis.call('PEXPIRE', P .. 'voters:' .. id, keep_ms)
  redis.call('DEL', P .. 'held:' .. id)
  redis.call('PUBLISH', P .. 'events', id)
end
"""
# ARGV: prefix, id, now, link_ms, keep_ms, key, expires_at, created_at, quorum, rec_json, mark_join, use_until
#   -> {id, status (0 joined or told, 1 created, 2 found due and expired here), hgetall}
# With mark_join (older replicas do not send it), joining a pending item stamps `joined_at` (Redis TIME, ms):
# the retry shows its agent is still there, so ABANDON no longer counts holds from before it (see there).
# The link lives as long as the item can (link_ms + keep_ms), so a late retry still learns of a denial or an
# expiry; an approval is usable until `use_until` (created_at + link; items of older replicas have none).
CREATE_OR_JOIN: Final = _HELPERS + """
local link = P .. 'key:' .. ARGV[6]
local now = tonumber(ARGV[3])
local cur = redis.call('GET', link)
if cur then
  local f = redis.call('HMGET', item_key(cur), 'state', 'expires_at', 'executed', 'use_until')
  if f[1] == 'pending' and now < tonumber(f[2]) then
    if ARGV[11] then
      local t = redis.call('TIME')
      redis.call('HSET', item_key(cur), 'joined_at', t[1] * 1000 + math.floor(t[2] / 1000))
    end
    return {cur, 0, redis.call('HGETALL', item_key(cur))}
  end
  if (f[1] == 'approved' and f[3] == '0' and (not f[4] or now < tonumber(f[4]))) or f[1] == 'denied' then
    return {cur, 0, redis.call('HGETALL', item_key(cur))}
  end
  -- expired: told to this retry once (approval_expired), the next one asks anew; 2 = expired by this script
  if f[1] == 'pending' or f[1] == 'expired' then
    local status = 0
    if f[1] == 'pending' then finish(cur, 'expired', ARGV[3], tonumber(ARGV[5])); status = 2 end
    redis.call('DEL', link)
    return {cur, status, redis.call('HGETALL', item_key(cur))}
  end
end
local id = ARGV[2]
redis.call('HSET', item_key(id), 'rec', ARGV[10], 'state', 'pending', 'votes', '[]', 'approvals', 0,
  'executed', '0', 'expires_at', ARGV[7], 'quorum', ARGV[9], 'key', ARGV[6], 'decided_at', '', 'use_until', ARGV[12])
redis.call('SET', link, id, 'PX', tonumber(ARGV[4]) + tonumber(ARGV[5]))
redis.call('ZADD', P .. 'pending', ARGV[7], id)
redis.call('ZADD', P .. 'all', ARGV[8], id)
redis.call('PUBLISH', P .. 'events', id)
return {id, 1, redis.call('HGETALL', item_key(id))}
"""

# ARGV: prefix, id, now, keep_ms, approver, outcome, vote_json  -> {status, hgetall}
# status: ok | voted | decided | expired (it was due: expired here, so the caller records that change) | missing
DECIDE: Final = _HELPERS + """
local key = item_key(ARGV[2])
local f = redis.call('HMGET', key, 'state', 'expires_at', 'quorum')
if not f[1] then return {'missing'} end
if f[1] ~= 'pending' then return {'decided', redis.call('HGETALL', key)} end
if tonumber(ARGV[3]) >= tonumber(f[2]) then
  finish(ARGV[2], 'expired', ARGV[3], tonumber(ARGV[4]))
  return {'expired', redis.call('HGETALL', key)}
end
if redis.call('SADD', P .. 'voters:' .. ARGV[2], ARGV[5]) == 0 then return {'voted', redis.call('HGETALL', key)} end
local votes = redis.call('HGET', key, 'votes')
if votes == '[]' then votes = '[' .. ARGV[7] .. ']' else votes = string.sub(votes, 1, -2) .. ',' .. ARGV[7] .. ']' end
redis.call('HSET', key, 'votes', votes)
if ARGV[6] == 'denied' then
  finish(ARGV[2], 'denied', ARGV[3], tonumber(ARGV[4]))
elseif redis.call('HINCRBY', key, 'approvals', 1) >= tonumber(f[3]) then
  redis.call('HSET', key, 'state', 'approved', 'decided_at', ARGV[3])
  -- The approval is usable until use_until: the link lapses then, so replicas that do not read use_until agree.
  local uu = redis.call('HGET', key, 'use_until')
  local link = P .. 'key:' .. (redis.call('HGET', key, 'key') or '')
  if uu and redis.call('GET', link) == ARGV[2] then
    local ms = math.floor((tonumber(uu) - tonumber(ARGV[3])) * 1000)
    if ms > 0 then redis.call('PEXPIRE', link, ms) else redis.call('DEL', link) end
  end
  redis.call('PEXPIRE', key, tonumber(ARGV[4]))
  redis.call('PEXPIRE', P .. 'voters:' .. ARGV[2], tonumber(ARGV[4]))
  redis.call('ZREM', P .. 'pending', ARGV[2])
  redis.call('ZADD', P .. 'decided', ARGV[3], ARGV[2])
  redis.call('DEL', P .. 'held:' .. ARGV[2])
  redis.call('PUBLISH', P .. 'events', ARGV[2])
else
  redis.call('PUBLISH', P .. 'events', ARGV[2])
end
return {'ok', redis.call('HGETALL', key)}
"""

# ARGV: prefix, id, now, keep_ms, state, only_if_due ('1'/'0')  -> {changed 0/1, hgetall} or {} when missing
# An item past its expiry is expired, whatever was asked (as the memory store, which expires it as it reads it).
CANCEL: Final = _HELPERS + """
local key = item_key(ARGV[2])
local f = redis.call('HMGET', key, 'state', 'expires_at')
if not f[1] then return {} end
local changed = 0
if f[1] == 'pending' and tonumber(ARGV[3]) >= tonumber(f[2]) then
  finish(ARGV[2], 'expired', ARGV[3], tonumber(ARGV[4]))
  changed = 1
elseif f[1] == 'pending' and ARGV[6] == '0' then
  finish(ARGV[2], ARGV[5], ARGV[3], tonumber(ARGV[4]))
  changed = 1
end
return {changed, redis.call('HGETALL', key)}
"""

# ARGV: prefix, id, now, keep_ms  -> 1 exactly once per approved item
CLAIM: Final = _HELPERS + """
local key = item_key(ARGV[2])
local f = redis.call('HMGET', key, 'state', 'executed', 'key')
if f[1] ~= 'approved' or f[2] ~= '0' then return 0 end
redis.call('HSET', key, 'executed', '1', 'executed_at', ARGV[3])
redis.call('PEXPIRE', key, tonumber(ARGV[4]))
local link = P .. 'key:' .. f[3]
-- 'unbound': this claim took the call's binding, so a hand-back may give the approval back to that call
if redis.call('GET', link) == ARGV[2] then redis.call('DEL', link); redis.call('HSET', key, 'unbound', '1') end
redis.call('PUBLISH', P .. 'events', ARGV[2])
return 1
"""

# ARGV: prefix, id, reason  -> hgetall, or {} when the item is missing or was never claimed. A claimed call that
# never reached the upstream: `executed` (the claim) stays 1, so it is never claimed again.
NOT_EXECUTED: Final = _HELPERS + """
local key = item_key(ARGV[2])
if redis.call('HGET', key, 'executed') ~= '1' then return {} end
redis.call('HSET', key, 'not_executed', ARGV[3])
redis.call('PUBLISH', P .. 'events', ARGV[2])
return redis.call('HGETALL', key)
"""

# ARGV: prefix, id, now, why  -> {'handed_back' | 'not_executed', hgetall}, or {} when the item is missing, was never
# claimed or is settled. A claimed call that never ran for a reason its retry fixes: unclaimed again and bound anew
# to its call until use_until, unless that is over or the binding leads to a newer item (then used up, as above).
HAND_BACK: Final = _HELPERS + """
-- As the memory store: back only when this claim took the call's binding ('unbound'), before use_until, and no
-- other live item binds the call now (one CREATE_OR_JOIN would join); a binding to a pruned, expired, cancelled
-- or used item is free.
local function binds(id, now)
  local g = redis.call('HMGET', item_key(id), 'state', 'expires_at', 'executed', 'use_until')
  return (g[1] == 'pending' and now < tonumber(g[2])) or g[1] == 'denied'
    or (g[1] == 'approved' and g[3] == '0' and (not g[4] or now < tonumber(g[4])))
end
local key = item_key(ARGV[2])
local f = redis.call('HMGET', key, 'state', 'executed', 'not_executed', 'key', 'use_until', 'unbound')
if f[1] ~= 'approved' or f[2] ~= '1' or f[3] then return {} end
local now = tonumber(ARGV[3])
local ms = (f[5] and f[6] == '1') and math.floor((tonumber(f[5]) - now) * 1000) or 0
local link = P .. 'key:' .. f[4]
local cur = redis.call('GET', link)
if ms > 0 and not (cur and cur ~= ARGV[2] and binds(cur, now)) then
  redis.call('SET', link, ARGV[2], 'PX', ms)
  redis.call('HSET', key, 'executed', '0')
  redis.call('HDEL', key, 'executed_at', 'unbound')
  redis.call('PUBLISH', P .. 'events', ARGV[2])
  return {'handed_back', redis.call('HGETALL', key)}
end
redis.call('HSET', key, 'not_executed', ARGV[4])
redis.call('PUBLISH', P .. 'events', ARGV[2])
return {'not_executed', redis.call('HGETALL', key)}
"""

# ARGV: prefix, id, now, keep_ms, dead_after_ms  -> {changed 0/1, hgetall} or {} when missing
# A held request that went away cancels the item only if no request on a live replica (heartbeat within
# dead_after_ms, as in ABANDON) still holds it: an identical call waiting on the same item keeps waiting.
WITHDRAW: Final = _HELPERS + """
local key = item_key(ARGV[2])
local f = redis.call('HMGET', key, 'state', 'expires_at')
local state = f[1]
if not state then return {} end
if state ~= 'pending' then return {0, redis.call('HGETALL', key)} end
if tonumber(ARGV[3]) >= tonumber(f[2]) then  -- past its expiry: expired, not withdrawn (as CANCEL)
  finish(ARGV[2], 'expired', ARGV[3], tonumber(ARGV[4]))
  return {1, redis.call('HGETALL', key)}
end
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local held = redis.call('HGETALL', P .. 'held:' .. ARGV[2])
for i = 1, #held, 2 do
  local beat = redis.call('HGET', P .. 'holders', held[i])
  if tonumber(held[i + 1]) > 0 and beat and now_ms - tonumber(beat) < tonumber(ARGV[5]) then
    return {0, redis.call('HGETALL', key)}
  end
end
finish(ARGV[2], 'cancelled', ARGV[3], tonumber(ARGV[4]))
return {1, redis.call('HGETALL', key)}
"""

# ARGV: prefix, id  -> 1 when the item's binding key pointed at it and no longer does
FORGET: Final = _HELPERS + """
local k = redis.call('HGET', item_key(ARGV[2]), 'key')
if not k then return 0 end
local link = P .. 'key:' .. k
if redis.call('GET', link) == ARGV[2] then redis.call('DEL', link); return 1 end
return 0
"""

# ARGV: prefix, holder  (Redis TIME, so replicas' clocks need not agree)
HEARTBEAT: Final = _HELPERS + """
local t = redis.call('TIME')
redis.call('HSET', P .. 'holders', ARGV[2], t[1] * 1000 + math.floor(t[2] / 1000))
return 1
"""

# ARGV: prefix, id, holder, delta
HOLD: Final = _HELPERS + """
local held = P .. 'held:' .. ARGV[2]
local n = redis.call('HINCRBY', held, ARGV[3], tonumber(ARGV[4]))
if n <= 0 then redis.call('HDEL', held, ARGV[3]) end
return n
"""

# ARGV: prefix, id, now, keep_ms, dead_after_ms  -> 1 when abandoned
ABANDON: Final = _HELPERS + """
local key = item_key(ARGV[2])
if redis.call('HGET', key, 'state') ~= 'pending' then return 0 end
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local held = redis.call('HGETALL', P .. 'held:' .. ARGV[2])
-- A holder whose last heartbeat came before the agent's latest retry joined the item died after that agent
-- had moved on (a replica killed under a held call, the agent retrying elsewhere): its hold says nothing.
local joined = tonumber(redis.call('HGET', key, 'joined_at') or '0')
local live, dead = 0, 0
for i = 1, #held, 2 do
  local beat = redis.call('HGET', P .. 'holders', held[i])
  local count = tonumber(held[i + 1])
  if beat and now_ms - tonumber(beat) < tonumber(ARGV[5]) then live = live + count
  elseif count > 0 and not (beat and tonumber(beat) < joined) then dead = dead + count end
end
if live == 0 and dead > 0 then
  finish(ARGV[2], 'abandoned', ARGV[3], tonumber(ARGV[4]))
  return 1
end
return 0
"""

# ARGV: prefix, cutoff (created_at), max  -> how many `all` entries were dropped: those whose item aged out.
# `decided` (score decided_at) loses its entries decided before the cutoff: their items are kept that long.
PRUNE: Final = _HELPERS + """
redis.call('ZREMRANGEBYSCORE', P .. 'decided', '-inf', '(' .. ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', P .. 'all', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local gone = 0
for _, id in ipairs(ids) do
  if redis.call('EXISTS', item_key(id)) == 0 then
    redis.call('ZREM', P .. 'all', id)
    gone = gone + 1
  end
end
return gone
"""

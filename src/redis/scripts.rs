//! The Lua scripts of the Redis tier. Each touches the keys of one cache key only, which share
//! one hash tag, so each runs in one slot (Redis Cluster) and atomically.
//!
//! Per cache key: the *base* hash (the key without its `Vary` variant) holds the write fence
//! `f` (bumped by every lock grant and every purge), the purge time `p` and the soft-purge time
//! `q` (Redis server milliseconds), `g` (the fence of the last grant whose value is written),
//! `e` (when a variant was last written), `a` (when the lock was last granted, server ms), and,
//! for a response without `Vary`, the value itself; each
//! variant's hash holds `v` (the encoded value), `s` (when it was written, server ms) and `w`
//! (the writer's wall-clock stored-at, ms, so an older load never replaces a newer one).

use std::sync::LazyLock;

use ::redis::Script;

/// `KEYS[1]` base, `KEYS[2]` lock; `ARGV[1]` token, `ARGV[2]` lock lease ms, `ARGV[3]` the
/// least lifetime of the fence ms, `ARGV[4]` a random start for a new fence, `ARGV[5]` `1` for
/// a waiter asking again, `ARGV[6]` for a miss, how long ago (ms) it sent its read of the key
/// (`''`: none). Returns `{1, fence}` when the lock was granted, `{0, fence}` when another
/// holds it, `{2, fence}` when the value of the last grant is written (`g` = `f`: its holder
/// wrote it) and the asker may not have seen it: a waiter asking again, or a miss whose read
/// came before the write (`s` or `e`, by Redis's clock: the read reached Redis about as long
/// after it was sent as this claim did). Read it rather than load it once more.
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[5] == '1' then
  local f = redis.call('HGET', KEYS[1], 'f')
  if f and redis.call('HGET', KEYS[1], 'g') == f then
    return {2, tonumber(f)}
  end
elseif ARGV[6] ~= '' then
  -- When the family was last written: its own value (s) or a variant (e).
  local b = redis.call('HMGET', KEYS[1], 'f', 'g', 's', 'e')
  local w = math.max(tonumber(b[3] or '0'), tonumber(b[4] or '0'))
  if b[1] and b[2] == b[1] and w > 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    -- 1 ms on the generous side (the times are whole milliseconds): a write the read may
    -- have seen costs the asker one more read, a write it missed a second origin call.
    if w >= now - tonumber(ARGV[6]) - 1 then return {2, tonumber(b[1])} end
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('HSETNX', KEYS[1], 'f', ARGV[4])
  local f = redis.call('HINCRBY', KEYS[1], 'f', 1)
  -- When this grant was made (server ms): a value written before it is older than the
  -- holder's, whatever its writer's clock said (see PUT).
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'a', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  return {1, f}
end
return {0, tonumber(redis.call('HGET', KEYS[1], 'f') or '0')}
",
    )
});

/// `KEYS[1]` the value's hash, `KEYS[2]` base; `ARGV[1]` value, `ARGV[2]` fence (`''`: none),
/// `ARGV[3]` the writer's stored-at ms, `ARGV[4]` expire-at ms (Unix), `ARGV[5]` the family's
/// hint (`y` on the base, for a variant; `''`: none), `ARGV[6]` for a write without a fence,
/// how long ago (ms, with a margin) its load began. Returns 1 when written, 0 when fenced off
/// (the claim is stale: the lock passed on or the key was purged; without a fence: the key was
/// purged since the load began, by Redis's clock), 2 when a newer value is there (by the
/// writers' stored-at; not checked for the first write of the current grant, whose value
/// comes after whatever is there however the writers' clocks differ). A variant's
/// write stamps `e` on its base: the family holds a value written then (see [`CONTAINS`]).
pub(crate) static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[2] ~= '' and (redis.call('HGET', KEYS[2], 'f') or '0') ~= ARGV[2] then
  return 0
end
local w = redis.call('HGET', KEYS[1], 'w')
-- The first write of the current grant replaces a value written before the grant whatever its
-- writer's clock said; a value written since (without the lock) is kept if newer.
local first_of_grant = false
if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], 'g') ~= ARGV[2] then
  local granted = tonumber(redis.call('HGET', KEYS[2], 'a') or '0') or 0
  local written = tonumber(redis.call('HGET', KEYS[1], 's') or '0') or 0
  first_of_grant = written < granted
end
if w and not first_of_grant and tonumber(w) > tonumber(ARGV[3])
    and redis.call('HEXISTS', KEYS[1], 'v') == 1 then
  return 2
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] == '' and ARGV[6] ~= '' then
  local p = redis.call('HGET', KEYS[2], 'p')
  if p and tonumber(p) >= now - tonumber(ARGV[6]) then return 0 end
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', now, 'w', ARGV[3])
if ARGV[2] ~= '' then
  -- The value of the grant whose fence it carries is there (see CLAIM): the key's own, or
  -- one of its family's variants (the lock is the family's).
  redis.call('HSET', KEYS[2], 'g', ARGV[2])
end
local at = tonumber(ARGV[4])
if redis.call('PEXPIRETIME', KEYS[1]) < at then redis.call('PEXPIREAT', KEYS[1], at) end
if KEYS[1] ~= KEYS[2] then
  redis.call('HSET', KEYS[2], 'e', now)
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'y', ARGV[5]) end
  if redis.call('PEXPIRETIME', KEYS[2]) < at then redis.call('PEXPIREAT', KEYS[2], at) end
end
return 1
",
    )
});

/// `KEYS[1]` the value's hash, `KEYS[2]` base (another key: a `Vary` variant's). Returns
/// `{v, s, p, q, false}` (`false` where absent). A key that is its own base is read with one
/// `HMGET` of `v s p q y` instead (`y`: its family's hint, when it has variants).
pub(crate) static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local d = redis.call('HMGET', KEYS[1], 'v', 's')
local b = redis.call('HMGET', KEYS[2], 'p', 'q')
return {d[1], d[2], b[1], b[2], false}
",
    )
});

/// `KEYS[1]` base. Returns `{has v, s, e, p}`: whether the base holds a value, when it was
/// written, when a variant was last written (`false` where absent), the purge time.
pub(crate) static CONTAINS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local b = redis.call('HMGET', KEYS[1], 's', 'e', 'p')
return {redis.call('HEXISTS', KEYS[1], 'v'), b[1], b[2], b[3]}
",
    )
});

/// `KEYS[1]` lock; `ARGV[1]` token. Deletes the lock only if this holder still has it.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// `KEYS[1]` base, `KEYS[2]` lock; `ARGV[1]` `'p'` (purge) or `'q'` (soft purge), `ARGV[2]`
/// the least lifetime of the fence ms. A purge drops the base's value, bumps the fence (every
/// write under an older claim is refused) and frees the lock; both stamp the time (variants
/// written before it are purged, or stale). Returns 1 if the base held a value.
pub(crate) static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local had = redis.call('HEXISTS', KEYS[1], 'v')
redis.call('HSET', KEYS[1], ARGV[1], now)
if ARGV[1] == 'p' then
  redis.call('HDEL', KEYS[1], 'v', 's', 'w', 'e')
  redis.call('HINCRBY', KEYS[1], 'f', 1)
  redis.call('DEL', KEYS[2])
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return had
",
    )
});

/// `KEYS[1]` the scopes hash; `ARGV[1]` scope, `ARGV[2]` `'h'` (hard) or `'s'` (soft).
/// Records the scope's purge time (server ms) and returns it.
pub(crate) static MARK_SCOPE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. now)
return now
",
    )
});

/// `KEYS[1]` the generation; `ARGV[1]` the highest generation this instance knows. The
/// generation never goes down: where Redis holds less (a `FLUSHALL`, an eviction took it), it
/// is written back. Returns the higher of the two.
pub(crate) static GENERATION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local stored = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local known = tonumber(ARGV[1]) or 0
if known > stored then
  redis.call('SET', KEYS[1], known)
  return known
end
return stored
",
    )
});

/// `KEYS[1]` the generation, `KEYS[2]` the scopes hash; `ARGV[1]` the highest generation this
/// instance knows. A clear: the generation becomes one more than the higher of Redis's and
/// this instance's (Redis may have lost it), and the scopes go. Returns the new generation.
pub(crate) static CLEAR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local stored = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local known = tonumber(ARGV[1]) or 0
local next = math.max(stored, known) + 1
redis.call('SET', KEYS[1], next)
redis.call('DEL', KEYS[2])
return next
",
    )
});

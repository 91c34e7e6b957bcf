//! The Redis hot tier, through deadpool-redis.
//!
//! Record `id` lives at `{prefix}progress:{id}` as the stored form of
//! [`StoredRecord`], with a TTL refreshed on every write, its body
//! compressed: the header line as it is (the scripts read the version,
//! creation time and status from it), then, for a body of 256 bytes or
//! more, a `~` and the body as an LZ4 block with its length in front (a
//! plain JSON body starts with `{`, so both forms read back). A typical
//! record (5 children, 5 stages, 1.5 KB of JSON) takes about half the
//! memory, and half the bytes on the wire.
//!
//! Listing indexes, kept by the write and delete scripts in the same atomic
//! step as the record (outside the `progress:` key space, so that no record
//! id can collide with them):
//! - `{prefix}progressd:index`: every record; a sorted set whose members all
//!   have score 0 and read `<created ms, 15 digits>:<id>`, so that its lex
//!   order is the listing order and `ZREVRANGEBYLEX` resumes exactly after a
//!   cursor, ties on `created_at` included.
//! - `{prefix}progressd:index:{status}`: the same, per status.
//! - `{prefix}progressd:expiry`: the same members scored by `expires_at` ms.
//!   Keys expire by themselves; cleanup walks this set up to now and removes
//!   the members whose key is gone (or holds another incarnation) from all
//!   the indexes. Listing skips such members until then.
//!
//! The expiry set's scores are lower bounds (cleanup rescores a member
//! whose record lives on), so a write that moves the expiry later leaves
//! it alone: an update costs no index work at all; a create costs three
//! `ZADD`s (index, status set, expiry set), a status change a `ZREM` and a
//! `ZADD`, a write that shortens the TTL a `ZADD` on the expiry set.
//!
//! deadpool-redis PINGs a connection on every checkout, which costs one
//! extra round trip per request. A multiplexed connection serves any number
//! of concurrent requests, so the store checks out a few connections once,
//! holds them, and hands out clones. A connection that fails is dropped
//! (back to the pool, whose recycle check discards it) and the next request
//! checks out a fresh one: redis-rs's multiplexed connection does not
//! reconnect by itself, the pool does it for us.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use bytes::Bytes;
use deadpool_redis::{Manager, Pool, Runtime, Timeouts};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, RedisError, RedisResult, Script};

use super::listing::{ListCursor, ListPage, ListQuery};
use super::maintenance::{
    CleanupReport, LastError, MAINTENANCE_BATCH, RecordFilter, StatusCounts, TierHealth, delete_page, glob_escape,
    status_of, timed,
};
use super::{ProgressStore, StoreError};
use crate::domain::{CorruptRecord, ProgressId, Status, StoredRecord, Timestamp};
use crate::metrics::{StoreOp, store_op};

/// Reads the stored version into `current` (0: absent), the creation time
/// into `created` and the status into `old_status` from the header line
/// (records written before the header carried the status: from the head of
/// the body, `{"id":…,"version":…,"status":"…"`, never compressed then),
/// never decoding the document; returns -1 from the script when the key
/// holds something that is not ours. 512 bytes hold the header and a
/// 128-character id.
const READ_VERSION: &str = r#"
local head = redis.call('GETRANGE', KEYS[1], 0, 511)
local current = 0
local created = 0
local old_status = nil
if head ~= '' then
  current = tonumber(string.match(head, '^{"v":(%d+)'))
  if current == nil then return -1 end
  local nl = string.find(head, '\n', 1, true)
  local header = nl and string.sub(head, 1, nl - 1) or head
  created = tonumber(string.match(header, '"c":(%d+)')) or 0
  old_status = string.match(header, '"t":"(%a+)"')
  if nl and not old_status then old_status = string.match(head, '^{"id":"[^"]*","version":%d+,"status":"(%a+)"', nl + 1) end
end
"#;

/// The listing indexes in a script's `KEYS`, from `KEYS[IX]` (the script
/// sets `IX`): the index, the expiry set, then the status sets in the order
/// of `Status::ALL`.
const INDEX_HELPERS: &str = r#"
local STATUS_KEY = {pending = IX + 2, running = IX + 3, completed = IX + 4, failed = IX + 5, cancelled = IX + 6}
local function member_of(c, id) return string.format('%015d', c) .. ':' .. id end
local function unindex(member)
  for i = IX, IX + 6 do redis.call('ZREM', KEYS[i], member) end
end
"#;

/// Keeps the indexes in step with a write; after [`READ_VERSION`] and
/// [`INDEX_HELPERS`] (whose locals it uses).
const INDEX_WRITE: &str = r#"
-- After storing record `id` created at `c` with `status`, expiring at `x`:
-- what the previous value (`current`, `created`, `old_status`) needs changed.
local function index_write(id, c, status, x)
  local member = member_of(c, id)
  local fresh = current == 0
  if current ~= 0 and created ~= c then
    unindex(member_of(created, id))
    fresh = true
  end
  if fresh then
    redis.call('ZADD', KEYS[IX], 0, member)
    redis.call('ZADD', KEYS[STATUS_KEY[status]], 0, member)
  elseif old_status ~= status then
    local old = STATUS_KEY[old_status or '']
    if old then redis.call('ZREM', KEYS[old], member) end
    redis.call('ZADD', KEYS[STATUS_KEY[status]], 0, member)
  end
  redis.call('ZADD', KEYS[IX + 1], x, member)
end
"#;

/// Stores `ARGV[2]` with TTL `ARGV[3]` ms when the stored version equals
/// `ARGV[1]` (0: absent), indexes it (id `ARGV[6]`, created `ARGV[7]`,
/// status `ARGV[8]`, expiry `ARGV[9]`), and announces `ARGV[5]` on channel
/// `ARGV[4]`. 1 when stored, 0 on a version mismatch.
const COMPARE_AND_SET: &str = r#"
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
index_write(ARGV[6], tonumber(ARGV[7]), ARGV[8], ARGV[9])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"#;

/// The compare-and-set of a write that read the record it replaces: stores
/// `ARGV[2]` with TTL `ARGV[3]` ms when the key holds a record whose header
/// line is `ARGV[1]` (the header and its newline, exactly as read: the
/// version, and the creation time that tells incarnations apart; its last
/// byte is at `ARGV[7]`), or when `ARGV[1]` is empty and the key does not
/// exist. The caller knows that record, so it passes what the indexes
/// need: the member `ARGV[5]` (the same before and after), the status sets
/// `KEYS[4]` (the old status; the new one for a create) and `KEYS[5]` (the
/// new status), the expiry score `ARGV[6]` (0: leave it; see
/// [`expiry_to_set`]); `KEYS[2]` is the index, `KEYS[3]` the expiry set.
/// Announces `ARGV[4]` on the channel the script is built with
/// ([`with_channel`]). 1 when stored, 0 otherwise.
///
/// No decoding in Lua at all: a GETRANGE of the header's length and one
/// string comparison. No number is handed to `redis.call` (see
/// [`SWAP_IN_PLACE`]).
const SWAP: &str = r#"
local expected = ARGV[1]
if expected == '' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
elseif redis.call('GETRANGE', KEYS[1], '0', ARGV[7]) ~= expected then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local member = ARGV[5]
if expected == '' then
  redis.call('ZADD', KEYS[2], '0', member)
  redis.call('ZADD', KEYS[5], '0', member)
elseif KEYS[4] ~= KEYS[5] then
  redis.call('ZREM', KEYS[4], member)
  redis.call('ZADD', KEYS[5], '0', member)
end
if ARGV[6] ~= '0' then redis.call('ZADD', KEYS[3], ARGV[6], member) end
redis.call('PUBLISH', CHANNEL, ARGV[4])
return 1
"#;

/// [`SWAP`] for the write that changes no index: the key holds the record
/// the write replaces (its header line `ARGV[1]`, whose last byte is at
/// `ARGV[2]`), and the status stays and the expiry does not move earlier,
/// which is almost every write of a running job. Stores `ARGV[3]` with TTL
/// `ARGV[4]` ms and announces `ARGV[5]` on the channel the script is built
/// with ([`with_channel`]). 1 when stored, 0 otherwise.
///
/// Every argument becomes a Lua string, which Redis 7.0's Lua hashes byte
/// by byte, and every number passed to `redis.call` is printed with
/// `%.17g`: this script has 6 arguments where [`SWAP`] has 12. A steady
/// PUT costs Redis 57,000 instructions through it, against 71,000 through
/// [`SWAP`] when that took the channel as an argument and passed numbers
/// (`bench/redis_cost.sh`, a 785-byte record; see README "Performance").
const SWAP_IN_PLACE: &str = r#"
if redis.call('GETRANGE', KEYS[1], '0', ARGV[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
redis.call('PUBLISH', CHANNEL, ARGV[5])
return 1
"#;

/// `script` announcing on `channel`, which it holds as the literal
/// `CHANNEL` rather than taking it as an argument.
fn with_channel(script: &str, channel: &str) -> String {
    format!("local CHANNEL = {}\n{script}", lua_string_literal(channel))
}

/// `text` as a Lua string literal: bytes other than letters, digits and
/// `-_:.` are written as decimal escapes, so any key prefix is safe.
fn lua_string_literal(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() + 2);
    literal.push('"');
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_:.".contains(&byte) {
            literal.push(char::from(byte));
        } else {
            let _ = write!(literal, "\\{byte:03}");
        }
    }
    literal.push('"');
    literal
}

/// Deletes the key when the stored version equals `ARGV[1]`, unindexes id
/// `ARGV[4]`, and announces `ARGV[3]` on channel `ARGV[2]`. 1 when deleted,
/// 0 on a mismatch or when absent.
const COMPARE_AND_DELETE: &str = r#"
if current == 0 or current ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
unindex(member_of(created, ARGV[4]))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#;

/// Stores `ARGV[2]` with TTL `ARGV[3]` ms unless Redis already holds
/// version `ARGV[1]` of the incarnation created at `ARGV[6]`, or something
/// newer (a later incarnation, or a higher version of the same one);
/// indexes it (id `ARGV[7]`, status `ARGV[8]`, expiry `ARGV[9]`) and
/// announces `ARGV[5]` on channel `ARGV[4]`. 1 when stored, 0 otherwise.
const PUT_IF_NEWER: &str = r#"
local c, v = tonumber(ARGV[6]), tonumber(ARGV[1])
if current ~= 0 and (created > c or (created == c and current >= v)) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
index_write(ARGV[7], c, ARGV[8], ARGV[9])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"#;

/// Deletes the key when it holds the incarnation created at `ARGV[1]` or an
/// older one, unindexes id `ARGV[4]`, and announces `ARGV[3]` on channel
/// `ARGV[2]`. 1 when deleted.
const DELETE_INCARNATION: &str = r#"
if current == 0 or created > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
unindex(member_of(created, ARGV[4]))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#;

/// Deletes the key whatever its version (unindexing id `ARGV[3]` when it is
/// a record of ours) and announces `ARGV[2]` on channel `ARGV[1]`. The
/// number of keys deleted.
const DELETE: &str = r#"
local created = tonumber(string.match(redis.call('GETRANGE', KEYS[1], 0, 255), '^{"v":%d+[^\n]*"c":(%d+)'))
local removed = redis.call('DEL', KEYS[1])
if removed > 0 then
  if created then unindex(member_of(created, ARGV[3])) end
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return removed
"#;

/// One page of the listing, read-only. `KEYS`: the index sets to merge
/// (the whole index, or one set per status asked for). `ARGV[1]`: where to
/// start (`+`, or `(` and the cursor's member), `ARGV[2]` limit, `ARGV[3]`
/// budget of members examined, `ARGV[4]` id prefix (empty: none),
/// `ARGV[5]` the record key prefix (`{prefix}progress:`).
///
/// Walks the members newest first, merging the sets (compared bytewise:
/// Lua's `<` follows the server's locale), and GETs the record of each
/// member whose id has the prefix; a member whose key is gone or holds
/// another incarnation is skipped. Stops at `limit` records or after
/// `budget` members. Returns the next cursor's member (empty at the end)
/// followed by member, value pairs.
const LIST: &str = r#"
local limit, budget, prefix, kp = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local n = #KEYS
local chunk = limit + 1
if prefix ~= '' then chunk = math.min(budget, math.max(chunk, 256)) end
local bufs, pos, bounds, done = {}, {}, {}, {}
for i = 1, n do bufs[i], pos[i], bounds[i], done[i] = {}, 1, ARGV[1], false end
local function head(i)
  if pos[i] > #bufs[i] then
    if done[i] then return nil end
    local got = redis.call('ZREVRANGEBYLEX', KEYS[i], bounds[i], '-', 'LIMIT', 0, chunk)
    bufs[i], pos[i] = got, 1
    if #got < chunk then done[i] = true end
    if #got == 0 then return nil end
    bounds[i] = '(' .. got[#got]
  end
  return bufs[i][pos[i]]
end
local function greater(a, b)
  local la, lb = #a, #b
  for j = 1, math.min(la, lb) do
    local x, y = string.byte(a, j), string.byte(b, j)
    if x ~= y then return x > y end
  end
  return la > lb
end
local out, taken, examined, last = {''}, 0, 0, ''
while true do
  local best = nil
  for i = 1, n do
    local h = head(i)
    if h and (best == nil or (h ~= best and greater(h, best))) then best = h end
  end
  if best == nil then return out end
  if taken >= limit or examined >= budget then
    out[1] = last
    return out
  end
  for i = 1, n do
    if head(i) == best then pos[i] = pos[i] + 1 end
  end
  examined = examined + 1
  last = best
  local id = string.sub(best, 17)
  if prefix == '' or string.sub(id, 1, #prefix) == prefix then
    local value = redis.call('GET', kp .. id)
    if value then
      local c = string.match(value, '^{[^\n]*"c":(%d+)')
      if c and tonumber(c) == tonumber(string.sub(best, 1, 15)) then
        out[#out + 1] = best
        out[#out + 1] = value
        taken = taken + 1
      end
    end
  end
end
"#;

/// Prunes the listing indexes: walks the expiry set up to `ARGV[1]` ms (at
/// most `ARGV[2]` members) and removes from every index the members whose
/// key (`ARGV[3]` .. id) is gone or holds another incarnation; a member
/// whose record lives on (its TTL was extended) is rescored by its TTL.
/// `KEYS`: the indexes (`IX` = 1). Returns {pruned, examined}.
const PRUNE_INDEX: &str = r#"
local now, kp = tonumber(ARGV[1]), ARGV[3]
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local pruned = 0
for _, member in ipairs(due) do
  local key = kp .. string.sub(member, 17)
  local head = redis.call('GETRANGE', key, 0, 255)
  local c = string.match(head, '^{[^\n]*"c":(%d+)')
  if c and tonumber(c) == tonumber(string.sub(member, 1, 15)) then
    local ttl = redis.call('PTTL', key)
    if ttl >= 0 then redis.call('ZADD', KEYS[2], now + ttl + 1, member) else redis.call('ZADD', KEYS[2], '+inf', member) end
  else
    unindex(member)
    pruned = pruned + 1
  end
end
return {pruned, #due}
"#;

/// Indexes records written before the indexes existed: for each id of
/// `ARGV[2..]` whose key (`ARGV[1]` .. id) holds a record of ours, adds
/// its members unless present. `KEYS` as for [`PRUNE_INDEX`]. Returns how
/// many records were indexed.
const BACKFILL_INDEX: &str = r#"
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local key = ARGV[1] .. id
  local head = redis.call('GETRANGE', key, 0, 511)
  local nl = string.find(head, '\n', 1, true)
  if nl and string.match(head, '^{"v":%d+') then
    local header = string.sub(head, 1, nl - 1)
    local c = tonumber(string.match(header, '"c":(%d+)'))
    local x = tonumber(string.match(header, '"x":(%d+)')) or 0
    local status = string.match(header, '"t":"(%a+)"')
      or string.match(head, '^{"id":"[^"]*","version":%d+,"status":"(%a+)"', nl + 1)
    if c and status and STATUS_KEY[status] then
      local member = member_of(c, id)
      redis.call('ZADD', KEYS[1], 'NX', 0, member)
      redis.call('ZADD', KEYS[STATUS_KEY[status]], 'NX', 0, member)
      redis.call('ZADD', KEYS[2], 'NX', x, member)
      n = n + 1
    end
  end
end
return n
"#;

/// The first byte of a compressed body in Redis (a JSON body starts with `{`).
const COMPRESSED: u8 = b'~';

/// Bodies shorter than this are stored as they are.
const COMPRESS_FROM: usize = 256;

/// Largest body a compressed value may claim to hold (far above any
/// accepted request body): a corrupt length is refused, not allocated.
const MAX_BODY: usize = 64 << 20;

/// Hands `f` what Redis stores for `record`: the header line, then the
/// body as an LZ4 block after [`COMPRESSED`] when that is shorter, else as
/// it is. Compressed into a buffer kept per thread (with the compressor's
/// table), so that a write neither allocates nor zeroes one: `f` copies
/// the bytes into the command anyway.
fn with_redis_value<R>(record: &StoredRecord, f: impl FnOnce(&[u8]) -> R) -> R {
    /// Buffers up to this size are kept for the next write on the thread.
    const KEPT: usize = 64 << 10;
    let raw = record.raw();
    let header = record.header();
    let body = &raw[header.len()..];
    if body.len() < COMPRESS_FROM {
        return f(raw);
    }
    let start = header.len() + 1 + 4;
    let size = start + lz4_flex::block::get_maximum_output_size(body.len());
    thread_local! {
        static SCRATCH: std::cell::RefCell<(lz4_flex::block::CompressTable, Vec<u8>)> = Default::default();
    }
    SCRATCH.with(|scratch| {
        let (table, kept) = &mut *scratch.borrow_mut();
        let mut one_off = Vec::new();
        let out = if size <= KEPT { kept } else { &mut one_off };
        if out.len() < size {
            out.resize(size, 0);
        }
        out[..header.len()].copy_from_slice(header);
        out[header.len()] = COMPRESSED;
        out[header.len() + 1..start].copy_from_slice(&(body.len() as u32).to_le_bytes());
        match lz4_flex::block::compress_into_with_table(body, &mut out[start..size], table) {
            Ok(n) if start + n < raw.len() => f(&out[..start + n]),
            _ => f(raw),
        }
    })
}

/// A record as Redis holds it (see the module documentation), compressed
/// or not: for tools and tests that read the keys themselves.
pub fn from_redis(value: Vec<u8>) -> Result<StoredRecord, CorruptRecord> {
    let Some(newline) = StoredRecord::header_end(&value) else {
        return StoredRecord::decode(Bytes::from(value)); // and its error
    };
    if value.get(newline + 1) != Some(&COMPRESSED) {
        return StoredRecord::decode_split(Bytes::from(value), newline);
    }
    let corrupt = |e: lz4_flex::block::DecompressError| CorruptRecord(format!("compressed body: {e}"));
    let (size, block) = lz4_flex::block::uncompressed_size(&value[newline + 2..]).map_err(corrupt)?;
    if size > MAX_BODY {
        return Err(CorruptRecord(format!("compressed body claims {size} bytes")));
    }
    let mut raw = Vec::with_capacity(newline + 1 + size);
    raw.extend_from_slice(&value[..=newline]);
    raw.resize(newline + 1 + size, 0);
    let n = lz4_flex::block::decompress_into(block, &mut raw[newline + 1..]).map_err(corrupt)?;
    if n != size {
        return Err(CorruptRecord(format!("compressed body holds {n} bytes, not {size}")));
    }
    StoredRecord::decode_split(Bytes::from(raw), newline)
}

/// A script on one record (`KEYS[1]`) and the indexes (`KEYS[2..8]`): reads
/// the stored head, then runs `body` with the index helpers at hand.
fn record_script(body: &str) -> Lua {
    Lua::new(&format!("local IX = 2\n{READ_VERSION}{INDEX_HELPERS}{INDEX_WRITE}{body}"))
}

/// A Lua script, called by `EVALSHA` with its keys and arguments written
/// straight into one command. redis-rs's `ScriptInvocation` keeps a `Vec`
/// for every argument and copies them all once more into the command: 14
/// of a PUT's 148 allocations.
struct Lua(Script);

impl Lua {
    fn new(code: &str) -> Self {
        Self(Script::new(code))
    }

    /// `EVALSHA` of the script on `keys`; its arguments follow with `arg`.
    fn call(&self, keys: &[&str]) -> Cmd {
        // Room for a record's worth of arguments, so that the buffer does
        // not grow while they are written.
        let data = keys.iter().map(|k| k.len()).sum::<usize>() + 1024;
        let mut cmd = Cmd::with_capacity(3 + keys.len() + 8, data);
        cmd.arg("EVALSHA").arg(self.0.get_hash()).arg(keys.len()).arg(keys);
        cmd
    }

    /// Sends `cmd` (from [`Lua::call`]); when Redis does not hold the
    /// script (NOSCRIPT: after a restart or `SCRIPT FLUSH`), loads it and
    /// sends `cmd` again.
    async fn invoke<T: FromRedisValue>(&self, cmd: &Cmd, conn: &mut MultiplexedConnection) -> RedisResult<T> {
        match cmd.query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.0.load_async(conn).await?;
                cmd.query_async(conn).await
            }
            other => other,
        }
    }
}

/// The keys of the listing indexes (see the module documentation).
#[derive(Debug, Clone)]
struct IndexKeys {
    /// `{prefix}progressd:index`
    all: String,
    /// `{prefix}progressd:expiry`
    expiry: String,
    /// `{prefix}progressd:index:{status}`, in the order of [`Status::ALL`].
    by_status: [String; 5],
    /// Set once records written before the indexes existed are indexed.
    backfilled: String,
}

impl IndexKeys {
    fn new(key_prefix: &str) -> Self {
        Self {
            all: format!("{key_prefix}progressd:index"),
            expiry: format!("{key_prefix}progressd:expiry"),
            by_status: Status::ALL.map(|s| format!("{key_prefix}progressd:index:{}", s.as_str())),
            backfilled: format!("{key_prefix}progressd:index-backfilled"),
        }
    }

    /// The index, the expiry set and the status sets: a script's `KEYS`
    /// from `IX` = 1.
    fn all_keys(&self) -> [&str; 7] {
        let s = &self.by_status;
        [&self.all, &self.expiry, &s[0], &s[1], &s[2], &s[3], &s[4]]
    }

    /// `record_key`, then [`IndexKeys::all_keys`]: a record script's `KEYS`
    /// (`IX` = 2).
    fn with_record<'a>(&'a self, record_key: &'a str) -> [&'a str; 8] {
        let [all, expiry, s0, s1, s2, s3, s4] = self.all_keys();
        [record_key, all, expiry, s0, s1, s2, s3, s4]
    }

    /// The set to walk for one status.
    fn of(&self, status: Status) -> &str {
        &self.by_status[Status::ALL.iter().position(|s| *s == status).expect("ALL holds every status")]
    }
}

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    /// `redis://…` URL (may hold a password: never log it).
    pub url: String,
    /// Prepended to every key.
    pub key_prefix: String,
    /// Most connections the pool opens.
    pub pool_size: usize,
    /// Multiplexed connections held and shared by all requests.
    pub shared_connections: usize,
    /// Bound on connecting, on waiting for the pool and on every operation.
    pub timeout: Duration,
}

/// Redis tier.
pub struct RedisStore {
    pool: Pool,
    key_prefix: String,
    timeout: Duration,
    slots: Vec<Slot>,
    next_slot: AtomicUsize,
    compare_and_set: Lua,
    swap: Lua,
    swap_in_place: Lua,
    compare_and_delete: Lua,
    delete: Lua,
    put_if_newer: Lua,
    delete_incarnation: Lua,
    list: Lua,
    prune_index: Lua,
    backfill_index: Lua,
    changes_channel: String,
    /// The listing indexes: the index, the expiry set, the status sets.
    index_keys: IndexKeys,
    /// The most recent failure, for `/readyz`.
    last_error: LastError,
    /// Whether the connection is `rediss://`.
    tls: bool,
}

/// One held connection, refreshed by one task at a time.
struct Slot {
    held: ArcSwapOption<Held>,
    refreshing: tokio::sync::Mutex<()>,
}

struct Held {
    conn: MultiplexedConnection,
    // Keeps the connection checked out of the pool while requests share it.
    _object: deadpool_redis::Connection,
}

impl RedisStore {
    /// Builds the pool. Connects lazily: a Redis that is down now is not an
    /// error until a request needs it.
    pub fn new(config: RedisStoreConfig) -> Result<Self, String> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| e.to_string())?;
        Self::with_client(config, &client)
    }

    /// [`RedisStore::new`] with the connection `client` describes (its URL
    /// and TLS roots; `config.url` is then only for scrubbing messages).
    pub fn with_client(config: RedisStoreConfig, client: &redis::Client) -> Result<Self, String> {
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.timeout))
            // No per-command timer inside redis-rs: `run` bounds each operation with one.
            .set_response_timeout(None);
        let manager =
            Manager::new_with_config(client.get_connection_info().clone(), connection).map_err(|e| e.to_string())?;
        let timeouts =
            Timeouts { wait: Some(config.timeout), create: Some(config.timeout), recycle: Some(config.timeout) };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(config.shared_connections))
            .timeouts(timeouts)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| e.to_string())?;
        let changes_channel = format!("{}progress:changes", config.key_prefix);
        let slots = (0..config.shared_connections.max(1))
            .map(|_| Slot { held: ArcSwapOption::empty(), refreshing: tokio::sync::Mutex::new(()) })
            .collect();
        Ok(Self {
            pool,
            key_prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            slots,
            next_slot: AtomicUsize::new(0),
            compare_and_set: record_script(COMPARE_AND_SET),
            swap: Lua::new(&with_channel(SWAP, &changes_channel)),
            swap_in_place: Lua::new(&with_channel(SWAP_IN_PLACE, &changes_channel)),
            compare_and_delete: record_script(COMPARE_AND_DELETE),
            delete: Lua::new(&format!("local IX = 2\n{INDEX_HELPERS}{DELETE}")),
            put_if_newer: record_script(PUT_IF_NEWER),
            delete_incarnation: record_script(DELETE_INCARNATION),
            list: Lua::new(LIST),
            prune_index: Lua::new(&format!("local IX = 1\n{INDEX_HELPERS}{PRUNE_INDEX}")),
            backfill_index: Lua::new(&format!("local IX = 1\n{INDEX_HELPERS}{BACKFILL_INDEX}")),
            changes_channel,
            index_keys: IndexKeys::new(&config.key_prefix),
            last_error: LastError::for_url(&config.url),
            tls: matches!(client.get_connection_info().addr(), redis::ConnectionAddr::TcpTls { .. }),
        })
    }

    /// The channel on which every change is announced as `{version}:{id}`
    /// (version 0 for a delete).
    pub fn changes_channel(&self) -> &str {
        &self.changes_channel
    }

    fn key(&self, id: &ProgressId) -> String {
        format!("{}progress:{}", self.key_prefix, id.as_str())
    }

    /// The record key prefix the scripts add ids to.
    fn record_key_prefix(&self) -> String {
        format!("{}progress:", self.key_prefix)
    }

    /// What went wrong connecting, said plainly, with a guess at the cause
    /// when TLS is on one side only.
    fn connect_error(&self, error: &str) -> String {
        let error = error.replace("Error occurred while creating a new object: ", "cannot connect: ");
        let lower = error.to_ascii_lowercase();
        if self.tls && lower.contains("timed out") {
            format!(
                "{error} (no answer to the TLS handshake: if the server does not speak TLS on this port, use redis://)"
            )
        } else if !self.tls && (lower.contains("reset by peer") || lower.contains("broken pipe")) {
            format!("{error} (the server closed a plain-text connection at once: if it expects TLS, use rediss://)")
        } else {
            error
        }
    }

    /// A shared connection, checking one out of the pool if the slot is empty.
    async fn connection(&self) -> Result<(&Slot, Arc<Held>), StoreError> {
        let slot = &self.slots[self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(held) = slot.held.load_full() {
            return Ok((slot, held));
        }
        // Boxed: the pool's checkout future is large, and every operation's
        // future would otherwise carry (and copy) it although it is rarely used.
        Box::pin(self.check_out(slot)).await.map(|held| (slot, held))
    }

    /// Fills an empty slot with a connection from the pool.
    async fn check_out(&self, slot: &Slot) -> Result<Arc<Held>, StoreError> {
        let _refreshing = slot.refreshing.lock().await;
        if let Some(held) = slot.held.load_full() {
            return Ok(held);
        }
        let object = self.pool.get().await.map_err(|e| unavailable(self.connect_error(&e.to_string())))?;
        let held = Arc::new(Held { conn: (*object).clone(), _object: object });
        slot.held.store(Some(held.clone()));
        Ok(held)
    }

    /// Runs one operation on a shared connection within the timeout. A
    /// connection that errs or times out is given up so the next request
    /// gets a fresh one.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let attempt = async {
            let (slot, held) = self.connection().await?;
            match op(held.conn.clone()).await {
                Ok(value) => Ok(value),
                Err(e) => {
                    if is_connection_failure(&e) {
                        slot.held.compare_and_swap(&Some(held), None);
                    }
                    Err(unavailable(e.to_string()))
                }
            }
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                // The server stopped answering; start over on fresh connections.
                for slot in &self.slots {
                    slot.held.store(None);
                }
                Err(unavailable(format!("no answer within {:?}", self.timeout)))
            }
        };
        self.last_error.observe(result)
    }
}

impl RedisStore {
    /// Stores `record` unless Redis already holds its version or a newer
    /// one: how records written to PostgreSQL while Redis was away, or
    /// read back from it, return to Redis without ever moving a version back.
    pub async fn put_if_newer(&self, id: &ProgressId, record: &StoredRecord, ttl_ms: i64) -> Result<bool, StoreError> {
        let key = self.key(id);
        let (script, channel) = (&self.put_if_newer, &self.changes_channel);
        let notice = change_notice(record.version(), id);
        let status = status_of(record)?.as_str();
        let expires = expiry_score(record, ttl_ms);
        let indexes = &self.index_keys;
        let mut cmd = script.call(&indexes.with_record(&key));
        cmd.arg(record.version());
        with_redis_value(record, |value| cmd.arg(value))
            .arg(ttl_ms.max(1))
            .arg(channel)
            .arg(notice)
            .arg(record.meta().c)
            .arg(id.as_str())
            .arg(status)
            .arg(expires);
        let outcome: i64 = self.eval_counted(store_op!("redis", "put_if_newer"), script, &cmd).await?;
        self.script_outcome(id, outcome)
    }

    /// Deletes the record if Redis holds the incarnation created at
    /// `created_at` or an older one, never a record created after it: how a
    /// delete PostgreSQL took while Redis was away reaches Redis.
    pub async fn delete_incarnation(&self, id: &ProgressId, created_at: Timestamp) -> Result<bool, StoreError> {
        let key = self.key(id);
        let (script, channel, notice) = (&self.delete_incarnation, &self.changes_channel, change_notice(0, id));
        let mut cmd = script.call(&self.index_keys.with_record(&key));
        cmd.arg(created_at.millis()).arg(channel).arg(notice).arg(id.as_str());
        let outcome: i64 = self.eval_counted(store_op!("redis", "delete_incarnation"), script, &cmd).await?;
        self.script_outcome(id, outcome)
    }

    /// Maps a script's 1 / 0 / -1 to stored / refused / not ours.
    fn script_outcome(&self, id: &ProgressId, outcome: i64) -> Result<bool, StoreError> {
        match outcome {
            1 => Ok(true),
            0 => Ok(false),
            _ => {
                Err(CorruptRecord(format!("key {} holds something that is not a progress record", self.key(id))).into())
            }
        }
    }
}

/// Maintenance: scans by key pattern (SCAN, never KEYS) and the cleanup lock.
impl RedisStore {
    /// One SCAN step over the records whose id starts with `id_prefix`,
    /// from `cursor` (0 to begin): the next cursor (0 at the end) and the
    /// records found, read with one MGET. Keys that are not records of ours
    /// are skipped.
    pub async fn scan_page(
        &self,
        cursor: u64,
        id_prefix: &str,
    ) -> Result<(u64, Vec<(ProgressId, StoredRecord)>), StoreError> {
        let record_key_start = format!("{}progress:", self.key_prefix);
        let pattern = format!("{}{id_prefix}*", glob_escape(&record_key_start));
        let (next, keys): (u64, Vec<String>) = self
            .run(|mut conn| async move {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(MAINTENANCE_BATCH)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let ids: Vec<(String, Option<ProgressId>)> = keys
            .into_iter()
            .map(|key| {
                let id = key.strip_prefix(&record_key_start).and_then(|id| ProgressId::parse(id).ok());
                (key, id)
            })
            .collect();
        let keys: Vec<&str> = ids.iter().filter(|(_, id)| id.is_some()).map(|(key, _)| key.as_str()).collect();
        if keys.is_empty() {
            return Ok((next, Vec::new()));
        }
        let values: Vec<Option<Vec<u8>>> =
            self.run(|mut conn| async move { redis::cmd("MGET").arg(&keys).query_async(&mut conn).await }).await?;
        let records = ids
            .into_iter()
            .filter_map(|(_, id)| id)
            .zip(values)
            .filter_map(|(id, value)| match from_redis(value?) {
                Ok(stored) => Some((id, stored)),
                Err(e) => {
                    tracing::debug!(id = %id, error = %e, "scan skips a key that is not a record");
                    None
                }
            })
            .collect();
        Ok((next, records))
    }

    /// Which of `ids` Redis holds.
    pub async fn exists_many(&self, ids: &[ProgressId]) -> Result<Vec<bool>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("EXISTS").arg(self.key(id));
        }
        self.run(|mut conn| async move { pipe.query_async(&mut conn).await }).await
    }

    /// Takes the cleanup lock (`SET NX PX`) for `hold`; `None` when another
    /// instance holds it, else the token that releases it.
    async fn lock_cleanup(&self, hold: Duration) -> Result<Option<String>, StoreError> {
        let key = self.cleanup_lock_key();
        let token = format!("{}-{}", std::process::id(), Timestamp::now().millis());
        let millis = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .run(|mut conn| {
                let (key, token) = (key.clone(), token.clone());
                async move {
                    redis::cmd("SET").arg(key).arg(token).arg("NX").arg("PX").arg(millis).query_async(&mut conn).await
                }
            })
            .await?;
        Ok(set.map(|_| token))
    }

    /// Releases the cleanup lock if `token` still holds it.
    async fn unlock_cleanup(&self, token: &str) -> Result<(), StoreError> {
        let key = self.cleanup_lock_key();
        let script =
            Lua::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0");
        let mut cmd = script.call(&[&key]);
        cmd.arg(token);
        let _: i64 = self.eval(&script, &cmd).await?;
        Ok(())
    }

    /// Outside the `progress:` key space, so no record id can collide with it.
    fn cleanup_lock_key(&self) -> String {
        format!("{}progressd:cleanup-lock", self.key_prefix)
    }
}

/// The listing indexes' upkeep (the cleanup side; writes keep them in step).
impl RedisStore {
    /// Removes index entries of records that expired (or were replaced by
    /// another incarnation), in batches of [`MAINTENANCE_BATCH`]; how many.
    async fn prune_index(&self) -> Result<u64, StoreError> {
        let (script, record_keys) = (&self.prune_index, self.record_key_prefix());
        let mut pruned = 0;
        loop {
            let now = Timestamp::now().millis();
            let mut cmd = script.call(&self.index_keys.all_keys());
            cmd.arg(now).arg(MAINTENANCE_BATCH).arg(&record_keys);
            let (n, examined): (u64, usize) =
                self.eval_counted(store_op!("redis", "prune_index"), script, &cmd).await?;
            pruned += n;
            if examined < MAINTENANCE_BATCH {
                return Ok(pruned);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Once per key prefix: indexes the records written before the listing
    /// indexes existed (found with SCAN), then sets a marker key.
    async fn backfill_index(&self) -> Result<(), StoreError> {
        let marker = self.index_keys.backfilled.clone();
        let done: bool = self
            .run(|mut conn| {
                let marker = marker.clone();
                async move { redis::cmd("EXISTS").arg(marker).query_async(&mut conn).await }
            })
            .await?;
        if done {
            return Ok(());
        }
        let record_keys = self.record_key_prefix();
        let pattern = format!("{}*", glob_escape(&record_keys));
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .run(|mut conn| {
                    let pattern = pattern.clone();
                    async move {
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(MAINTENANCE_BATCH)
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await?;
            let ids: Vec<&str> = keys
                .iter()
                .filter_map(|key| key.strip_prefix(&record_keys))
                .filter(|id| ProgressId::parse(id).is_ok())
                .collect();
            if !ids.is_empty() {
                let script = &self.backfill_index;
                let mut cmd = script.call(&self.index_keys.all_keys());
                cmd.arg(&record_keys).arg(&ids);
                let _: u64 = self.eval(script, &cmd).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
            tokio::task::yield_now().await;
        }
        self.run(|mut conn| async move { redis::cmd("SET").arg(marker).arg(1).query_async::<()>(&mut conn).await })
            .await
    }
}

/// Longest the Redis cleanup lock is held if its holder dies before releasing it.
const CLEANUP_LOCK_HOLD: Duration = Duration::from_secs(60);

impl RedisStore {
    /// [`RedisStore::run`], counted as one `op` in the store metrics.
    async fn run_counted<T, F, Fut>(&self, op: &StoreOp, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        op.observe(self.run(f)).await
    }

    /// Runs `script` with `cmd` (from [`Lua::call`]).
    async fn eval<T: FromRedisValue>(&self, script: &Lua, cmd: &Cmd) -> Result<T, StoreError> {
        self.run(|mut conn| async move { script.invoke(cmd, &mut conn).await }).await
    }

    /// [`RedisStore::eval`], counted as one `op` in the store metrics.
    async fn eval_counted<T: FromRedisValue>(&self, op: &StoreOp, script: &Lua, cmd: &Cmd) -> Result<T, StoreError> {
        op.observe(self.eval(script, cmd)).await
    }
}

/// Redis failed; a reason that names a misconfiguration gets a hint.
fn unavailable(reason: String) -> StoreError {
    StoreError::Unavailable { tier: "redis", reason: crate::tls::with_hint(crate::tls::Store::Redis, reason) }
}

/// A record's member in the listing indexes: `<created ms, 15 digits>:<id>`
/// (what the scripts' `member_of` builds).
fn index_member(created_ms: i64, id: &ProgressId) -> String {
    super::listing::padded_member(created_ms, id.as_str())
}

/// The change notice of a write: `{version}:{id}` (`0:{id}` for a delete).
fn change_notice(version: u64, id: &ProgressId) -> String {
    super::listing::number_colon(version, 0, id.as_str())
}

/// The score of a record in the expiry set: its `expires_at` in ms, or for
/// a header from before it carried one, now plus the TTL.
fn expiry_score(record: &StoredRecord, ttl_ms: i64) -> i64 {
    match record.meta().x {
        x if x > 0 => x,
        _ => Timestamp::now().millis().saturating_add(ttl_ms.max(1)),
    }
}

/// The expiry set's score for a write that replaces `current`, or 0 to
/// leave the member's score alone. The score only has to be a lower bound
/// of when the key expires: cleanup examines the member at that time and,
/// finding the record alive (its TTL was extended since), rescores it by
/// its TTL. So a write that moves the expiry later (almost every write)
/// skips the `ZADD`; a create or a write that moves it earlier sets it.
fn expiry_to_set(current: Option<&StoredRecord>, record: &StoredRecord, ttl_ms: i64) -> i64 {
    match current.map(|c| c.meta().x) {
        Some(was) if was > 0 && record.meta().x >= was => 0,
        _ => expiry_score(record, ttl_ms),
    }
}

fn is_connection_failure(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

#[async_trait]
impl ProgressStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn report_metrics(&self) {
        let pool = self.pool.status();
        crate::metrics::set_pool("redis", pool.size, pool.available, pool.max_size, pool.waiting);
    }

    async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        let key = self.key(id);
        let raw: Option<Vec<u8>> = self
            .run_counted(store_op!("redis", "get"), |mut conn| async move {
                redis::cmd("GET").arg(&key).query_async(&mut conn).await
            })
            .await?;
        raw.map(|bytes| from_redis(bytes).map_err(StoreError::from)).transpose()
    }

    async fn compare_and_set(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = self.key(id);
        let script = &self.compare_and_set;
        let channel = &self.changes_channel;
        let notice = change_notice(record.version(), id);
        let status = status_of(record)?.as_str();
        let expires = expiry_score(record, ttl_ms);
        let indexes = &self.index_keys;
        let mut cmd = script.call(&indexes.with_record(&key));
        cmd.arg(expected);
        with_redis_value(record, |value| cmd.arg(value))
            .arg(ttl_ms.max(1))
            .arg(channel)
            .arg(notice)
            .arg(id.as_str())
            .arg(record.meta().c)
            .arg(status)
            .arg(expires);
        let outcome: i64 = self.eval_counted(store_op!("redis", "compare_and_set"), script, &cmd).await?;
        self.script_outcome(id, outcome)
    }

    async fn compare_and_swap(
        &self,
        id: &ProgressId,
        current: Option<&StoredRecord>,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let created = record.meta().c;
        // A header from before records carried their creation time, or a
        // write that starts a new incarnation over an old one: the general
        // script, which works the index changes out from what Redis holds.
        if created == 0 || current.is_some_and(|c| c.meta().c != created) {
            return self.compare_and_set(id, current.map_or(0, StoredRecord::version), record, ttl_ms).await;
        }
        let key = self.key(id);
        let status = status_of(record)?;
        let old_status = match current {
            Some(current) => status_of(current)?,
            None => status,
        };
        let expected: &[u8] = current.map_or(&[], StoredRecord::header);
        let notice = change_notice(record.version(), id);
        let expires = expiry_to_set(current, record, ttl_ms);
        let (script, cmd) = if !expected.is_empty() && old_status == status && expires == 0 {
            let script = &self.swap_in_place;
            let mut cmd = script.call(&[&key]);
            cmd.arg(expected).arg(expected.len() - 1);
            with_redis_value(record, |value| cmd.arg(value)).arg(ttl_ms.max(1)).arg(notice);
            (script, cmd)
        } else {
            let (script, indexes) = (&self.swap, &self.index_keys);
            let mut cmd =
                script.call(&[&key, &indexes.all, &indexes.expiry, indexes.of(old_status), indexes.of(status)]);
            cmd.arg(expected);
            with_redis_value(record, |value| cmd.arg(value))
                .arg(ttl_ms.max(1))
                .arg(notice)
                .arg(index_member(created, id))
                .arg(expires)
                .arg(expected.len().saturating_sub(1));
            (script, cmd)
        };
        let outcome: i64 = self.eval_counted(store_op!("redis", "compare_and_set"), script, &cmd).await?;
        self.script_outcome(id, outcome)
    }

    async fn compare_and_delete(&self, id: &ProgressId, expected: u64) -> Result<bool, StoreError> {
        let key = self.key(id);
        let script = &self.compare_and_delete;
        let (channel, notice) = (&self.changes_channel, change_notice(0, id));
        let mut cmd = script.call(&self.index_keys.with_record(&key));
        cmd.arg(expected).arg(channel).arg(notice).arg(id.as_str());
        let outcome: i64 = self.eval_counted(store_op!("redis", "compare_and_delete"), script, &cmd).await?;
        self.script_outcome(id, outcome)
    }

    async fn ping(&self) -> Result<Duration, StoreError> {
        let started = std::time::Instant::now();
        let _: String = self
            .run_counted(store_op!("redis", "ping"), |mut conn| async move {
                redis::cmd("PING").query_async(&mut conn).await
            })
            .await?;
        Ok(started.elapsed())
    }

    async fn delete(&self, id: &ProgressId) -> Result<bool, StoreError> {
        let key = self.key(id);
        let (script, channel, notice) = (&self.delete, &self.changes_channel, change_notice(0, id));
        let mut cmd = script.call(&self.index_keys.with_record(&key));
        cmd.arg(channel).arg(notice).arg(id.as_str());
        let removed: i64 = self.eval_counted(store_op!("redis", "delete"), script, &cmd).await?;
        Ok(removed > 0)
    }

    async fn health(&self) -> Vec<TierHealth> {
        let (probe, latency) = timed(self.ping()).await;
        vec![TierHealth::from_probe("redis", probe, latency, &self.last_error)]
    }

    async fn cleanup(&self, exclusive: bool) -> Result<Option<CleanupReport>, StoreError> {
        let token = if exclusive {
            match self.lock_cleanup(CLEANUP_LOCK_HOLD).await? {
                Some(token) => Some(token),
                None => return Ok(None),
            }
        } else {
            None
        };
        // Keys expire by themselves (every write sets a TTL); what outlives
        // them is their entries in the listing indexes.
        let pruned = async {
            self.backfill_index().await?;
            self.prune_index().await
        }
        .await;
        if let Some(token) = token {
            self.unlock_cleanup(&token).await?;
        }
        Ok(Some(CleanupReport { redis_orphaned_index_entries: Some(pruned?), ..CleanupReport::default() }))
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        let start = query.after.as_ref().map_or_else(|| "+".to_owned(), |c| format!("({}", c.index_member()));
        let sources: Vec<&str> = if query.statuses.is_empty() {
            vec![&self.index_keys.all]
        } else {
            query.statuses.iter().map(|s| self.index_keys.of(*s)).collect()
        };
        let prefix = query.id_prefix.as_deref().unwrap_or("");
        let record_keys = self.record_key_prefix();
        let (script, limit, budget) = (&self.list, query.limit, query.budget());
        let mut cmd = script.call(&sources);
        cmd.arg(start).arg(limit).arg(budget).arg(prefix).arg(record_keys);
        let reply: Vec<Vec<u8>> = self.eval_counted(store_op!("redis", "list"), script, &cmd).await?;
        let mut reply = reply.into_iter();
        let next = reply.next().filter(|m| !m.is_empty());
        let mut page = ListPage {
            items: Vec::with_capacity(reply.len() / 2),
            next: next.and_then(|m| ListCursor::from_index_member(std::str::from_utf8(&m).ok()?)),
        };
        while let (Some(member), Some(value)) = (reply.next(), reply.next()) {
            let member = String::from_utf8_lossy(&member);
            let listed = ListCursor::from_index_member(&member)
                .and_then(|c| ProgressId::parse(&c.id).ok())
                .ok_or_else(|| CorruptRecord(format!("index member {member:?} is not <created>:<id>")))
                .and_then(|id| Ok((id, from_redis(value)?)));
            let (id, stored) = match listed {
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(member = %member, error = %e, "listing skips a key that is not a record");
                    continue;
                }
            };
            // The status sets follow every write; this only guards against
            // entries left by writers that did not keep them.
            if query.statuses.is_empty() || status_of(&stored).is_ok_and(|s| query.matches_status(s)) {
                page.items.push((id, stored));
            }
        }
        Ok(page)
    }

    async fn delete_matching(&self, filter: &RecordFilter) -> Result<u64, StoreError> {
        let prefix = filter.id_prefix.as_deref().unwrap_or("");
        let (mut cursor, mut deleted) = (0, 0);
        loop {
            let (next, page) = self.scan_page(cursor, prefix).await?;
            deleted += delete_page(self, page, filter).await?.len() as u64;
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
            tokio::task::yield_now().await;
        }
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        let (mut cursor, mut counts) = (0, StatusCounts::new("redis"));
        loop {
            let (next, page) = self.scan_page(cursor, "").await?;
            for (_, stored) in &page {
                counts.add(status_of(stored)?, 1);
            }
            if next == 0 {
                return Ok(counts);
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClientFields, Touched, WritePolicy, next_record};

    fn record(body: serde_json::Value) -> StoredRecord {
        let id = ProgressId::parse("job").unwrap();
        let fields = ClientFields::from_json(&body, 3600).unwrap();
        let touched = Touched::replace(&fields);
        let policy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1000 };
        let (record, meta) = next_record(&id, None, fields, touched, Timestamp(1_700_000_000_000), &policy);
        StoredRecord::encode(&meta, &record)
    }

    #[test]
    fn index_members_and_notices_are_what_format_gives() {
        let id = ProgressId::parse("a.b:c-1").unwrap();
        for created in
            [0, 7, 1_700_000_000_000, 999_999_999_999_999, 1_000_000_000_000_000, i64::MAX, -1, -42, i64::MIN]
        {
            assert_eq!(index_member(created, &id), format!("{created:015}:a.b:c-1"), "{created}");
        }
        for version in [0, 1, 10, 9_007_199_254_740_993, u64::MAX] {
            assert_eq!(change_notice(version, &id), format!("{version}:a.b:c-1"));
        }
    }

    fn large() -> StoredRecord {
        let children: serde_json::Map<_, _> = (0..5)
            .map(|i| {
                (
                    format!("child-{i}"),
                    serde_json::json!({"title": format!("Step {i}"), "status": "running", "current": i, "total": 10}),
                )
            })
            .collect();
        record(serde_json::json!({"status": "running", "message": "x".repeat(200), "children": children}))
    }

    #[test]
    fn a_large_body_is_stored_compressed_and_reads_back_byte_for_byte() {
        let stored = large();
        let value = with_redis_value(&stored, <[u8]>::to_vec);
        assert!(value.len() < stored.raw().len(), "{} !< {}", value.len(), stored.raw().len());
        assert!(value.starts_with(stored.header()), "the header line stays readable by the scripts");
        assert_eq!(value[stored.header().len()], COMPRESSED);
        assert!(
            std::str::from_utf8(stored.header()).unwrap().contains(r#""t":"running""#),
            "the header carries the status"
        );
        let back = from_redis(value).unwrap();
        assert_eq!(back.raw(), stored.raw());
        assert_eq!(back.meta(), stored.meta());
    }

    #[test]
    fn records_of_any_size_one_after_another_read_back() {
        // Past 64 KB the compression buffer is not the thread's kept one;
        // a small record after a large one reuses a longer buffer.
        for len in [400, 150_000, 3_000, 90_000, 300, 200_000] {
            let text: String = (0..len).map(|i| char::from(b'a' + (i * 7 % 26) as u8)).collect();
            let stored = record(serde_json::json!({"status": "running", "result": {"text": text}}));
            let value = with_redis_value(&stored, <[u8]>::to_vec);
            assert_eq!(value[stored.header().len()], COMPRESSED, "{len}");
            assert_eq!(from_redis(value).unwrap().raw(), stored.raw(), "{len}");
        }
    }

    #[test]
    fn a_small_body_and_a_plain_value_are_stored_and_read_as_they_are() {
        let stored = StoredRecord::decode(Bytes::from_static(b"{\"v\":1,\"s\":0}\n{\"id\":\"a\"}")).unwrap();
        assert_eq!(with_redis_value(&stored, <[u8]>::to_vec), stored.raw().as_ref());
        // A large record stored plain (before compression) still reads.
        let plain = large();
        assert_eq!(from_redis(plain.raw().to_vec()).unwrap().raw(), plain.raw());
    }

    #[test]
    fn a_corrupt_compressed_value_is_refused_not_trusted() {
        let stored = large();
        let value = with_redis_value(&stored, <[u8]>::to_vec);
        let at = stored.header().len() + 1;
        // Truncated block.
        assert!(from_redis(value[..value.len() - 10].to_vec()).is_err());
        // A length far beyond any body: refused before allocating it.
        let mut huge = value.clone();
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = from_redis(huge).unwrap_err();
        assert!(err.0.contains("claims"), "{err}");
        // A wrong length: the block holds another size.
        let mut wrong = value.clone();
        let size = u32::from_le_bytes(wrong[at..at + 4].try_into().unwrap());
        wrong[at..at + 4].copy_from_slice(&(size + 7).to_le_bytes());
        assert!(from_redis(wrong).is_err());
        // Garbage after the marker, and no length at all.
        let mut garbage = stored.header().to_vec();
        garbage.extend_from_slice(b"~\x05\x00\x00\x00\xff\xff\xff");
        assert!(from_redis(garbage).is_err());
        let mut bare = stored.header().to_vec();
        bare.push(COMPRESSED);
        assert!(from_redis(bare).is_err());
    }
}

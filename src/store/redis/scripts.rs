//! The Lua scripts that make each write, delete and index change one
//! atomic step in Redis, and how they are assembled and called.
//!
//! The scripts live in `scripts/*.lua`, built into the binary with
//! `include_str!`. Three of them are fragments that other scripts start
//! with, sharing their locals:
//! - `read_version.lua` sets `current`, `created` and `old_status` from the
//!   stored record's header line;
//! - `index_helpers.lua` names the listing indexes in `KEYS` from `KEYS[IX]`
//!   (`IX` is set by a first line the assembly adds) and unindexes a member;
//! - `index_write.lua` keeps the indexes in step with a write, using both.
//!
//! Every script that stores a record also sets its gone marker (the last
//! key, to the last two arguments: `x<expiry ms>` and a TTL of the record's
//! plus the tombstone time), and every delete script sets it to `d<now ms>`
//! with the tombstone time (or removes it when that is 0); see
//! `tombstones.rs`. `delete_incarnation` removes it.
//!
//! Each part is sent after a newline, as these scripts always were, and
//! two of them ([`SWAP`], [`SWAP_IN_PLACE`]) start with the channel they
//! announce on as a literal ([`with_channel`]). The text is what Redis
//! names a script by (its SHA1, for `EVALSHA`), and what it hashes and
//! parses: the test below pins it.

use std::fmt::Write as _;

use redis::aio::MultiplexedConnection;
use redis::{Cmd, FromRedisValue, RedisResult, Script};

/// A script file from `scripts/`, after the newline each part starts with.
macro_rules! part {
    ($file:literal) => {
        concat!("\n", include_str!(concat!("scripts/", $file)))
    };
}

/// Reads the stored version into `current` (0: absent), the creation time
/// into `created` and the status into `old_status` from the header line
/// (records written before the header carried the status: from the head of
/// the body, `{"id":…,"version":…,"status":"…"`, never compressed then),
/// never decoding the document; returns -1 from the script when the key
/// holds something that is not ours. 512 bytes hold the header and a
/// 128-character id.
const READ_VERSION: &str = part!("read_version.lua");

/// The listing indexes in a script's `KEYS`, from `KEYS[IX]` (the script
/// sets `IX`): the index, the expiry set, then the status sets in the order
/// of `Status::ALL`.
const INDEX_HELPERS: &str = part!("index_helpers.lua");

/// Keeps the indexes in step with a write; after [`READ_VERSION`] and
/// [`INDEX_HELPERS`] (whose locals it uses).
const INDEX_WRITE: &str = part!("index_write.lua");

/// Stores `ARGV[2]` with TTL `ARGV[3]` ms when the stored version equals
/// `ARGV[1]` (0: absent), indexes it (id `ARGV[6]`, created `ARGV[7]`,
/// status `ARGV[8]`, expiry `ARGV[9]`), and announces `ARGV[5]` on channel
/// `ARGV[4]`. 1 when stored, 0 on a version mismatch.
const COMPARE_AND_SET: &str = part!("compare_and_set.lua");

/// The compare-and-set of a write that read the record it replaces: stores
/// `ARGV[2]` with TTL `ARGV[3]` ms when the key holds a record whose header
/// line is `ARGV[1]` (the header and its newline, exactly as read: the
/// version, and the creation time that tells incarnations apart; its last
/// byte is at `ARGV[7]`), or when `ARGV[1]` is empty and the key does not
/// exist. The caller knows that record, so it passes what the indexes
/// need: the member `ARGV[5]` (the same before and after), the status sets
/// `KEYS[4]` (the old status; the new one for a create) and `KEYS[5]` (the
/// new status), the expiry score `ARGV[6]` (0: leave it; see
/// `keys::expiry_to_set`); `KEYS[2]` is the index, `KEYS[3]` the expiry set.
/// Announces `ARGV[4]` on the channel the script is built with
/// ([`with_channel`]). 1 when stored, 0 otherwise.
///
/// No decoding in Lua at all: a GETRANGE of the header's length and one
/// string comparison. No number is handed to `redis.call` (see
/// [`SWAP_IN_PLACE`]).
const SWAP: &str = part!("swap.lua");

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
/// (`bench/redis_cost.sh`, a 785-byte record; see bench/README.md, "redis_cost.sh results").
const SWAP_IN_PLACE: &str = part!("swap_in_place.lua");

/// Deletes the key when the stored version equals `ARGV[1]`, unindexes id
/// `ARGV[4]`, and announces `ARGV[3]` on channel `ARGV[2]`. 1 when deleted,
/// 0 on a mismatch or when absent.
const COMPARE_AND_DELETE: &str = part!("compare_and_delete.lua");

/// Stores `ARGV[2]` with TTL `ARGV[3]` ms unless Redis already holds
/// version `ARGV[1]` of the incarnation created at `ARGV[6]`, or something
/// newer (a later incarnation, or a higher version of the same one);
/// indexes it (id `ARGV[7]`, status `ARGV[8]`, expiry `ARGV[9]`) and
/// announces `ARGV[5]` on channel `ARGV[4]`. 1 when stored, 0 otherwise.
/// Sets the gone marker `KEYS[9]` to `ARGV[10]` with TTL `ARGV[11]` ms.
/// `ARGV[12]` = `1`: the same version is replaced too (the copy-back).
const PUT_IF_NEWER: &str = part!("put_if_newer.lua");

/// Deletes the key when it holds the incarnation created at `ARGV[1]` or an
/// older one, unindexes id `ARGV[4]`, and announces `ARGV[3]` on channel
/// `ARGV[2]`. 1 when deleted.
const DELETE_INCARNATION: &str = part!("delete_incarnation.lua");

/// Deletes the key whatever its version (unindexing id `ARGV[3]` when it is
/// a record of ours) and announces `ARGV[2]` on channel `ARGV[1]`. The
/// number of keys deleted.
const DELETE: &str = part!("delete.lua");

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
const LIST: &str = part!("list.lua");

/// Prunes the listing indexes: walks the expiry set up to `ARGV[1]` ms (at
/// most `ARGV[2]` members) and removes from every index the members whose
/// key (`ARGV[3]` .. id) is gone or holds another incarnation; a member
/// whose record lives on (its TTL was extended) is rescored by its TTL.
/// `KEYS`: the indexes (`IX` = 1). Returns {pruned, examined}.
const PRUNE_INDEX: &str = part!("prune_index.lua");

/// Indexes records written before the indexes existed: for each id of
/// `ARGV[2..]` whose key (`ARGV[1]` .. id) holds a record of ours, adds
/// its members unless present. `KEYS` as for [`PRUNE_INDEX`]. Returns how
/// many records were indexed.
const BACKFILL_INDEX: &str = part!("backfill_index.lua");

/// Releases the cleanup lock `KEYS[1]` if it still holds the token `ARGV[1]`.
const UNLOCK_CLEANUP: &str = include_str!("scripts/unlock_cleanup.lua");

/// Every script a [`super::RedisStore`] runs, built once.
pub(super) struct Scripts {
    pub(super) compare_and_set: Lua,
    pub(super) swap: Lua,
    pub(super) swap_in_place: Lua,
    pub(super) compare_and_delete: Lua,
    pub(super) delete: Lua,
    pub(super) put_if_newer: Lua,
    pub(super) delete_incarnation: Lua,
    pub(super) list: Lua,
    pub(super) prune_index: Lua,
    pub(super) backfill_index: Lua,
}

impl Scripts {
    /// The scripts of a store whose change notices go to `changes_channel`.
    pub(super) fn new(changes_channel: &str) -> Self {
        Self {
            compare_and_set: record_script(COMPARE_AND_SET),
            swap: Lua::new(&with_channel(SWAP, changes_channel)),
            swap_in_place: Lua::new(&with_channel(SWAP_IN_PLACE, changes_channel)),
            compare_and_delete: record_script(COMPARE_AND_DELETE),
            delete: Lua::new(&format!("local IX = 2\n{INDEX_HELPERS}{DELETE}")),
            put_if_newer: record_script(PUT_IF_NEWER),
            delete_incarnation: record_script(DELETE_INCARNATION),
            list: Lua::new(LIST),
            prune_index: Lua::new(&format!("local IX = 1\n{INDEX_HELPERS}{PRUNE_INDEX}")),
            backfill_index: Lua::new(&format!("local IX = 1\n{INDEX_HELPERS}{BACKFILL_INDEX}")),
        }
    }

    /// The script that releases the cleanup lock.
    pub(super) fn unlock_cleanup() -> Lua {
        Lua::new(UNLOCK_CLEANUP.trim_end())
    }
}

/// A script on one record (`KEYS[1]`) and the indexes (`KEYS[2..8]`): reads
/// the stored head, then runs `body` with the index helpers at hand.
fn record_script(body: &str) -> Lua {
    Lua::new(&format!("local IX = 2\n{READ_VERSION}{INDEX_HELPERS}{INDEX_WRITE}{body}"))
}

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

/// A Lua script, called by `EVALSHA` with its keys and arguments written
/// straight into one command. redis-rs's `ScriptInvocation` keeps a `Vec`
/// for every argument and copies them all once more into the command: 14
/// of a PUT's 148 allocations.
pub(super) struct Lua(Script);

impl Lua {
    fn new(code: &str) -> Self {
        Self(Script::new(code))
    }

    /// `EVALSHA` of the script on `keys`; its arguments follow with `arg`.
    pub(super) fn call(&self, keys: &[&str]) -> Cmd {
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
    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        conn: &mut MultiplexedConnection,
    ) -> RedisResult<T> {
        match cmd.query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.0.load_async(conn).await?;
                cmd.query_async(conn).await
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each script hashes to (SHA1, the name `EVALSHA` calls it by):
    /// the text Redis receives, pinned. A change to a script changes its
    /// hash here, on purpose (the last: the gone markers of issue 19).
    #[test]
    fn the_scripts_reaching_redis_are_pinned() {
        for (channel, swap, swap_in_place) in [
            (
                "test:progress:changes",
                "e556b369a61289c68f8e720da211c9351a5d9d94",
                "0b1baab434ccd1dbc26bd194148868bdcf2ce98a",
            ),
            (
                "progress:changes",
                "f320724493975a5a75e1495d818f172a792d3fc6",
                "0aaa1c79415187962991d1d58895b4c38f1c0585",
            ),
            (
                "a b{}\"é\\progress:changes",
                "f8a4d97222d20330d6a77800861007bc97d8b016",
                "93368cb584fbefb51ff21c03bafd38a5f97f182d",
            ),
        ] {
            let scripts = Scripts::new(channel);
            for (name, script, sha) in [
                ("compare_and_set", &scripts.compare_and_set, "865733fc0f39ed4caaae8be784961106d07fdec6"),
                ("swap", &scripts.swap, swap),
                ("swap_in_place", &scripts.swap_in_place, swap_in_place),
                ("compare_and_delete", &scripts.compare_and_delete, "5cfe5b2b0afd300146010aca7dc70dde1f7af9f1"),
                ("delete", &scripts.delete, "eac320dcad86108f69cf33ff4c88962646357505"),
                ("put_if_newer", &scripts.put_if_newer, "f986367db9c6aa3f0eaf6564defe37b3e544dd21"),
                ("delete_incarnation", &scripts.delete_incarnation, "fbafbe8975490f4e62834c63e28c542e6b3dd7a7"),
                ("list", &scripts.list, "a3b5d3b9b1ff0947fc3c27aabed87932da2f64de"),
                ("prune_index", &scripts.prune_index, "cd14f63ebe44a3becde20735a228c5841e133b5d"),
                ("backfill_index", &scripts.backfill_index, "fedccd89e539a027526b419525fc8a5d753319ce"),
                ("unlock_cleanup", &Scripts::unlock_cleanup(), "6fbe84d1140fd2047394924af9d845b83c070bec"),
            ] {
                assert_eq!(script.0.get_hash(), sha, "{name} (channel {channel:?})");
            }
        }
    }

    #[test]
    fn a_channel_becomes_a_lua_literal_whatever_it_holds() {
        assert_eq!(lua_string_literal("p-1_x:progress.changes"), "\"p-1_x:progress.changes\"");
        assert_eq!(lua_string_literal("a b\"\\é"), "\"a\\032b\\034\\092\\195\\169\"");
    }
}

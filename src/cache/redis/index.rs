//! Redis key names and the purge indexes: which commands a write adds so
//! that URL, path, prefix and tag purges never need `KEYS` or `SCAN`.
//!
//! Keys (`P` = `cache.redis.key_prefix`, default `strata:`):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `Po:{hash}` | string | the encoded [`Object`](crate::cache::entry::Object) (`hash` = 32 hex digits of the key's 128-bit hash), `PX keep` |
//! | `P{paths}` | sorted set, all scores 0 | `"{path?query}\0Po:{hash}"` for every stored object: lexicographic, so `ZRANGEBYLEX` finds one path (`[p\0` .. `[p\0\xff`) or a prefix (`[p` .. `[p\xff`) |
//! | `P{paths}:exp` | sorted set | the same members scored by expiry (unix ms), so expired members are swept |
//! | `Pt:{tag}` | sorted set | object keys carrying the tag, scored by expiry; no expiry of its own: deleted by the sweep once its newest member expired |
//! | `P{tags}` | sorted set | every tag, scored by its set's newest expiry (unix ms), so the sweep finds expired tag sets |
//! | `Ppurge` | pub/sub channel | fleet-wide purges |
//! | `Phot` | sorted set | URLs scored by sampled hits (popularity, for `[warming] redis_hot`) |
//!
//! Consistency: a write sets the object first and indexes it after. A
//! purge reads a page of members with their scores (expiry, unique to each
//! write), deletes their objects, then removes each member only if its
//! score is still the one read: a write that stored an object again in
//! between (and so re-added, that is re-scored, its member) stays indexed.
//! Removed unconditionally, its member went while the new copy stayed, and
//! no later purge could find it. Whatever the interleaving, an object that
//! exists is indexed (an index member without an object is harmless:
//! deleting it counts nothing): a write runs to its end detached from its
//! time bound, and deletes the object again when its index commands fail. The two path sets change together in one
//! Lua script, so a sweep never drops a member a concurrent write renewed.
//!
//! Only objects (and rate-limit budgets) carry an expiry: the indexes
//! have none, so Redis's `volatile-*` eviction policies evict objects and
//! never an index, and a purge finds every object Redis still holds.
//! Under `allkeys-*` Redis may evict an index and keep its objects, which
//! purges then miss: Strata warns at connect (`eviction.rs`).
//!
//! Cluster mode: objects spread over all slots; every command touches one
//! key, or (scripts) both path sets, which share a slot through the
//! `{paths}` hash tag. The path sets therefore live in one slot (one master
//! takes every write's index update) and each tag set in its own slot:
//! acceptable for a cache whose writes are misses.

use std::collections::BTreeSet;

use bytes::Bytes;
use futures_util::future::try_join_all;
use redis::{Cmd, RedisResult, Value};

use super::conn::Conn;
use crate::cache::entry::Object;
use crate::cache::key::CacheKey;

/// Index members are swept this long after their expiry, so that clock
/// skew between instances and Redis never drops a live object's member.
pub(crate) const SWEEP_GRACE_MS: u64 = 60_000;
/// Members read and removed per purge or sweep round.
pub(crate) const PAGE: usize = 500;

/// Adds one member to both path sets, scored by its expiry; a score
/// equal to the one it has (two writes in one millisecond) is moved on by
/// one, so that every write re-scores its member (see the module doc).
const PATHS_ADD: &str = "local s = tonumber(ARGV[2]) \
if tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or -1) == s then s = s + 1 end \
redis.call('ZADD', KEYS[1], 0, ARGV[1]) redis.call('ZADD', KEYS[2], s, ARGV[1]) return 1";

/// Removes members from both path sets.
const PATHS_REMOVE: &str = "if #ARGV > 0 then redis.call('ZREM', KEYS[1], unpack(ARGV)) \
redis.call('ZREM', KEYS[2], unpack(ARGV)) end return #ARGV";

/// One page (ARGV[3] members) of the path set between ARGV[1] and ARGV[2]
/// (`ZRANGEBYLEX` bounds), each member followed by its expiry score as
/// the expiry set holds it (`""` when it holds none).
const PATHS_PAGE_SCORED: &str = "local m = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3])) \
local out = {} for _, v in ipairs(m) do out[#out + 1] = v \
out[#out + 1] = redis.call('ZSCORE', KEYS[2], v) or '' end return out";

/// Removes from both path sets each member (odd ARGV) whose expiry score
/// is still the one read (the even ARGV after it); returns how many are
/// gone (removed, or already gone: another purge, the sweep), so that
/// only a page every member of which was stored again stops a purge.
const PATHS_REMOVE_UNCHANGED: &str = "local n = 0 for i = 1, #ARGV, 2 do \
local cur = redis.call('ZSCORE', KEYS[2], ARGV[i]) \
if cur == false and redis.call('ZSCORE', KEYS[1], ARGV[i]) == false then n = n + 1 \
elseif (cur or '') == ARGV[i + 1] then \
redis.call('ZREM', KEYS[1], ARGV[i]) redis.call('ZREM', KEYS[2], ARGV[i]) n = n + 1 end end return n";

/// One page (ARGV[1] members) of a tag set, each followed by its score.
const TAG_PAGE_SCORED: &str =
    "return redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')";

/// Removes each member (odd ARGV) of the tag set whose score is still the
/// one read (the even ARGV after it); returns how many are gone (removed,
/// or already gone), as [`PATHS_REMOVE_UNCHANGED`].
const TAG_REMOVE_UNCHANGED: &str = "local n = 0 for i = 1, #ARGV, 2 do \
local cur = redis.call('ZSCORE', KEYS[1], ARGV[i]) \
if cur == false then n = n + 1 elseif cur == ARGV[i + 1] then \
redis.call('ZREM', KEYS[1], ARGV[i]) n = n + 1 end end return n";

/// Removes up to ARGV[2] members whose expiry is at most ARGV[1].
const PATHS_SWEEP: &str = "local m = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2])) \
if #m > 0 then redis.call('ZREM', KEYS[1], unpack(m)) redis.call('ZREM', KEYS[2], unpack(m)) end return #m";

/// Adds an object key to a tag set scored by its expiry (moved on by one
/// when equal to the one it has, as [`PATHS_ADD`]), drops members expired
/// before ARGV[3], and leaves the set without an expiry (`PERSIST`; sets
/// written by older versions had one), so that Redis's `volatile-*`
/// eviction policies, which choose among keys with an expiry, never evict
/// an index while its objects stay. The sweep deletes a set once every
/// member has expired ([`TAG_DROP_EXPIRED`]).
const TAG_ADD: &str = "local s = tonumber(ARGV[2]) \
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or -1) == s then s = s + 1 end \
redis.call('ZADD', KEYS[1], s, ARGV[1]) \
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3]) \
redis.call('PERSIST', KEYS[1]) return 1";

/// Raises each tag (ARGV[2..]) in the tag registry `P{tags}` to the
/// expiry ARGV[1] when that is later than its score: the registry holds
/// every tag set's newest expiry, so the sweep finds the sets to delete
/// without `SCAN`.
const TAGS_RAISE: &str = "local s = tonumber(ARGV[1]) for i = 2, #ARGV do \
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or -1) < s then \
redis.call('ZADD', KEYS[1], s, ARGV[i]) end end return 1";

/// Up to ARGV[2] tags of the registry whose newest expiry is at most
/// ARGV[1], each followed by its score.
const TAGS_EXPIRED: &str = "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))";

/// Deletes a tag set whose every member expired by ARGV[1] (a write in
/// between added a live one: kept, and trimmed); answers 1 when gone.
const TAG_DROP_EXPIRED: &str = "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1]) \
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) return 1 end return 0";

/// Removes each registry member (odd ARGV) whose score is still the one
/// read (the even ARGV after it): a write that raised it in between keeps
/// its tag registered.
const TAGS_REMOVE_UNCHANGED: &str = "for i = 1, #ARGV, 2 do \
if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[i + 1] then \
redis.call('ZREM', KEYS[1], ARGV[i]) end end return 1";

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    paths: String,
    paths_exp: String,
    /// `P{tags}`: every tag set's name scored by its newest expiry.
    tags: String,
    channel: String,
}

impl Keys {
    /// Names under `prefix` in database `db`. Pub/sub ignores the
    /// database number (one channel space per server), so the purge
    /// channel of a database other than 0 names it: two fleets on
    /// `redis://h/0` and `redis://h/2` with one `key_prefix` must not
    /// empty each other's memory tiers. Database 0 keeps `{prefix}purge`.
    pub(crate) fn new(prefix: &str, db: i64) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            paths: format!("{prefix}{{paths}}"),
            paths_exp: format!("{prefix}{{paths}}:exp"),
            tags: format!("{prefix}{{tags}}"),
            channel: if db == 0 {
                format!("{prefix}purge")
            } else {
                format!("{prefix}purge:db{db}")
            },
        }
    }

    /// `Po:{hash}`, the hash as 32 lowercase hex digits. Built without
    /// `format!` (it runs on every Redis lookup).
    pub(crate) fn object(&self, key: &CacheKey) -> String {
        let mut digits = [0u8; 32];
        let mut name = String::with_capacity(self.prefix.len() + 2 + digits.len());
        name.push_str(&self.prefix);
        name.push_str("o:");
        if hex::encode_to_slice(key.hash().to_be_bytes(), &mut digits).is_ok() {
            name.push_str(std::str::from_utf8(&digits).unwrap_or_default());
        }
        name
    }

    /// `P{suffix}`: a key outside the cache's own names (rate limits).
    pub(crate) fn other(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// The popularity set (`[warming] redis_hot`).
    pub(crate) fn hot(&self) -> String {
        format!("{}hot", self.prefix)
    }

    pub(crate) fn tag(&self, tag: &str) -> String {
        format!("{}t:{tag}", self.prefix)
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// The commands that write `object` (encoded as `payload`) for
    /// `keep_ms` milliseconds from `now_ms` (unix ms): its `SET`, and its
    /// path member and one member per tag its variants carry.
    pub(crate) fn write(
        &self,
        object: &Object,
        payload: &[u8],
        keep_ms: u64,
        now_ms: u64,
    ) -> Write {
        let object_key = self.object(&object.key);
        let expires = now_ms.saturating_add(keep_ms);
        let tags: BTreeSet<&str> = object
            .variants
            .iter()
            .flat_map(|v| v.tags.iter().map(String::as_str))
            .collect();
        let mut index = vec![self.paths_add(&member(object.key.path(), &object_key), expires)];
        index.extend(
            tags.iter()
                .map(|t| Keys::tag_add(&self.tag(t), &object_key, expires, now_ms)),
        );
        if !tags.is_empty() {
            index.push(self.tags_raise(tags.iter().copied(), expires));
        }
        Write {
            set: Keys::set_object(&object_key, payload, keep_ms),
            index,
            unset: Keys::delete(object_key.as_bytes()),
        }
    }

    /// `SET object payload PX keep`.
    pub(crate) fn set_object(object_key: &str, payload: &[u8], keep_ms: u64) -> Cmd {
        let mut c = redis::cmd("SET");
        c.arg(object_key).arg(payload).arg("PX").arg(keep_ms.max(1));
        c
    }

    pub(crate) fn paths_add(&self, member: &[u8], expires_ms: u64) -> Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(PATHS_ADD)
            .arg(2)
            .arg(&self.paths)
            .arg(&self.paths_exp)
            .arg(member)
            .arg(expires_ms);
        c
    }

    pub(crate) fn paths_remove(&self, members: &[Bytes]) -> Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(PATHS_REMOVE)
            .arg(2)
            .arg(&self.paths)
            .arg(&self.paths_exp);
        for m in members {
            c.arg(&m[..]);
        }
        c
    }

    pub(crate) fn paths_sweep(&self, expired_before_ms: u64) -> Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(PATHS_SWEEP)
            .arg(2)
            .arg(&self.paths)
            .arg(&self.paths_exp)
            .arg(expired_before_ms)
            .arg(PAGE);
        c
    }

    /// One page of members for `path` exactly (any host), from `offset`.
    pub(crate) fn paths_exact(&self, path: &str, offset: usize) -> Cmd {
        let (lo, hi) = PathRange::Exact(path).bounds();
        self.paths_range(lo, hi, offset)
    }

    /// One page of members whose path starts with `prefix` (any host),
    /// from `offset`.
    pub(crate) fn paths_prefixed(&self, prefix: &str, offset: usize) -> Cmd {
        let (lo, hi) = PathRange::Prefix(prefix).bounds();
        self.paths_range(lo, hi, offset)
    }

    /// The first page of `range`'s members, scored ([`PATHS_PAGE_SCORED`]:
    /// member, score, member, score…), for a purge.
    pub(crate) fn paths_page_scored(&self, range: PathRange<'_>) -> Cmd {
        let (lo, hi) = range.bounds();
        let mut c = redis::cmd("EVAL");
        c.arg(PATHS_PAGE_SCORED)
            .arg(2)
            .arg(&self.paths)
            .arg(&self.paths_exp)
            .arg(lo)
            .arg(hi)
            .arg(PAGE);
        c
    }

    /// Removes the members of a scored page whose scores are unchanged
    /// ([`PATHS_REMOVE_UNCHANGED`]); answers how many went.
    pub(crate) fn paths_remove_unchanged(&self, scored: &[Bytes]) -> Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(PATHS_REMOVE_UNCHANGED)
            .arg(2)
            .arg(&self.paths)
            .arg(&self.paths_exp);
        for m in scored {
            c.arg(&m[..]);
        }
        c
    }

    fn paths_range(&self, lo: Vec<u8>, hi: Vec<u8>, offset: usize) -> Cmd {
        let mut c = redis::cmd("ZRANGEBYLEX");
        c.arg(&self.paths)
            .arg(lo)
            .arg(hi)
            .arg("LIMIT")
            .arg(offset)
            .arg(PAGE);
        c
    }

    pub(crate) fn tag_add(tag_key: &str, object_key: &str, expires_ms: u64, now_ms: u64) -> Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(TAG_ADD)
            .arg(1)
            .arg(tag_key)
            .arg(object_key)
            .arg(expires_ms)
            .arg(now_ms.saturating_sub(SWEEP_GRACE_MS));
        c
    }

    /// Registers `tags` with the newest expiry `expires_ms` ([`TAGS_RAISE`]).
    pub(crate) fn tags_raise<'a>(
        &self,
        tags: impl Iterator<Item = &'a str>,
        expires_ms: u64,
    ) -> Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(TAGS_RAISE).arg(1).arg(&self.tags).arg(expires_ms);
        for t in tags {
            c.arg(t);
        }
        c
    }

    /// One page of registered tags whose newest member expired by
    /// `expired_before_ms`, scored ([`TAGS_EXPIRED`]).
    pub(crate) fn tags_expired(&self, expired_before_ms: u64) -> Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(TAGS_EXPIRED)
            .arg(1)
            .arg(&self.tags)
            .arg(expired_before_ms)
            .arg(PAGE);
        c
    }

    /// Deletes `tag`'s set if all its members expired by
    /// `expired_before_ms` ([`TAG_DROP_EXPIRED`]).
    pub(crate) fn tag_drop_expired(&self, tag: &str, expired_before_ms: u64) -> Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(TAG_DROP_EXPIRED)
            .arg(1)
            .arg(self.tag(tag))
            .arg(expired_before_ms);
        c
    }

    /// Unregisters the tags of a scored page whose scores are unchanged
    /// ([`TAGS_REMOVE_UNCHANGED`]).
    pub(crate) fn tags_remove_unchanged(&self, scored: &[Bytes]) -> Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(TAGS_REMOVE_UNCHANGED).arg(1).arg(&self.tags);
        for m in scored {
            c.arg(&m[..]);
        }
        c
    }

    /// One page of a tag set's members, from `offset`.
    pub(crate) fn tag_page(tag_key: &str, offset: usize) -> Cmd {
        let mut c = redis::cmd("ZRANGE");
        c.arg(tag_key).arg(offset).arg(offset + PAGE - 1);
        c
    }

    /// The first page of a tag set, scored ([`TAG_PAGE_SCORED`]: member,
    /// score, member, score…), for a purge.
    pub(crate) fn tag_page_scored(tag_key: &str) -> Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(TAG_PAGE_SCORED).arg(1).arg(tag_key).arg(PAGE);
        c
    }

    /// Removes the members of a scored page whose scores are unchanged
    /// ([`TAG_REMOVE_UNCHANGED`]); answers how many went.
    pub(crate) fn tag_remove_unchanged(tag_key: &str, scored: &[Bytes]) -> Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(TAG_REMOVE_UNCHANGED).arg(1).arg(tag_key);
        for m in scored {
            c.arg(&m[..]);
        }
        c
    }

    pub(crate) fn get(key: &[u8]) -> Cmd {
        let mut c = redis::cmd("GET");
        c.arg(key);
        c
    }

    pub(crate) fn delete(key: &[u8]) -> Cmd {
        let mut c = redis::cmd("DEL");
        c.arg(key);
        c
    }
}

/// One object's write ([`Keys::write`]): the object, then its index
/// members.
pub(crate) struct Write {
    set: Cmd,
    index: Vec<Cmd>,
    unset: Cmd,
}

impl Write {
    /// Sets the object, then adds its index members. An object whose
    /// `SET` or index commands fail is deleted again (best effort, on the
    /// same connection, so Redis runs it after the `SET`): an object that
    /// purges cannot find would be served for its whole lifetime.
    pub(crate) async fn run(self, mut c: Conn) -> RedisResult<()> {
        let indexed = match self.set.query_async::<()>(&mut c).await {
            Ok(()) => try_join_all(self.index.iter().map(|cmd| {
                let mut c = c.clone();
                async move { cmd.query_async::<Value>(&mut c).await }
            }))
            .await
            .map(drop),
            Err(e) => Err(e),
        };
        if indexed.is_err() {
            let _ = self.unset.query_async::<Value>(&mut c).await;
        }
        indexed
    }
}

/// A range of the path set: one path (any host) or every path under a
/// prefix.
#[derive(Clone, Copy)]
pub(crate) enum PathRange<'a> {
    Exact(&'a str),
    Prefix(&'a str),
}

impl PathRange<'_> {
    /// Its `ZRANGEBYLEX` bounds: `[p\0` .. `[p\0\xff` for one path, `[p` ..
    /// `[p\xff` for a prefix.
    fn bounds(self) -> (Vec<u8>, Vec<u8>) {
        let (text, exact) = match self {
            PathRange::Exact(p) => (p, true),
            PathRange::Prefix(p) => (p, false),
        };
        let mut lo = Vec::with_capacity(text.len() + 3);
        lo.push(b'[');
        lo.extend_from_slice(text.as_bytes());
        if exact {
            lo.push(0);
        }
        let mut hi = lo.clone();
        hi.push(0xff);
        (lo, hi)
    }
}

/// The members of a scored page (member, score, member, score…).
pub(crate) fn scored_members(scored: &[Bytes]) -> impl Iterator<Item = &Bytes> {
    scored.iter().step_by(2)
}

/// The path-set member of an object: `"{path?query}\0{object key}"`.
pub(crate) fn member(path: &str, object_key: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(path.len() + 1 + object_key.len());
    m.extend_from_slice(path.as_bytes());
    m.push(0);
    m.extend_from_slice(object_key.as_bytes());
    m
}

/// The object key of a path-set member (paths never contain NUL).
pub(crate) fn object_of_member(member: &[u8]) -> Option<&[u8]> {
    let at = member.iter().rposition(|&b| b == 0)?;
    Some(&member[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_members() {
        let keys = Keys::new("s:", 0);
        let k = CacheKey::new(false, "h", "/a?b");
        let obj = keys.object(&k);
        assert!(obj.starts_with("s:o:"));
        assert_eq!(obj.len(), "s:o:".len() + 32);
        // The names of objects already in Redis: never change them.
        assert_eq!(obj, format!("s:o:{:032x}", k.hash()));
        let small = CacheKey::new(false, "example.com", "/a?x=1");
        assert_eq!(keys.object(&small), format!("s:o:{:032x}", small.hash()));
        assert_eq!(keys.tag("x"), "s:t:x");
        assert_eq!(keys.channel(), "s:purge");
        assert_eq!(Keys::new("s:", 2).channel(), "s:purge:db2");
        let m = member(k.path(), &obj);
        assert_eq!(object_of_member(&m), Some(obj.as_bytes()));
        assert_eq!(object_of_member(b"no-nul"), None);
    }
}

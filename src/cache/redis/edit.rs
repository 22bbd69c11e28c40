//! Checked changes to one stored object: read it, decide from what it
//! holds now (its variants and their tags), and write the change only if
//! the object is still the one read. A tag purge deletes an object, or
//! writes it back without the variants carrying the tag, only when those
//! variants carry it today (a tag index member outlives a re-store with
//! other tags); a soft purge writes back the marked copy.
//!
//! The check is a Lua script on the object's key alone (cluster safe): the
//! stored value's length and trailing checksum (`codec`: xxh3-64 of every
//! byte before it) must be those read. A write that lands in between makes
//! the change start again from the new value; after [`ATTEMPTS`] such
//! races the object is deleted whole (a miss, never a stale copy).

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::{RedisResult, Value};

use super::codec;
use super::conn::Conn;
use super::index::Keys;
use crate::cache::entry::Object;

/// Reads before a purge that keeps losing to concurrent writes deletes.
const ATTEMPTS: usize = 4;
/// Objects changed at once: each holds its whole payload meanwhile.
const CONCURRENCY: usize = 16;

/// Deletes (`ARGV[3]` absent) or overwrites with `ARGV[3]` (`XX KEEPTTL`)
/// the object at `KEYS[1]` if its length is `ARGV[1]` and its last 8
/// bytes are `ARGV[2]`: 1 when done, 0 when it changed meanwhile.
const CHECKED: &str = "if redis.call('STRLEN', KEYS[1]) ~= tonumber(ARGV[1]) \
or redis.call('GETRANGE', KEYS[1], -8, -1) ~= ARGV[2] then return 0 end \
if #ARGV < 3 then redis.call('DEL', KEYS[1]) \
else redis.call('SET', KEYS[1], ARGV[3], 'XX', 'KEEPTTL') end return 1";

/// What a change makes of an object as read.
pub(super) enum Change {
    /// Nothing to change: not selected (or no longer).
    None,
    /// Selected, already as the change would leave it (nothing written).
    Done,
    /// Write this instead; with no variants left, delete the object.
    Write(Object),
}

/// Applies `change` to each of `objects` (their keys), [`CONCURRENCY`] at
/// a time, as [`apply`] does; returns how many were selected.
pub(super) async fn apply_all<K: AsRef<[u8]>>(
    c: &Conn,
    objects: &[K],
    delete_unreadable: bool,
    change: impl Fn(&Object) -> Change,
) -> RedisResult<u64> {
    // A loop, not stream combinators: a closure over borrowed keys in a
    // spawned future trips rustc's higher-ranked `Send` inference.
    let mut running = FuturesUnordered::new();
    let mut selected = 0;
    for key in objects {
        if running.len() >= CONCURRENCY {
            if let Some(done) = running.next().await {
                selected += u64::from(done?);
            }
        }
        running.push(apply(c.clone(), key.as_ref(), delete_unreadable, &change));
    }
    while let Some(done) = running.next().await {
        selected += u64::from(done?);
    }
    Ok(selected)
}

/// Applies `change` to the object at `object_key`, checked against
/// concurrent writes (see the module doc); returns whether the object was
/// selected (deleted, rewritten or already so). An absent object is not;
/// an undecodable one (corrupt, or another format version written by a
/// newer instance during an upgrade) is deleted when `delete_unreadable`
/// (a hard purge: the tags it may carry cannot be read, and deleting
/// never serves stale) and counted as selected.
async fn apply(
    mut c: Conn,
    object_key: &[u8],
    delete_unreadable: bool,
    change: impl Fn(&Object) -> Change,
) -> RedisResult<bool> {
    for _ in 0..ATTEMPTS {
        let payload: Option<Bytes> = Keys::get(object_key).query_async(&mut c).await?;
        let Some(payload) = payload else {
            return Ok(false);
        };
        let write = match codec::decode(&payload) {
            Err(_) if delete_unreadable => None,
            Err(_) => return Ok(false),
            Ok(object) => match change(&object) {
                Change::None => return Ok(false),
                Change::Done => return Ok(true),
                Change::Write(left) if left.variants.is_empty() => None,
                // Unencodable (cannot happen: it was encoded with more
                // variants before): deleted whole.
                Change::Write(left) => codec::encode(&left).ok(),
            },
        };
        if checked(&mut c, object_key, &payload, write).await? {
            return Ok(true);
        }
    }
    Keys::delete(object_key)
        .query_async::<Value>(&mut c)
        .await?;
    Ok(true)
}

/// [`CHECKED`] against `read`: whether the change was made.
async fn checked(
    c: &mut Conn,
    object_key: &[u8],
    read: &[u8],
    write: Option<Vec<u8>>,
) -> RedisResult<bool> {
    let seal = &read[read.len().saturating_sub(8)..];
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(CHECKED)
        .arg(1)
        .arg(object_key)
        .arg(read.len())
        .arg(seal);
    if let Some(write) = write {
        cmd.arg(write);
    }
    let done: i64 = cmd.query_async(c).await?;
    Ok(done == 1)
}

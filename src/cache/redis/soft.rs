//! Soft purge in Redis: the selected objects are not deleted but written
//! back with every variant marked stale (`soft_purged`), keeping their
//! expiry (`SET .. XX KEEPTTL`), so that whichever instance reads one next
//! serves it stale while one revalidation runs. The objects are found
//! through the same indexes as a hard purge, read page by page and left
//! indexed.
//!
//! A write racing the mark (a revalidation landing between the `GET` and
//! the `SET`) can be overwritten by the marked copy: it is then only
//! revalidated once more, never served as fresh when it is not.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::try_join_all;
use redis::{Cmd, RedisResult, Value};

use super::codec;
use super::conn::Conn;
use super::index::{object_of_member, Keys, PAGE};
use super::store::{Core, Gate};
use crate::cache::storage::{Selector, StorageError};

impl Core {
    /// Marks what `selector` selects as stale in Redis; returns how many
    /// objects were marked. Tried even while the breaker is open (an admin
    /// operation), bounded by `bound` in all.
    pub(crate) async fn soft_purge_redis(
        &self,
        selector: &Selector,
        bound: Duration,
    ) -> Result<u64, StorageError> {
        let keys = &self.keys;
        self.run("soft-purge", bound, Gate::Always, |c| async move {
            let objects: Vec<Vec<u8>> = match selector {
                Selector::Key(k) => vec![keys.object(k).into_bytes()],
                Selector::PathAnyHost(path) => {
                    members(c.clone(), |at| keys.paths_exact(path, at), true).await?
                }
                Selector::Prefix(prefix) => {
                    members(c.clone(), |at| keys.paths_prefixed(prefix, at), true).await?
                }
                Selector::Tags(tags) => {
                    let mut all = BTreeSet::new();
                    for tag in tags {
                        let tag_key = keys.tag(tag);
                        let found =
                            members(c.clone(), |at| Keys::tag_page(&tag_key, at), false).await?;
                        all.extend(found);
                    }
                    all.into_iter().collect()
                }
            };
            let marked = try_join_all(objects.iter().map(|k| mark(c.clone(), k))).await?;
            Ok(marked.iter().filter(|m| **m).count() as u64)
        })
        .await
    }
}

/// Every object key an index range holds, page by page (`page(offset)`);
/// `in_path_index`: members are path-index members, not object keys.
pub(super) async fn members(
    mut c: Conn,
    page: impl Fn(usize) -> Cmd,
    in_path_index: bool,
) -> RedisResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let batch: Vec<Bytes> = page(offset).query_async(&mut c).await?;
        out.extend(
            batch
                .iter()
                .filter_map(|m| {
                    if in_path_index {
                        object_of_member(m)
                    } else {
                        Some(&m[..])
                    }
                })
                .map(<[u8]>::to_vec),
        );
        if batch.len() < PAGE {
            return Ok(out);
        }
        offset += batch.len();
    }
}

/// Rewrites one object with its variants marked stale; false when it is
/// gone or unreadable (a corrupt entry is left to expire or a hard purge).
async fn mark(mut c: Conn, object_key: &[u8]) -> RedisResult<bool> {
    let payload: Option<Bytes> = redis::cmd("GET")
        .arg(object_key)
        .query_async(&mut c)
        .await?;
    let Some(payload) = payload else {
        return Ok(false);
    };
    let Ok(object) = codec::decode(&payload) else {
        return Ok(false);
    };
    if object.variants.iter().all(|v| v.soft_purged) {
        return Ok(true);
    }
    let Ok(marked) = codec::encode(&object.soft_purged()) else {
        return Ok(false);
    };
    let set: Value = redis::cmd("SET")
        .arg(object_key)
        .arg(marked)
        .arg("XX")
        .arg("KEEPTTL")
        .query_async(&mut c)
        .await?;
    Ok(!matches!(set, Value::Nil))
}

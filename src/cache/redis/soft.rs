//! Soft purge in Redis: the selected objects are not deleted but written
//! back with the selected variants marked stale (`soft_purged`; every
//! variant, or under a tag those carrying it), keeping their expiry
//! (`SET .. XX KEEPTTL`), so that whichever instance reads one next
//! serves it stale while one revalidation runs. The objects are found
//! through the same indexes as a hard purge, read page by page and left
//! indexed; an object stored again without the tag is left alone.
//!
//! The mark is written only over the copy it was made from (`edit`): a
//! write landing in between (a revalidation) is read and marked in turn.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use redis::{Cmd, RedisResult};

use super::conn::Conn;
use super::edit::{self, Change};
use super::index::{object_of_member, Keys, PAGE};
use super::store::{Core, Gate};
use crate::cache::entry::Object;
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
            let mark = |o: &Object| match selector.marked(o) {
                None => Change::None,
                Some(m) if unchanged(o, &m) => Change::Done,
                Some(m) => Change::Write(m),
            };
            edit::apply_all(&c, &objects, false, mark).await
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

/// Whether `marked` marks nothing `object` has not marked already.
fn unchanged(object: &Object, marked: &Object) -> bool {
    object
        .variants
        .iter()
        .zip(&marked.variants)
        .all(|(a, b)| a.soft_purged == b.soft_purged)
}

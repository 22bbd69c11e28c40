//! Reading what Redis holds for a purge selector, without changing it
//! (`GET /cache?url=`): the objects are found through the same indexes as
//! a purge, at most a bounded number of them, each read and decoded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::try_join_all;

use super::codec;
use super::index::Keys;
use super::soft::members;
use super::store::{Core, Gate};
use crate::cache::entry::Object;
use crate::cache::storage::{Selector, StorageError};

impl Core {
    /// Up to `limit` objects `selector` selects (tags are not looked up:
    /// an inspection names a URL). Tried even while the breaker is open
    /// (an admin operation), bounded by `bound` in all. An entry that
    /// fails to decode is skipped.
    pub(crate) async fn find_redis(
        &self,
        selector: &Selector,
        limit: usize,
        bound: Duration,
    ) -> Result<Vec<Arc<Object>>, StorageError> {
        let keys = &self.keys;
        self.run("inspect", bound, Gate::Always, |c| async move {
            let mut objects: Vec<Vec<u8>> = match selector {
                Selector::Key(k) => vec![keys.object(k).into_bytes()],
                Selector::PathAnyHost(path) => {
                    members(c.clone(), |at| keys.paths_exact(path, at), true).await?
                }
                Selector::Prefix(prefix) => {
                    members(c.clone(), |at| keys.paths_prefixed(prefix, at), true).await?
                }
                Selector::Tags(_) => Vec::new(),
            };
            objects.truncate(limit);
            let payloads = try_join_all(objects.iter().map(|k| {
                let mut c = c.clone();
                let cmd = Keys::get(k);
                async move { cmd.query_async::<Option<Bytes>>(&mut c).await }
            }))
            .await?;
            Ok(payloads
                .into_iter()
                .flatten()
                .filter_map(|p| codec::decode(&p).ok())
                .map(Arc::new)
                .collect())
        })
        .await
    }
}

//! Fleet popularity for `[warming] redis_hot`: sampled hits (one in
//! [`crate::cache::HIT_SAMPLE`], counted by each instance off the request
//! path) increment the URL's score in the `{prefix}hot` sorted set; a
//! warming round reads the top N and copies those objects into memory.
//!
//! The set is trimmed to [`KEEP_FACTOR`] × N members when it is read, so it
//! stays bounded however many distinct URLs are hit. Scores only grow: an
//! old favourite fades only by being trimmed once newer URLs outscore it.

use redis::Value;

use super::store::Core;
use crate::cache::key::CacheKey;
use crate::cache::storage::StorageError;

/// Members kept in the popularity set, as a multiple of `redis_hot`.
const KEEP_FACTOR: usize = 4;
/// ... and at least this many.
const KEEP_MIN: usize = 1000;

impl Core {
    /// `ZINCRBY {prefix}hot 1 url`.
    pub(crate) async fn count_hit(&self, key: &CacheKey) -> Result<(), StorageError> {
        let gate = self.permit()?;
        let set = self.keys.hot();
        let url = key.url().to_string();
        self.run("count-hit", self.limits.write, gate, |mut c| async move {
            redis::cmd("ZINCRBY")
                .arg(&set)
                .arg(1)
                .arg(&url)
                .query_async::<Value>(&mut c)
                .await?;
            Ok(())
        })
        .await
    }

    /// The top `n` URLs, then trims the set.
    pub(crate) async fn hot(&self, n: usize) -> Result<Vec<String>, StorageError> {
        let gate = self.permit()?;
        let set = self.keys.hot();
        let keep = n.saturating_mul(KEEP_FACTOR).max(KEEP_MIN);
        self.run("hot", self.limits.write, gate, |mut c| async move {
            let top: Vec<String> = redis::cmd("ZREVRANGE")
                .arg(&set)
                .arg(0)
                .arg(n.saturating_sub(1))
                .query_async(&mut c)
                .await?;
            redis::cmd("ZREMRANGEBYRANK")
                .arg(&set)
                .arg(0)
                .arg(-(keep as i64) - 1)
                .query_async::<Value>(&mut c)
                .await?;
            Ok(top)
        })
        .await
    }
}

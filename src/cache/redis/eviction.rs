//! What Redis may evict, and what it must not: the purge indexes
//! (`index`) carry no expiry, so Redis's `volatile-*` eviction policies,
//! which choose among keys with one, evict objects and never an index.
//! This module deletes the tag sets that expiry no longer removes
//! ([`sweep_tag_sets`]) and warns when the server's `maxmemory-policy`
//! may evict an index anyway ([`warn_if_indexes_evictable`]): under
//! `allkeys-*` a tag or path index can go while its objects stay, and a
//! purge then reports success and leaves them served (the shipped
//! `docker-compose.yml` had `allkeys-lru`; fleet and bug-report probes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::{RedisResult, Value};

use super::conn::Conn;
use super::index::Keys;

/// One page of the tag registry's expired tags: each tag set whose every
/// member expired by `expired_before_ms` (unix ms) is deleted, then the
/// page is unregistered where its scores are unchanged (a write in
/// between keeps its tag). Answers (tags read, sets deleted).
pub(super) async fn sweep_tag_sets(
    keys: &Keys,
    c: &mut Conn,
    expired_before_ms: u64,
) -> RedisResult<(usize, u64)> {
    let scored: Vec<Bytes> = keys.tags_expired(expired_before_ms).query_async(c).await?;
    let mut dropped = 0u64;
    for tag in scored.iter().step_by(2) {
        if let Ok(tag) = std::str::from_utf8(tag) {
            let gone: u64 = keys
                .tag_drop_expired(tag, expired_before_ms)
                .query_async(c)
                .await?;
            dropped += gone;
        }
    }
    if !scored.is_empty() {
        keys.tags_remove_unchanged(&scored)
            .query_async::<Value>(c)
            .await?;
    }
    Ok((scored.len() / 2, dropped))
}

/// Whether `policy` (a `maxmemory-policy` value) may evict a key without
/// an expiry: the `allkeys-*` ones. `noeviction` and `volatile-*` never do.
pub(super) fn evicts_indexes(policy: &str) -> bool {
    policy.starts_with("allkeys-")
}

/// Asks Redis for its `maxmemory-policy` (`CONFIG GET`, bounded by
/// `bound`) and logs a warning, once per process, when it may evict the
/// purge indexes. A server that refuses `CONFIG` (managed services rename
/// it) or does not answer in time is not judged.
pub(super) async fn warn_if_indexes_evictable(mut conn: Conn, bound: Duration) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if WARNED.load(Ordering::Relaxed) {
        return;
    }
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("GET").arg("maxmemory-policy");
    let Ok(Ok(reply)) = tokio::time::timeout(bound, cmd.query_async::<Value>(&mut conn)).await
    else {
        return;
    };
    let mut policies = Vec::new();
    strings(&reply, &mut policies);
    if let Some(policy) = policies.iter().find(|p| evicts_indexes(p)) {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                maxmemory_policy = %policy,
                "redis: this eviction policy can evict Strata's purge indexes while their objects stay, and purges then miss those objects; use volatile-lru, volatile-lfu or volatile-ttl (only objects have an expiry), or noeviction"
            );
        }
    }
}

/// Every string in a reply, however nested (a Cluster answers per node).
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => out.push(s.clone()),
        Value::Array(items) | Value::Set(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            strings(k, out);
            strings(v, out);
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allkeys_policies_evict_indexes() {
        for p in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            assert!(evicts_indexes(p), "{p}");
        }
        for p in [
            "noeviction",
            "volatile-lru",
            "volatile-lfu",
            "volatile-ttl",
            "volatile-random",
        ] {
            assert!(!evicts_indexes(p), "{p}");
        }
    }

    #[test]
    fn strings_are_found_in_nested_replies() {
        let reply = Value::Map(vec![(
            Value::SimpleString("127.0.0.1:7000".into()),
            Value::Array(vec![
                Value::BulkString(b"maxmemory-policy".to_vec()),
                Value::BulkString(b"allkeys-lru".to_vec()),
            ]),
        )]);
        let mut out = Vec::new();
        strings(&reply, &mut out);
        assert!(out.iter().any(|s| evicts_indexes(s)));
    }
}

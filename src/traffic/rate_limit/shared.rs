//! The fleet-wide GCRA of `backend = "redis"`: one Lua script, run
//! atomically by Redis on the limit's key, so every instance sharing the
//! Redis tier charges one budget. Times come from Redis's own clock
//! (`TIME`), so instances' clocks never disagree about a budget.
//!
//! State per key: the theoretical arrival time (TAT) in microseconds, kept
//! only as long as it is in the future (`PX`), so idle keys vanish by
//! themselves. A request is allowed when, after adding one emission
//! interval `T = period / rate` to `max(TAT, now)`, the TAT is at most
//! `burst × T` ahead of now; otherwise it is refused (TAT unchanged) and
//! told how long until it would fit. A refund (a later limit refused the
//! request) moves the TAT back one interval, deleting the key when that
//! leaves it in the past (a full budget).
//!
//! Key: `{key_prefix}rl:{name}:{hash of the client key}`.

use std::sync::OnceLock;
use std::time::Duration;

use crate::cache::redis::RedisTier;
use crate::cache::storage::StorageError;
use crate::config::RateLimitConfig;

/// ARGV[1] = emission interval (µs), ARGV[2] = burst × interval (µs).
/// Answers `{1, 0}` (allowed) or `{0, wait_µs}`.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local ahead = tat + interval - now
if ahead > limit then
  return {0, ahead - limit}
end
redis.call('SET', KEYS[1], string.format('%d', tat + interval), 'PX', math.ceil(ahead / 1000) + 1)
return {1, 0}
"#;

/// ARGV[1] = emission interval (µs). Answers `{1, 0}` (taken back) or
/// `{0, 0}` (nothing to take back: the key expired).
const REFUND: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return {0, 0} end
tat = tat - tonumber(ARGV[1])
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
return {1, 0}
"#;

fn script() -> &'static redis::Script {
    static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(GCRA))
}

fn refund_script() -> &'static redis::Script {
    static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(REFUND))
}

/// `limit`'s emission interval in microseconds (at least 1).
fn interval_us(limit: &RateLimitConfig) -> u64 {
    (limit.per.as_micros() / u128::from(limit.rate)).max(1) as u64
}

fn key_name(limit: &RateLimitConfig, key: u64) -> String {
    format!("rl:{}:{key:016x}", limit.name)
}

/// Charges `key` to `limit` in Redis: `Ok(None)` allowed, `Ok(Some(wait))`
/// over the limit, `Err` when Redis could not answer (the caller falls
/// back to the local limiter).
pub(super) async fn check(
    redis: &RedisTier,
    limit: &RateLimitConfig,
    key: u64,
) -> Result<Option<Duration>, StorageError> {
    let interval = interval_us(limit);
    let tolerance = interval.saturating_mul(u64::from(limit.burst));
    let answer = redis
        .run_script(
            "rate_limit",
            script(),
            &key_name(limit, key),
            &[interval, tolerance],
        )
        .await?;
    match answer.as_slice() {
        [1, _] => Ok(None),
        [0, wait] => Ok(Some(Duration::from_micros((*wait).max(1) as u64))),
        _ => Err(StorageError::Redis(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected rate-limit script answer",
        )))),
    }
}

/// Takes back one request [`check`] allowed for `key` (a later limit
/// refused it). `Err` when Redis could not answer: the charge stays.
pub(super) async fn refund(
    redis: &RedisTier,
    limit: &RateLimitConfig,
    key: u64,
) -> Result<(), StorageError> {
    redis
        .run_script(
            "rate_limit_refund",
            refund_script(),
            &key_name(limit, key),
            &[interval_us(limit)],
        )
        .await
        .map(drop)
}

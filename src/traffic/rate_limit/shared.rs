//! The fleet-wide GCRA of `backend = "redis"`: one Lua script, run
//! atomically by Redis, so every instance sharing the Redis tier charges
//! one budget. Times come from Redis's own clock (`TIME`), so instances'
//! clocks never disagree about a budget.
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
//! One call checks every key it is given and charges all of them or none
//! ([`check_all`]; nginx's `limit_req` commits its zones only once all
//! accepted), so a request refused by one limit never holds a charge on
//! another meanwhile. Each call carries its caller's deadline (Unix ms,
//! the caller's clock): a call Redis reaches only after it (Redis was
//! stalled and the caller has long fallen back to its local limiter)
//! does nothing, so a request is never charged to both budgets. The
//! deadline is the call's own bound (`cache.redis.timeout`) after it is
//! sent, plus as much again for clocks that differ between the instance
//! and the Redis host: a call Redis runs less than that late still
//! charges, and a Redis clock ahead by more than twice `timeout` (less the
//! trip there) makes every call expire (the local limits apply; a warning
//! says so, once).
//!
//! Key: `{key_prefix}rl:{name}:{budget}:{hash of the client key}`, where
//! `budget` is a digest of the limit's key kind, rate and burst, so a
//! reload that changes them starts every budget afresh.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cache::redis::RedisTier;
use crate::cache::storage::StorageError;
use crate::config::{LimitKey, RateLimitConfig};

/// ARGV[1] = the caller's deadline (Unix ms); then, for each key `i`,
/// ARGV[2i] = its emission interval (µs) and ARGV[2i+1] = burst ×
/// interval (µs). Answers `{1, 0, 0}` (every key allowed and charged),
/// `{0, wait_µs, i}` (`i` the first key over, 1-based, `wait_µs` the
/// longest wait of all the keys over; nothing charged) or `{-1, 0, 0}`
/// (past the deadline; nothing done).
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if now > tonumber(ARGV[1]) * 1000 then return {-1, 0, 0} end
local tats = {}
local first, longest = 0, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local limit = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if not tat or tat < now then tat = now end
  local ahead = tat + interval - now
  if ahead > limit then
    if first == 0 then first = i end
    if ahead - limit > longest then longest = ahead - limit end
  end
  tats[i] = tat + interval
end
if first > 0 then return {0, longest, first} end
for i = 1, #KEYS do
  local ahead = tats[i] - now
  redis.call('SET', KEYS[i], string.format('%d', tats[i]), 'PX', math.ceil(ahead / 1000) + 1)
end
return {1, 0, 0}
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

/// The Redis key of `key`'s budget under `limit`:
/// `rl:{name}:{budget}:{key hash}`, where `budget` names the limit's key
/// kind, rate, period and burst ([`budget_id`]). A reload that changes any
/// of them starts every client's budget afresh, as the local limiter does
/// (README "Reload"); a stored theoretical arrival time judged against a
/// smaller `burst` kept a client out for up to `burst` periods after the
/// limit was loosened (rate-limit probe).
fn key_name(limit: &RateLimitConfig, key: u64) -> String {
    format!("rl:{}:{:08x}:{key:016x}", limit.name, budget_id(limit))
}

/// A digest of what makes `limit`'s budget: its key kind, rate, period
/// (ns) and burst. The same on every instance with the same limit (xxh3 of
/// fixed text), so a fleet shares one budget.
fn budget_id(limit: &RateLimitConfig) -> u32 {
    let key = match &limit.key {
        LimitKey::Ip => "ip".to_string(),
        LimitKey::Global => "global".to_string(),
        LimitKey::Header(name) => format!("header:{name}"),
        LimitKey::Cookie(name) => format!("cookie:{name}"),
    };
    let text = format!(
        "{key} {}/{} {}",
        limit.rate,
        limit.per.as_nanos(),
        limit.burst
    );
    // The low 32 bits: enough to tell a handful of configurations apart.
    xxhash_rust::xxh3::xxh3_64(text.as_bytes()) as u32
}

/// Charges `key` of every limit in `keys` (in order) in Redis, all or
/// none: `Ok(None)` every one allowed and charged, `Ok(Some((i, wait)))`
/// `keys[i]` is the first over (nothing charged), `Err` when Redis could
/// not answer, or answered past the call's deadline (the caller falls back
/// to the local limiter; a call that reaches Redis after it charges
/// nothing). In cluster mode the keys must share a hash slot.
pub(super) async fn check_all(
    redis: &RedisTier,
    keys: &[(&RateLimitConfig, u64)],
) -> Result<Option<(usize, Duration)>, StorageError> {
    let timeout = redis.read_timeout();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // The call's own bound, and as much again for clock differences.
    let deadline = now.saturating_add(timeout.saturating_mul(2));
    let mut args = Vec::with_capacity(1 + 2 * keys.len());
    args.push(u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX));
    let mut names = Vec::with_capacity(keys.len());
    for (limit, key) in keys {
        let interval = interval_us(limit);
        args.push(interval);
        args.push(interval.saturating_mul(u64::from(limit.burst)));
        names.push(key_name(limit, *key));
    }
    let answer = redis
        .run_script("rate_limit", script(), &names, &args)
        .await?;
    match answer.as_slice() {
        [1, _, _] => Ok(None),
        [0, wait, i] if (1..=keys.len() as i64).contains(i) => Ok(Some((
            (*i - 1) as usize,
            Duration::from_micros((*wait).max(1) as u64),
        ))),
        [-1, _, _] => {
            // Answered in time, yet past the deadline: this host's clock
            // is behind Redis's by more than the slack.
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "redis rate limits: Redis's clock is ahead of this host's by more than the slack; the local limits apply (synchronise the clocks)"
                );
            }
            Err(unexpected("rate-limit call past its deadline"))
        }
        _ => Err(unexpected("unexpected rate-limit script answer")),
    }
}

fn unexpected(what: &'static str) -> StorageError {
    StorageError::Redis(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        what,
    )))
}

/// Takes back one request [`check_all`] allowed for `key` (a later limit
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
            &[key_name(limit, key)],
            &[interval_us(limit)],
        )
        .await
        .map(drop)
}

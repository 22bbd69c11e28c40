//! A start-up warning when the process's file-descriptor limit cannot
//! hold what `max_connections` allows: every proxied connection may need
//! an upstream one too, and past the limit new connections fail (accepts
//! log warnings; upstream connects answer `503`). nginx's
//! `worker_connections` warns alike ("exceed open file resource limit").

/// Descriptors kept beyond two per connection: listeners, Redis, logs,
/// health checks.
const SPARE: u64 = 64;

/// The soft `RLIMIT_NOFILE` of this process, if known (`rustix`, as the
/// body arena reads `RLIMIT_FSIZE`); `None` when unlimited.
#[cfg(target_os = "linux")]
fn soft_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(not(target_os = "linux"))]
fn soft_limit() -> Option<u64> {
    None
}

/// What to warn of, if anything, for `limit` descriptors and the two
/// listeners' `max_connections`.
fn warning(limit: u64, proxy: usize, admin: usize) -> Option<String> {
    let needed = (proxy as u64)
        .saturating_mul(2)
        .saturating_add(admin as u64)
        .saturating_add(SPARE);
    (limit < needed).then(|| {
        format!(
            "the open-file limit ({limit}) is below what max_connections ({proxy}, each with an upstream connection) and admin.max_connections ({admin}) may need ({needed}): connections past it fail; raise it (ulimit -n, or LimitNOFILE= in the systemd unit)"
        )
    })
}

/// Logs the warning once at start, if the limit is known and too low.
pub fn warn_if_short(proxy: usize, admin: usize) {
    if let Some(w) = soft_limit().and_then(|limit| warning(limit, proxy, admin)) {
        tracing::warn!("{w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_judged_against_the_connections() {
        // The defaults (10,000 and 256) want 20,320.
        assert!(warning(1024, 10_000, 256).is_some_and(|w| w.contains("(20320)")));
        assert_eq!(warning(1_048_576, 10_000, 256), None);
        assert_eq!(warning(1024, 400, 64), None);
    }
}

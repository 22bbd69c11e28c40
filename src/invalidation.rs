//! Cascading invalidation (`[[invalidation.cascade]]`): a purge of, or a
//! successful unsafe method on, a path that a cascade's `on` glob matches
//! also purges the cascade's tags and path prefixes, hard or soft.
//!
//! Purged prefixes are paths too, so cascades chain: a prefix purged by one
//! cascade sets off the cascades whose `on` matches it. The chain stops at
//! [`MAX_DEPTH`] levels, and each cascade fires at most once per chain, so
//! a cycle (`/a/**` → `/b/`, `/b/**` → `/a/`) ends after one round. Tags
//! carry no path and set off nothing further.
//!
//! Globs are the rules' (`rules/path_glob.rs`): `*` within a segment, `**/`
//! any number of segments, matched against the path without the query and
//! with repeated slashes merged.

use crate::rules::PathGlob;

use crate::cache::Purge;

/// Levels of cascades one purge may set off (the first level is the
/// cascades matching the purged path itself).
pub const MAX_DEPTH: usize = 3;

/// One `[[invalidation.cascade]]`.
#[derive(Debug, Clone)]
pub struct Cascade {
    on: String,
    matcher: PathGlob,
    purge_tags: Vec<String>,
    purge_prefixes: Vec<String>,
    soft: bool,
}

/// A bad `on` glob.
#[derive(Debug, thiserror::Error)]
#[error("invalid glob {pattern:?}: {source}")]
pub struct CascadeError {
    pattern: String,
    #[source]
    source: globset::Error,
}

impl Cascade {
    pub fn new(
        on: &str,
        purge_tags: Vec<String>,
        purge_prefixes: Vec<String>,
        soft: bool,
    ) -> Result<Cascade, CascadeError> {
        let matcher = PathGlob::new(on).map_err(|source| CascadeError {
            pattern: on.to_string(),
            source,
        })?;
        Ok(Cascade {
            on: on.to_string(),
            matcher,
            purge_tags,
            purge_prefixes,
            soft,
        })
    }

    pub fn on(&self) -> &str {
        &self.on
    }

    fn matches(&self, path: &str) -> bool {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        self.matcher.is_match(path)
    }
}

/// One purge a cascade sets off.
#[derive(Debug, Clone)]
pub struct Step {
    pub purge: Purge,
    /// Mark stale instead of removing.
    pub soft: bool,
    /// 1 for a cascade matching the original path, 2 and 3 for chained ones.
    pub depth: usize,
}

/// The configured cascades, in file order. Empty = off (nothing runs).
#[derive(Debug, Clone, Default)]
pub struct Cascades(Vec<Cascade>);

impl Cascades {
    pub fn new(cascades: Vec<Cascade>) -> Cascades {
        Cascades(cascades)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The purges that purging `path` sets off, level by level: at most
    /// [`MAX_DEPTH`] levels, each cascade at most once.
    pub fn plan(&self, path: &str) -> Vec<Step> {
        let mut steps = Vec::new();
        if self.0.is_empty() {
            return steps;
        }
        let mut fired = vec![false; self.0.len()];
        let mut frontier = vec![path.to_string()];
        for depth in 1..=MAX_DEPTH {
            let mut next = Vec::new();
            for p in &frontier {
                for (i, c) in self.0.iter().enumerate() {
                    if fired[i] || !c.matches(p) {
                        continue;
                    }
                    fired[i] = true;
                    if !c.purge_tags.is_empty() {
                        steps.push(Step {
                            purge: Purge::Tags(c.purge_tags.clone()),
                            soft: c.soft,
                            depth,
                        });
                    }
                    for prefix in &c.purge_prefixes {
                        steps.push(Step {
                            purge: Purge::Prefix(prefix.clone()),
                            soft: c.soft,
                            depth,
                        });
                        next.push(prefix.clone());
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(on: &str, tags: &[&str], prefixes: &[&str]) -> Cascade {
        Cascade::new(
            on,
            tags.iter().map(|s| s.to_string()).collect(),
            prefixes.iter().map(|s| s.to_string()).collect(),
            false,
        )
        .unwrap()
    }

    fn describe(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match &s.purge {
                Purge::Tags(t) => format!("{}:tags {}", s.depth, t.join(",")),
                Purge::Prefix(p) => format!("{}:prefix {p}", s.depth),
                Purge::Url(u) => format!("{}:url {u}", s.depth),
            })
            .collect()
    }

    #[test]
    fn matching_path_sets_off_tags_and_prefixes() {
        let cs = Cascades::new(vec![c(
            "/api/products/**",
            &["product-listing"],
            &["/catalog/"],
        )]);
        assert_eq!(
            describe(&cs.plan("/api/products/7?x=1")),
            ["1:tags product-listing", "1:prefix /catalog/"]
        );
        assert!(cs.plan("/api/users/7").is_empty());
        // Repeated slashes are merged for matching (nginx's merge_slashes).
        assert_eq!(describe(&cs.plan("//api/products//7")).len(), 2);
        assert!(Cascades::default().plan("/x").is_empty());
    }

    #[test]
    fn chains_stop_at_depth_and_cycles_end() {
        // a → b → c → d → e: only three levels run.
        let cs = Cascades::new(vec![
            c("/a/**", &[], &["/b/"]),
            c("/b/**", &[], &["/c/"]),
            c("/c/**", &[], &["/d/"]),
            c("/d/**", &["deep"], &["/e/"]),
        ]);
        assert_eq!(
            describe(&cs.plan("/a/1")),
            ["1:prefix /b/", "2:prefix /c/", "3:prefix /d/"]
        );
        // A cycle fires each cascade once.
        let cs = Cascades::new(vec![
            c("/x/**", &["tx"], &["/y/"]),
            c("/y/**", &["ty"], &["/x/"]),
        ]);
        assert_eq!(
            describe(&cs.plan("/x/1")),
            ["1:tags tx", "1:prefix /y/", "2:tags ty", "2:prefix /x/"]
        );
    }

    #[test]
    fn bad_glob_is_an_error() {
        assert!(Cascade::new("[", vec![], vec![], false).is_err());
    }
}

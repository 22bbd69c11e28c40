//! Which rule a cache-handled request counts under in
//! `strata_rule_requests_total` (and so in `/events` and the dashboard's
//! hit ratio by rule): the rule that applied to its response. That is the
//! request's rule ([`crate::rules::RuleSet::find`]) unless it has a
//! `content_type` the response does not match; then it is the next
//! matching rule whose `content_type` fits, or none (SPEC §7: a rule
//! whose `methods` or `content_type` do not match does not apply, and the
//! next matching rule is tried).
//!
//! A rule without `content_type` applies to any response, so a hit under
//! it is counted with one check and no glob matched; only a rule with one
//! has its stored response's media type looked at. A miss under such a
//! rule is judged once the response is known (the upstream's answer, the
//! leader's stored variant, or the stale copy served), not by the lookup.
//!
//! A request that goes to fetch is counted only when its answer is known,
//! by the answer's outcome, as `strata_requests_total` counts it (README,
//! "Hit ratio: the one formula"): `miss` or `revalidated` as the rule's
//! miss, a stale copy served on error as its hit, and Strata's own errors
//! (an origin-phase `429`, a `502`/`504`) not at all. The fetch's steps
//! only note the rule ([`RequestCtx::count_miss`],
//! [`RequestCtx::count_fetched`]) in a [`NotedRule`] the miss future holds
//! (not the request context, whose size is on the hit path);
//! [`RequestCtx::count_answered`] counts.

use http::header::{self, HeaderMap};
use http::{Method, Request};

use std::sync::atomic::{AtomicUsize, Ordering};

use super::RequestCtx;
use crate::cache::entry::Variant;
use crate::metrics::Outcome;

/// The rule a fetched request counts under once its answer is known:
/// the rule's index + 1, 0 for none. Atomic only because the context is
/// shared by reference across the fetch's `.await`s (one task writes it).
#[derive(Debug, Default)]
pub struct NotedRule(AtomicUsize);

impl NotedRule {
    fn note(&self, rule: usize) {
        self.0.store(rule.saturating_add(1), Ordering::Relaxed);
    }

    fn get(&self) -> Option<usize> {
        self.0.load(Ordering::Relaxed).checked_sub(1)
    }
}

// === impl RequestCtx ===

impl RequestCtx<'_> {
    /// A hit (fresh, or stale where allowed) from `variant`: counted under
    /// the rule that applies to the stored response.
    pub(super) fn count_hit<B>(&self, req: &Request<B>, variant: &Variant) {
        let fields = Some(&variant.headers);
        if let Some(i) = self.applied_rule(req.uri().path(), req.method(), fields) {
            self.runtime.rule_counters.hit(i);
        }
    }

    /// A request going upstream for the cache, as the lookup sent it:
    /// noted under the request's rule when that applies whatever the
    /// response; else [`RequestCtx::count_fetched`] notes it.
    pub(super) fn count_miss(&self, noted: &NotedRule) {
        if let Some(i) = self.rule.filter(|&i| !self.waits(i)) {
            noted.note(i);
        }
    }

    /// The answer to a fetched request, with `outcome`: counted under the
    /// rule noted for it, as the one formula counts (see the module docs).
    pub(super) fn count_answered(&self, noted: &NotedRule, outcome: Outcome) {
        let Some(i) = noted.get() else {
            return;
        };
        let counters = &self.runtime.rule_counters;
        match outcome {
            Outcome::Hit | Outcome::Stale => counters.hit(i),
            Outcome::Miss | Outcome::Revalidated => counters.miss(i),
            Outcome::Bypass | Outcome::Error => {}
        }
    }

    /// The answer to a miss whose request's rule waits for the response
    /// (and so was not noted by [`RequestCtx::count_miss`]): noted
    /// under the rule that applies to the response with `fields` (the
    /// upstream's, or the stored variant's the request is answered from).
    /// `None`, no response (the upstream failed): under the request's rule.
    pub(super) fn count_fetched(
        &self,
        noted: &NotedRule,
        path: &str,
        method: &Method,
        fields: Option<&HeaderMap>,
    ) {
        if !self.rule_waits() {
            return;
        }
        if let Some(i) = self.applied_rule(path, method, fields) {
            noted.note(i);
        }
    }

    /// Whether the request's rule applies only to some media types, so
    /// that its miss is counted by [`RequestCtx::count_fetched`].
    pub(super) fn rule_waits(&self) -> bool {
        self.rule.is_some_and(|i| self.waits(i))
    }

    /// Whether rule `i` applies only to some media types.
    fn waits(&self, i: usize) -> bool {
        let rules = &self.runtime.config.rules;
        rules.get(i).is_some_and(|r| r.waits_for_response())
    }

    /// The rule that applies to a response with `fields` to a request for
    /// `path` by `method` (see the module docs).
    fn applied_rule(
        &self,
        path: &str,
        method: &Method,
        fields: Option<&HeaderMap>,
    ) -> Option<usize> {
        let start = self.rule?;
        let Some(fields) = fields.filter(|_| self.waits(start)) else {
            return Some(start);
        };
        let content_type = fields.get(header::CONTENT_TYPE).map(|v| v.as_bytes());
        self.runtime
            .config
            .rules
            .applied(start, path, method, content_type)
    }
}

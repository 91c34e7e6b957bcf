//! `GET /readyz`: whether this instance can serve reads and writes, with
//! each dependency's state as a live probe found it.
//!
//! The probes run concurrently, each bounded by its tier's own timeout
//! (`PROGRESS_REDIS_TIMEOUT_MS`, `PROGRESS_DATABASE_TIMEOUT_MS`), so a
//! blackholed dependency costs the probe that long and no more.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::AppState;
use crate::domain::Timestamp;
use crate::service::{BreakerState, ProgressService, TierHealth, TierState};

/// The dependencies `/readyz` always reports, configured or not.
const DEPENDENCIES: [&str; 3] = ["memory", "redis", "postgres"];

/// Seconds a load balancer should wait before asking again after a 503.
const RETRY_AFTER_SECONDS: &str = "1";

/// The service as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overall {
    /// Every configured dependency is up.
    Ok,
    /// Some dependency is down, but reads and writes are still served (one
    /// of Redis and PostgreSQL in the tiered setup).
    Degraded,
    /// Reads and writes fail: no tier that could serve them is up.
    Unavailable,
}

impl Overall {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Overall::Ok => "ok",
            Overall::Degraded => "degraded",
            Overall::Unavailable => "unavailable",
        }
    }
}

/// One round of probes.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// What the probes add up to.
    pub overall: Overall,
    /// Each configured tier's probe.
    pub tiers: Vec<TierHealth>,
    /// When the probes ran.
    pub checked_at: Timestamp,
}

impl Readiness {
    /// Probes every tier of the service's store. Any one tier that is up
    /// can serve reads and writes on its own (the tiered store falls back
    /// to the other), so the service is unavailable only when none is.
    pub async fn check(service: &ProgressService) -> Self {
        let tiers = service.health().await;
        Self { overall: overall_of(&tiers), tiers, checked_at: Timestamp::now() }
    }

    /// Whether reads and writes are served.
    pub fn can_serve(&self) -> bool {
        self.overall != Overall::Unavailable
    }

    /// `{"memory": {...}, "redis": {...}, "postgres": {...}}`: every
    /// dependency, `not_configured` where the settings do not use it.
    pub fn dependencies(&self) -> Value {
        let mut out = Map::new();
        for name in DEPENDENCIES {
            let doc = match self.tiers.iter().find(|t| t.tier == name) {
                Some(tier) => tier_json(tier),
                None => json!({
                    "state": TierState::NotConfigured.as_str(),
                    "latency_ms": null,
                    "last_error": null,
                    "last_error_at": null,
                    "breaker": null,
                }),
            };
            out.insert(name.to_owned(), doc);
        }
        Value::Object(out)
    }

    /// `{"redis": "closed", …}` for the tiers that have a breaker.
    pub fn breakers(&self) -> Value {
        let breakers: Map<String, Value> =
            self.tiers.iter().filter_map(|t| Some((t.tier.to_owned(), json!(t.breaker?.as_str())))).collect();
        Value::Object(breakers)
    }

    /// The `/readyz` document.
    pub fn to_json(&self) -> Value {
        json!({
            "status": self.overall.as_str(),
            "checked_at": self.checked_at,
            "dependencies": self.dependencies(),
        })
    }
}

/// What the tiers add up to. A tier counts as serving when its probe
/// succeeded and its breaker (where it has one) is not open: requests skip
/// a tier whose breaker is open until the next breaker probe lets them try
/// it again, also when it answers this probe already.
fn overall_of(tiers: &[TierHealth]) -> Overall {
    let serving = tiers.iter().filter(|t| t.state == TierState::Up && t.breaker != Some(BreakerState::Open)).count();
    match serving {
        0 => Overall::Unavailable,
        n if n == tiers.len() => Overall::Ok,
        _ => Overall::Degraded,
    }
}

fn tier_json(tier: &TierHealth) -> Value {
    let (at, error) = match &tier.last_error {
        Some((at, error)) => (json!(at), json!(error)),
        None => (Value::Null, Value::Null),
    };
    json!({
        "state": tier.state.as_str(),
        "latency_ms": millis(tier.latency),
        "last_error": error,
        "last_error_at": at,
        "breaker": tier.breaker.map(|b| b.as_str()),
    })
}

/// A duration in milliseconds with microsecond resolution.
pub(crate) fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}

/// `GET /readyz`: 200 while reads and writes can be served (`ok` or
/// `degraded`), else 503 with `Retry-After`; the body says why either way.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = Readiness::check(&state.service).await;
    let status = if readiness.can_serve() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut response = (status, readiness.to_json().to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tier(tier: &'static str, state: TierState, breaker: Option<BreakerState>) -> TierHealth {
        TierHealth { tier, state, latency: Duration::ZERO, last_error: None, breaker }
    }

    #[test]
    fn a_tier_whose_breaker_is_open_does_not_serve_even_when_it_answers() {
        use BreakerState::{Closed, HalfOpen, Open};
        use TierState::{Down, Up};
        let pg = |state, breaker| vec![tier("postgres", state, Some(breaker))];
        assert_eq!(overall_of(&pg(Up, Closed)), Overall::Ok);
        assert_eq!(overall_of(&pg(Up, HalfOpen)), Overall::Ok, "half open: requests try it");
        assert_eq!(overall_of(&pg(Up, Open)), Overall::Unavailable, "PostgreSQL alone, back but not yet let in");
        assert_eq!(overall_of(&pg(Down, Closed)), Overall::Unavailable);
        let both = |redis: (TierState, BreakerState), pg: (TierState, BreakerState)| {
            vec![tier("redis", redis.0, Some(redis.1)), tier("postgres", pg.0, Some(pg.1))]
        };
        assert_eq!(overall_of(&both((Up, Closed), (Up, Closed))), Overall::Ok);
        assert_eq!(overall_of(&both((Up, Open), (Up, Closed))), Overall::Degraded);
        assert_eq!(overall_of(&both((Down, Open), (Up, Closed))), Overall::Degraded);
        assert_eq!(overall_of(&both((Up, Open), (Up, Open))), Overall::Unavailable);
        assert_eq!(overall_of(&[tier("redis", Up, None)]), Overall::Ok, "Redis alone has no breaker");
        assert_eq!(overall_of(&[tier("redis", Down, None)]), Overall::Unavailable);
    }
}

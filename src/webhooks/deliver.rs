//! The delivery task: claims due deliveries from the outbox, sends each
//! beside the request path (a semaphore bounds those in flight, a timeout
//! each one), and settles it: delivered, tried again later, or given up.
//!
//! A claim leases a delivery for [`LEASE_MARGIN`] beyond the send timeout,
//! so no other instance attempts it meanwhile; one that crashes mid-send
//! leaves it to be claimed again when the lease ends (at least once).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::schedule::{parse_retry_after, retry_delay};
use super::{Webhooks, event_label};
use crate::domain::Timestamp;
use crate::store::{Delivery, DeliveryState};

/// How long past the send timeout a claim holds a delivery.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// How often the outbox is asked for due deliveries when nothing wakes the
/// task sooner (a delivery this instance records wakes it at once).
const POLL: Duration = Duration::from_secs(1);

/// Most deliveries claimed at once.
const CLAIM_BATCH: usize = 64;

/// How often the outbox's gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(5);

/// How often delivered and given-up deliveries past their time are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered,
    /// A network error, a timeout, 408, 429, 5xx (or a redirect, which is
    /// not followed): tried again, not sooner than `retry_after` if given.
    Retry {
        /// What went wrong, for `GET /admin/webhooks`.
        error: String,
        /// The receiver's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Any other 4xx, or a host no longer allowed: given up.
    GiveUp {
        /// What went wrong.
        error: String,
    },
}

impl Outcome {
    /// The outcome of an answer with `status` (and its `Retry-After`).
    pub fn of_status(status: u16, retry_after: Option<Duration>) -> Self {
        match status {
            200..=299 => Outcome::Delivered,
            408 | 429 | 500..=599 | 300..=399 => Outcome::Retry { error: format!("HTTP {status}"), retry_after },
            _ => Outcome::GiveUp { error: format!("HTTP {status}") },
        }
    }
}

/// The delivery after an attempt that ended with `outcome` at `now_ms`
/// (`jitter` in [0, 1) spreads the retries).
pub fn after_attempt(delivery: &Delivery, outcome: &Outcome, now_ms: i64, jitter: f64) -> Delivery {
    let mut after = delivery.clone();
    after.attempts = after.attempts.saturating_add(1);
    after.next_ms = now_ms;
    match outcome {
        Outcome::Delivered => {
            after.state = DeliveryState::Delivered;
            after.last_error = None;
        }
        Outcome::GiveUp { error } => {
            after.state = DeliveryState::Failed;
            after.last_error = Some(error.clone());
        }
        Outcome::Retry { error, retry_after } => {
            let wait = retry_delay(after.attempts, *retry_after, jitter);
            let next = now_ms.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
            if next > after.deadline_ms {
                after.state = DeliveryState::Failed;
                after.last_error = Some(format!("{error}; gave up after {} attempts", after.attempts));
            } else {
                after.state = DeliveryState::Pending;
                after.next_ms = next;
                after.last_error = Some(error.clone());
            }
        }
    }
    after
}

/// The HTTP client deliveries go out on: hyper's pooled client (redirects
/// are not followed), over rustls with ring and the system's roots.
type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

fn client(timeout: Duration) -> Result<Client, String> {
    let roots = crate::tls::roots(None).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "webhooks to https URLs will fail: no trusted roots");
        rustls::RootCertStore::empty()
    });
    let tls = crate::tls::client_config(crate::tls::Verify::Full, Some(roots))?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
}

/// Runs until the webhooks are stopped.
pub(super) async fn run(hooks: Arc<Webhooks>) {
    let client = match client(hooks.config.timeout) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; no webhook will be sent");
            return;
        }
    };
    let lease = hooks.config.timeout + LEASE_MARGIN;
    let permits = Arc::new(Semaphore::new(hooks.config.concurrency));
    let mut stop = hooks.stop.subscribe();
    let (mut gauges_at, mut pruned_at) = (tokio::time::Instant::now() - GAUGES_EVERY, tokio::time::Instant::now());
    loop {
        if *stop.borrow() {
            return;
        }
        hooks.record_held().await;
        let mut more = false;
        let room = permits.available_permits().min(CLAIM_BATCH);
        if room > 0 {
            let now = Timestamp::now().millis();
            let until = now + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
            match hooks.outbox.claim(now, until, room).await {
                Ok(batch) => {
                    more = batch.len() == room;
                    for delivery in batch {
                        let Ok(permit) = permits.clone().acquire_owned().await else { return };
                        tokio::spawn(attempt(hooks.clone(), client.clone(), delivery, permit));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot claim webhook deliveries now"),
            }
        }
        if gauges_at.elapsed() >= GAUGES_EVERY {
            gauges_at = tokio::time::Instant::now();
            if let Ok(summary) = hooks.outbox.summary().await {
                let age = summary
                    .oldest_pending_ms
                    .map(|at| Duration::from_millis(u64::try_from(Timestamp::now().millis() - at).unwrap_or(0)));
                crate::metrics::set_webhooks(summary.pending, summary.failed, age);
            }
        }
        if pruned_at.elapsed() >= PRUNE_EVERY {
            pruned_at = tokio::time::Instant::now();
            let _ = hooks.outbox.prune(Timestamp::now().millis()).await;
        }
        if more {
            continue;
        }
        tokio::select! {
            () = hooks.recorded.notified() => {}
            () = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One attempt of `delivery`, then its settlement.
async fn attempt(hooks: Arc<Webhooks>, client: Client, delivery: Delivery, _permit: OwnedSemaphorePermit) {
    let token = delivery.next_ms;
    let outcome = match (delivery.operator, hooks.config.allowed.check(&delivery.url)) {
        (false, Err(why)) => Outcome::GiveUp { error: format!("webhook.url {why}") },
        _ => send(&hooks, &client, &delivery).await,
    };
    let after = after_attempt(&delivery, &outcome, Timestamp::now().millis(), fastrand::f64());
    let result = match after.state {
        DeliveryState::Delivered => "delivered",
        DeliveryState::Pending => "retry",
        DeliveryState::Failed => "failed",
    };
    crate::metrics::webhook_attempt(event_label(&after.event), result);
    if after.state == DeliveryState::Failed {
        tracing::warn!(webhook_id = %after.id, record = %after.record, error = ?after.last_error, "gave up a webhook delivery");
    }
    match hooks.outbox.settle(token, &after).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!(webhook_id = %after.id, "a webhook's lease ended before its attempt did"),
        Err(e) => {
            tracing::warn!(error = %e, webhook_id = %after.id, "cannot settle a webhook delivery; it will be tried again")
        }
    }
    // Room for one more: look for due deliveries now rather than at the next poll.
    hooks.recorded.notify_one();
}

/// Signs and sends `delivery` once, within the send timeout.
async fn send(hooks: &Webhooks, client: &Client, delivery: &Delivery) -> Outcome {
    let timestamp = Timestamp::now().millis() / 1000;
    let signature = match hooks.signer.sign(&delivery.id, timestamp, delivery.body.as_bytes()) {
        Ok(signature) => signature,
        Err(e) => return Outcome::GiveUp { error: format!("cannot sign: {e}") },
    };
    let request = http::Request::post(delivery.url.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, concat!("progressd/", env!("CARGO_PKG_VERSION"), " (webhooks)"))
        .header(standardwebhooks::HEADER_WEBHOOK_ID, delivery.id.as_str())
        .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, timestamp.to_string())
        .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
        .body(http_body_util::Full::new(bytes::Bytes::from(delivery.body.clone())));
    let request = match request {
        Ok(request) => request,
        Err(e) => return Outcome::GiveUp { error: format!("cannot make a request to this URL: {e}") },
    };
    match tokio::time::timeout(hooks.config.timeout, client.request(request)).await {
        Ok(Ok(response)) => {
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
            Outcome::of_status(response.status().as_u16(), retry_after)
        }
        Ok(Err(e)) => Outcome::Retry { error: describe(&e), retry_after: None },
        Err(_) => Outcome::Retry { error: format!("no answer within {:?}", hooks.config.timeout), retry_after: None },
    }
}

/// A send error and its causes, on one line.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Delivery {
        Delivery {
            id: "msg_1".into(),
            event: "progress.completed".into(),
            record: "job".into(),
            url: "http://127.0.0.1:9/".into(),
            operator: true,
            body: "{}".into(),
            created_ms: 0,
            deadline_ms: 3_600_000,
            attempts: 0,
            next_ms: 0,
            state: DeliveryState::Pending,
            keep_until_ms: 0,
            last_error: None,
        }
    }

    #[test]
    fn answers_are_delivered_retried_or_given_up_as_the_issue_says() {
        assert_eq!(Outcome::of_status(200, None), Outcome::Delivered);
        assert_eq!(Outcome::of_status(204, None), Outcome::Delivered);
        for retried in [408, 429, 500, 502, 503, 599, 301] {
            assert!(matches!(Outcome::of_status(retried, None), Outcome::Retry { .. }), "{retried}");
        }
        for ended in [400, 401, 403, 404, 410, 422] {
            assert!(matches!(Outcome::of_status(ended, None), Outcome::GiveUp { .. }), "{ended}");
        }
    }

    #[test]
    fn an_attempt_moves_the_delivery_on() {
        let d = pending();
        let ok = after_attempt(&d, &Outcome::Delivered, 10, 0.5);
        assert_eq!((ok.state, ok.attempts, ok.next_ms), (DeliveryState::Delivered, 1, 10));
        let retry = Outcome::Retry { error: "HTTP 503".into(), retry_after: None };
        let first = after_attempt(&d, &retry, 1_000, 0.5);
        assert_eq!((first.state, first.attempts, first.next_ms), (DeliveryState::Pending, 1, 6_000));
        assert_eq!(first.last_error.as_deref(), Some("HTTP 503"));
        let second = after_attempt(&first, &retry, 6_000, 0.5);
        assert_eq!((second.attempts, second.next_ms), (2, 36_000));
        let asked = Outcome::Retry { error: "HTTP 429".into(), retry_after: Some(Duration::from_secs(60)) };
        assert_eq!(after_attempt(&d, &asked, 0, 0.5).next_ms, 60_000, "Retry-After wins over 5 s");
        let gone = after_attempt(&d, &Outcome::GiveUp { error: "HTTP 404".into() }, 7, 0.5);
        assert_eq!((gone.state, gone.last_error.as_deref()), (DeliveryState::Failed, Some("HTTP 404")));
    }

    #[test]
    fn a_retry_past_the_deadline_gives_up() {
        let mut d = pending();
        d.deadline_ms = 4_000;
        let after = after_attempt(&d, &Outcome::Retry { error: "HTTP 500".into(), retry_after: None }, 0, 0.5);
        assert_eq!(after.state, DeliveryState::Failed);
        assert!(after.last_error.unwrap().contains("gave up after 1 attempts"));
    }
}

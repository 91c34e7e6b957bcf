use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::*;
use crate::domain::{ClientFields, Touched, WritePolicy, next_record};
use crate::store::{MemoryOutbox, OutboxSummary, StoreError};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn config(operator: Option<&str>, allowed: &[&str]) -> WebhookConfig {
    WebhookConfig {
        operator_url: operator.map(str::to_owned),
        operator_events: EventSet::default_events(),
        allowed: AllowedHosts::from_list(&allowed.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()),
        secret: SECRET.into(),
        retry_for: Duration::from_secs(3600),
        timeout: Duration::from_secs(1),
        concurrency: 4,
        heartbeat_ms: 60_000,
    }
}

fn record(id: &str, body: Value) -> (ProgressId, StoredRecord) {
    let id = ProgressId::parse(id).unwrap();
    let fields = ClientFields::from_json(&body, 3600).unwrap();
    let policy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1000 };
    let (r, m) = next_record(&id, None, fields, Touched::default(), Timestamp::now(), &policy);
    (id.clone(), StoredRecord::encode(&m, &r))
}

#[test]
fn secrets_are_the_standard_webhooks_form() {
    assert_eq!(check_secret(SECRET), Ok(()));
    assert!(check_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err().contains("whsec_"));
    assert!(check_secret("whsec_not base64!").unwrap_err().contains("base64"));
    assert!(check_secret("whsec_c2hvcnQ=").unwrap_err().contains("holds 5 bytes"));
}

#[test]
fn allowed_hosts_name_hosts_without_ports() {
    let some = AllowedHosts::from_list(&["Hooks.Example.com".into(), "10.0.0.7".into()]);
    assert_eq!(some.check("https://HOOKS.example.com:8443/p"), Ok(()));
    assert_eq!(some.check("http://10.0.0.7/"), Ok(()));
    let refused = some.check("https://evil.example.net/").unwrap_err();
    assert!(refused.contains("\"evil.example.net\"") && refused.contains("not in"), "{refused}");
    assert!(AllowedHosts::from_list(&[]).check("https://a.example/").unwrap_err().contains("is empty"));
    assert_eq!(AllowedHosts::from_list(&["*".into()]).check("https://a.example/"), Ok(()));
}

#[tokio::test]
async fn a_terminal_write_records_one_delivery_per_target_once() {
    let outbox = Arc::new(MemoryOutbox::default());
    let hooks = Webhooks::new(config(Some("http://operator.example/hook"), &["own.example"]), outbox.clone()).unwrap();
    let own = json!({"url": "http://own.example/h", "events": ["progress.completed", "progress.stage"]});
    let (id, stored) = record("job-1", json!({"status": "completed", "stage": "done", "webhook": own}));
    let caused = EventSet::of(&[HookEvent::Completed, HookEvent::Stage]);
    let wanted = hooks.wanted(caused, own.as_object());
    assert_eq!(wanted, caused, "the operator wants completed, the record also stage");
    hooks.record(&id, &stored, wanted, own.as_object(), 0).await;
    hooks.record(&id, &stored, wanted, own.as_object(), 0).await;
    let listed = outbox.list(10).await.unwrap();
    let mut seen: Vec<(String, String, bool)> =
        listed.iter().map(|d| (d.event.clone(), d.url.clone(), d.operator)).collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("progress.completed".into(), "http://operator.example/hook".into(), true),
            ("progress.completed".into(), "http://own.example/h".into(), false),
            ("progress.stage".into(), "http://own.example/h".into(), false),
        ],
        "recorded once although recorded twice"
    );
    let body: Value = serde_json::from_str(&listed[0].body).unwrap();
    assert_eq!(body["data"]["id"], "job-1");
    assert_eq!(body["data"]["status"], "completed");
    assert!(body["type"].as_str().unwrap().starts_with("progress."));
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(listed.iter().all(|d| d.id.starts_with("msg_") && d.id.len() == 36));
}

#[tokio::test]
async fn writes_no_target_wants_record_nothing() {
    let outbox = Arc::new(MemoryOutbox::default());
    let hooks = Webhooks::new(config(None, &["*"]), outbox.clone()).unwrap();
    assert!(hooks.wanted(EventSet::of(&[HookEvent::Completed]), None).is_empty(), "no operator URL, no own");
    let own = json!({"url": "http://own.example/h", "events": ["progress.failed"]});
    assert!(hooks.wanted(EventSet::of(&[HookEvent::Completed]), own.as_object()).is_empty());
    assert!(hooks.wanted(EventSet::EMPTY, own.as_object()).is_empty());
    let stage_only = Webhooks::new(config(Some("http://o.example/"), &[]), outbox).unwrap();
    assert!(stage_only.wanted(EventSet::of(&[HookEvent::Stage]), None).is_empty(), "stage is not a default event");
}

/// An outbox that refuses until told otherwise.
#[derive(Default)]
struct Flaky {
    inner: MemoryOutbox,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Outbox for Flaky {
    async fn enqueue(&self, d: &Delivery) -> Result<bool, StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable { tier: "redis", reason: "down".into() });
        }
        self.inner.enqueue(d).await
    }
    async fn claim(&self, now: i64, until: i64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.inner.claim(now, until, limit).await
    }
    async fn settle(&self, token: i64, after: &Delivery) -> Result<bool, StoreError> {
        self.inner.settle(token, after).await
    }
    async fn list(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.inner.list(limit).await
    }
    async fn retry(&self, id: &str, now: i64, deadline: i64) -> Result<bool, StoreError> {
        self.inner.retry(id, now, deadline).await
    }
    async fn summary(&self) -> Result<OutboxSummary, StoreError> {
        self.inner.summary().await
    }
    async fn prune(&self, now: i64) -> Result<u64, StoreError> {
        self.inner.prune(now).await
    }
}

#[tokio::test]
async fn what_no_store_can_record_is_held_and_recorded_later() {
    let outbox = Arc::new(Flaky::default());
    outbox.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let hooks = Webhooks::new(config(Some("http://o.example/"), &[]), outbox.clone()).unwrap();
    let (id, stored) = record("job-2", json!({"status": "failed", "error": "boom"}));
    hooks.record(&id, &stored, EventSet::of(&[HookEvent::Failed]), None, 0).await;
    assert_eq!(outbox.summary().await.unwrap().pending, 0);
    hooks.record_held().await;
    assert_eq!(hooks.unrecorded.lock().unwrap().len(), 1, "still held while the store refuses");
    outbox.down.store(false, std::sync::atomic::Ordering::SeqCst);
    hooks.record_held().await;
    assert!(hooks.unrecorded.lock().unwrap().is_empty());
    assert_eq!(outbox.summary().await.unwrap().pending, 1);
}

#[tokio::test]
async fn a_record_may_name_only_an_allowed_host() {
    let hooks = Webhooks::new(config(None, &["own.example"]), Arc::new(MemoryOutbox::default())).unwrap();
    let ok = json!({"url": "https://own.example/x"});
    assert!(hooks.check_record_target(ok.as_object().unwrap()).is_ok());
    let bad = json!({"url": "https://169.254.169.254/latest"});
    let e = hooks.check_record_target(bad.as_object().unwrap()).unwrap_err();
    assert_eq!(e.field, "webhook.url");
    assert!(e.message.contains("\"169.254.169.254\""), "{}", e.message);
}

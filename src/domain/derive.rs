//! What the server works out on every write: version, timestamps, derived
//! `progress`, the `stages` history, `eta`, and when the record goes stale.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use super::id::ProgressId;
use super::record::{Child, ClientFields, ProgressRecord, Resolved, ServerFields, ServerState, StageSpan, Status};
use super::time::Timestamp;

/// Most entries kept in `stages`; the oldest go first.
pub const MAX_STAGES: usize = 200;

/// Server settings that shape a write.
#[derive(Debug, Clone, Copy)]
pub struct WritePolicy {
    /// `ttl_seconds` when the client sends none.
    pub default_ttl_seconds: u64,
    /// A running record with no write for this long is `stalled`.
    pub heartbeat_ms: i64,
}

/// Server state kept beside the record but not shown in it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RecordMeta {
    /// The record's version (first, so a Lua script can read it from the prefix).
    pub v: u64,
    /// Milliseconds since the epoch after which the record is stalled; 0 when it cannot stall.
    pub s: i64,
    /// Milliseconds since the epoch when the record expires (`expires_at`).
    #[serde(default)]
    pub x: i64,
    /// Milliseconds since the epoch when the record was created: tells two
    /// incarnations of one id apart (a record deleted, then created again).
    #[serde(default)]
    pub c: i64,
    /// Whether the status is terminal: such writes are persisted at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub d: bool,
    /// First (time ms, percent) sample of the current run, for the ETA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<(i64, f64)>,
    /// The record's status, so that a Lua script can keep the listing's
    /// status sets in step from the header alone (in Redis the body may be
    /// compressed). Absent in records written before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<Status>,
}

/// Which client fields a write touched: a PUT touches all of them,
/// a PATCH the keys it carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Touched {
    /// A PUT: the body is the whole client state.
    pub replace: bool,
    /// `progress` carried a number.
    pub progress_set: bool,
    /// `progress` was `null`: go back to deriving it.
    pub progress_cleared: bool,
    /// `current` or `total` was written.
    pub counters: bool,
    /// `children` was written.
    pub children: bool,
}

impl Touched {
    /// A PUT whose body may carry `progress`.
    pub fn replace(fields: &ClientFields) -> Self {
        Self { replace: true, progress_set: fields.progress.is_some(), ..Self::default() }
    }

    /// A PATCH with this (already validated) body.
    pub fn patch(patch: &Map<String, Value>) -> Self {
        let progress = patch.get("progress");
        Self {
            replace: false,
            progress_set: progress.is_some_and(|p| !p.is_null()),
            progress_cleared: progress.is_some_and(Value::is_null),
            counters: patch.contains_key("current") || patch.contains_key("total"),
            children: patch.contains_key("children"),
        }
    }
}

/// Builds the next version of a record from the previous one (if any) and
/// the validated client fields of this write.
pub fn apply_write(
    id: &ProgressId,
    prev: Option<(&ProgressRecord, &RecordMeta)>,
    fields: ClientFields,
    touched: Touched,
    now: Timestamp,
    policy: &WritePolicy,
) -> (ProgressRecord, RecordMeta) {
    next_record(id, prev.map(|(r, m)| (r.server_state(), *m)), fields, touched, now, policy)
}

/// [`apply_write`] from what the server keeps of the previous version.
pub fn next_record(
    id: &ProgressId,
    prev: Option<(ServerState, RecordMeta)>,
    fields: ClientFields,
    touched: Touched,
    now: Timestamp,
    policy: &WritePolicy,
) -> (ProgressRecord, RecordMeta) {
    let (mut prev_record, prev_meta) = match prev {
        Some((r, m)) => (Some(r), Some(m)),
        None => (None, None),
    };
    let prev_status = prev_record.as_ref().map(|r| r.status);
    let status = fields.status;

    let progress = resolve_progress(&fields, touched, prev_status);
    let percent = progress.as_f64().unwrap_or(0.0);

    let started_at = prev_record.as_ref().and_then(|r| r.started_at).or((status == Status::Running).then_some(now));
    let completed_at = match (status.is_terminal(), &prev_record) {
        (false, _) => None,
        (true, Some(r)) if r.status.is_terminal() => r.completed_at.or(Some(now)),
        (true, _) => Some(now),
    };
    let version = prev_record.as_ref().map_or(1, |r| r.version + 1);
    let created_at = prev_record.as_ref().map_or(now, |r| r.created_at);
    let stages = next_stages(
        prev_record.as_mut().map_or_else(Vec::new, |r| std::mem::take(&mut r.stages)),
        fields.stage.as_deref(),
        status,
        now,
    );

    let sample = match (status, prev_meta.and_then(|m| m.e)) {
        (Status::Running, Some((t0, p0))) if percent >= p0 => Some((t0, p0)),
        (Status::Running, _) => Some((now.millis(), percent)),
        _ => None,
    };
    let eta = sample.and_then(|(t0, p0)| estimate_completion(t0, p0, now, percent));

    // A cancel request lasts as long as the incarnation, but a record that
    // finished and is written back to work (a restart, under If-Match) has
    // answered it: the new run starts without one.
    let restarted = prev_status.is_some_and(Status::is_terminal) && !status.is_terminal();
    let (cancel_requested_at, cancel_reason) = match prev_record.as_mut() {
        Some(r) if !restarted => (r.cancel_requested_at, r.cancel_reason.take()),
        _ => (None, None),
    };

    let ttl_seconds = fields.ttl_seconds.unwrap_or(policy.default_ttl_seconds);
    let server = ServerFields {
        id: id.as_str().to_owned(),
        version,
        created_at,
        updated_at: now,
        started_at,
        completed_at,
        cancel_requested_at,
        cancel_reason,
        expires_at: now.plus_millis(ttl_ms(ttl_seconds)),
        eta,
        stages,
    };
    let record = ProgressRecord::assemble(server, fields, Resolved { progress, ttl_seconds });
    let stall_at = if status == Status::Running { stall_deadline(now, cancel_requested_at, policy) } else { 0 };
    let expires_at = record.expires_at.millis();
    let meta = RecordMeta {
        v: version,
        s: stall_at,
        x: expires_at,
        c: record.created_at.millis(),
        d: status.is_terminal(),
        e: sample,
        t: Some(status),
    };
    (record, meta)
}

/// When a running record written at `now` stalls: one heartbeat later;
/// but once a cancellation was requested, no later than one heartbeat after
/// the request, however often the worker writes: a request the worker does
/// not acknowledge (with `status: cancelled`) shows as `stalled`.
fn stall_deadline(now: Timestamp, cancel_requested_at: Option<Timestamp>, policy: &WritePolicy) -> i64 {
    let deadline = now.millis().saturating_add(policy.heartbeat_ms);
    match cancel_requested_at {
        Some(requested) => deadline.min(requested.millis().saturating_add(policy.heartbeat_ms)),
        None => deadline,
    }
}

/// The record after a cancellation request at `now` with `reason`: the
/// client fields unchanged, `cancel_requested_at` and `cancel_reason` set,
/// and, as for any write, the version bumped and `updated_at` moved. The
/// request itself does not put off the stall deadline (it is not a sign of
/// life from the worker): the record stalls when it would have without it,
/// or one heartbeat after the request, whichever comes first.
///
/// The caller has checked that the record is not terminal and has no
/// request yet (a second request changes nothing, see the service).
pub fn request_cancel(
    id: &ProgressId,
    prev: (ProgressRecord, RecordMeta),
    reason: Option<String>,
    now: Timestamp,
    policy: &WritePolicy,
) -> (ProgressRecord, RecordMeta) {
    let (record, prev_meta) = prev;
    let (mut state, fields) = record.into_parts();
    state.cancel_requested_at = Some(now);
    state.cancel_reason = reason;
    let (record, mut meta) = next_record(id, Some((state, prev_meta)), fields, Touched::default(), now, policy);
    if meta.s != 0 && prev_meta.s != 0 {
        meta.s = meta.s.min(prev_meta.s);
    }
    (record, meta)
}

/// `ttl_seconds` in milliseconds, saturating.
pub fn ttl_ms(ttl_seconds: u64) -> i64 {
    i64::try_from(ttl_seconds).unwrap_or(i64::MAX).saturating_mul(1000)
}

/// An explicit `progress` wins; a write that changes the counters or the
/// children re-derives it; otherwise it keeps its value. Entering
/// `completed` without an explicit value fills the bar.
fn resolve_progress(fields: &ClientFields, touched: Touched, prev_status: Option<Status>) -> Number {
    let kept = || fields.progress.clone().unwrap_or_else(|| Number::from(0));
    let mut progress = if touched.progress_set {
        kept()
    } else if touched.replace || touched.progress_cleared {
        derived_progress(fields).map_or_else(|| Number::from(0), percent_number)
    } else if touched.counters || touched.children {
        derived_progress(fields).map_or_else(kept, percent_number)
    } else {
        kept()
    };
    let just_completed = fields.status == Status::Completed && prev_status != Some(Status::Completed);
    if just_completed && !touched.progress_set {
        progress = Number::from(100);
    }
    progress
}

/// Percent from `current`/`total`, else from the children; `None` when neither says.
pub fn derived_progress(fields: &ClientFields) -> Option<f64> {
    counter_percent(fields.current.as_ref(), fields.total.as_ref())
        .or_else(|| fields.children.as_ref().and_then(|c| children_percent(c.values())))
}

fn counter_percent(current: Option<&Number>, total: Option<&Number>) -> Option<f64> {
    let current = current?.as_f64()?;
    let total = total?.as_f64()?;
    (total > 0.0).then(|| (current / total * 100.0).clamp(0.0, 100.0))
}

/// Weighted mean of the children's percent (weight default 1); `None` when
/// there are no children or every weight is 0.
pub fn children_percent<'a>(children: impl Iterator<Item = &'a Child>) -> Option<f64> {
    let (mut sum, mut weights) = (0.0, 0.0);
    for child in children {
        let weight = child.weight.as_ref().and_then(Number::as_f64).unwrap_or(1.0);
        let percent = child
            .progress
            .as_ref()
            .and_then(Number::as_f64)
            .or_else(|| counter_percent(child.current.as_ref(), child.total.as_ref()))
            .unwrap_or(if child.status == Some(Status::Completed) { 100.0 } else { 0.0 });
        sum += weight * percent;
        weights += weight;
    }
    (weights > 0.0 && sum.is_finite()).then(|| (sum / weights).clamp(0.0, 100.0))
}

/// A derived percent, rounded to two decimals; whole numbers print without a fraction.
fn percent_number(percent: f64) -> Number {
    let rounded = (percent * 100.0).round() / 100.0;
    if rounded.fract() == 0.0 {
        Number::from(rounded as u64)
    } else {
        Number::from_f64(rounded).unwrap_or_else(|| Number::from(0))
    }
}

/// Closes the open stage when `stage` changes or the record finishes, and
/// opens one for a new `stage` value.
fn next_stages(mut stages: Vec<StageSpan>, stage: Option<&str>, status: Status, now: Timestamp) -> Vec<StageSpan> {
    let open = stages.last().filter(|s| s.finished_at.is_none()).map(|s| s.name.as_str());
    if open != stage {
        if let Some(last) = stages.last_mut().filter(|s| s.finished_at.is_none()) {
            close(last, now);
        }
        // A finished record written again with the stage it ended in is not a new stage.
        let ended_in_it = status.is_terminal() && stages.last().is_some_and(|s| Some(s.name.as_str()) == stage);
        if let Some(name) = stage.filter(|_| !ended_in_it) {
            stages.push(StageSpan { name: name.to_owned(), started_at: now, finished_at: None, duration_ms: None });
        }
    }
    if status.is_terminal()
        && let Some(last) = stages.last_mut().filter(|s| s.finished_at.is_none())
    {
        close(last, now);
    }
    if stages.len() > MAX_STAGES {
        stages.drain(..stages.len() - MAX_STAGES);
    }
    stages
}

fn close(span: &mut StageSpan, now: Timestamp) {
    span.finished_at = Some(now);
    span.duration_ms = Some(now.millis() - span.started_at.millis());
}

/// Linear extrapolation from the first sample of the run to now.
fn estimate_completion(t0: i64, p0: f64, now: Timestamp, percent: f64) -> Option<Timestamp> {
    let elapsed = now.millis() - t0;
    let gained = percent - p0;
    if elapsed <= 0 || gained <= 0.0 || percent >= 100.0 {
        return None;
    }
    let remaining_ms = (100.0 - percent) * elapsed as f64 / gained;
    (remaining_ms.is_finite() && remaining_ms < 1e15).then(|| now.plus_millis(remaining_ms as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POLICY: WritePolicy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1000 };

    fn fields(v: Value) -> ClientFields {
        ClientFields::from_json(&v, 3600).unwrap()
    }

    fn put(prev: Option<&(ProgressRecord, RecordMeta)>, body: Value, at: i64) -> (ProgressRecord, RecordMeta) {
        let f = fields(body);
        let t = Touched::replace(&f);
        apply_write(&ProgressId::parse("j").unwrap(), prev.map(|(r, m)| (r, m)), f, t, Timestamp(at), &POLICY)
    }

    fn patch(prev: &(ProgressRecord, RecordMeta), body: Value, at: i64) -> (ProgressRecord, RecordMeta) {
        let mut doc = prev.0.client_json();
        super::super::merge::merge_patch(&mut doc, &body);
        let f = fields(doc);
        let t = Touched::patch(body.as_object().unwrap());
        apply_write(&ProgressId::parse("j").unwrap(), Some((&prev.0, &prev.1)), f, t, Timestamp(at), &POLICY)
    }

    #[test]
    fn derives_progress_from_counters_without_dividing_by_zero() {
        assert_eq!(put(None, json!({"current": 1, "total": 3}), 0).0.progress, Number::from_f64(33.33).unwrap());
        assert_eq!(put(None, json!({"current": 5, "total": 0}), 0).0.progress, Number::from(0));
        assert_eq!(put(None, json!({"current": 9, "total": 3}), 0).0.progress, Number::from(100));
    }

    #[test]
    fn derives_progress_from_weighted_children() {
        let r = put(
            None,
            json!({"children": {
                "a": {"progress": 100, "weight": 3},
                "b": {"current": 0, "total": 10},
            }}),
            0,
        );
        assert_eq!(r.0.progress, Number::from(75));
        let r = put(None, json!({"children": {"a": {"status": "completed"}, "b": {}}}), 0);
        assert_eq!(r.0.progress, Number::from(50));
        let r = put(None, json!({"children": {"a": {"progress": 10, "weight": 0}}}), 0);
        assert_eq!(r.0.progress, Number::from(0));
    }

    #[test]
    fn explicit_progress_sticks_until_counters_change() {
        let r = put(None, json!({"progress": 40, "current": 1, "total": 10}), 0);
        assert_eq!(r.0.progress, Number::from(40));
        let r = patch(&r, json!({"message": "still"}), 1);
        assert_eq!(r.0.progress, Number::from(40));
        let r = patch(&r, json!({"current": 5}), 2);
        assert_eq!(r.0.progress, Number::from(50));
        let r = patch(&r, json!({"status": "completed"}), 3);
        assert_eq!(r.0.progress, Number::from(100));
    }

    #[test]
    fn keeps_stage_history_with_durations() {
        let r = put(None, json!({"status": "running", "stage": "RESEARCH"}), 1_000);
        let r = patch(&r, json!({"stage": "CHAPTERS"}), 3_500);
        let r = patch(&r, json!({"message": "m"}), 4_000);
        assert_eq!(r.0.stages.len(), 2);
        assert_eq!(r.0.stages[0].name, "RESEARCH");
        assert_eq!(r.0.stages[0].duration_ms, Some(2_500));
        assert_eq!(r.0.stages[1].finished_at, None);
        let r = patch(&r, json!({"status": "completed"}), 5_000);
        assert_eq!(r.0.stages[1].duration_ms, Some(1_500));
        assert_eq!(r.0.completed_at, Some(Timestamp(5_000)));
        assert_eq!(r.0.started_at, Some(Timestamp(1_000)));
    }

    #[test]
    fn eta_needs_two_points_and_extrapolates() {
        let r = put(None, json!({"status": "running", "progress": 10}), 0);
        assert_eq!(r.0.eta, None);
        let r = patch(&r, json!({"progress": 20}), 10_000);
        // 10 points per 10 s, 80 to go: 80 s after the second write.
        assert_eq!(r.0.eta, Some(Timestamp(90_000)));
        let r = patch(&r, json!({"status": "failed"}), 11_000);
        assert_eq!(r.0.eta, None);
        assert_eq!(r.1.e, None);
    }

    fn cancel(prev: &(ProgressRecord, RecordMeta), reason: Option<&str>, at: i64) -> (ProgressRecord, RecordMeta) {
        let id = ProgressId::parse("j").unwrap();
        request_cancel(&id, prev.clone(), reason.map(str::to_owned), Timestamp(at), &POLICY)
    }

    #[test]
    fn a_cancel_request_is_a_write_that_changes_only_the_server_fields() {
        let r = put(None, json!({"status": "running", "current": 1, "total": 4, "stage": "A", "message": "m"}), 0);
        let c = cancel(&r, Some("user asked"), 300);
        assert_eq!(c.0.cancel_requested_at, Some(Timestamp(300)));
        assert_eq!(c.0.cancel_reason.as_deref(), Some("user asked"));
        assert_eq!((c.0.version, c.1.v, c.0.updated_at), (2, 2, Timestamp(300)));
        assert_eq!(c.0.client_json(), r.0.client_json(), "the client fields are as they were");
        assert_eq!((c.0.started_at, c.0.created_at, &c.0.stages), (r.0.started_at, r.0.created_at, &r.0.stages));
        assert_eq!(c.0.expires_at, Timestamp(60_300), "a write: the time to live starts again");
        // Before the request, the fields are there and null.
        assert_eq!((r.0.cancel_requested_at, r.0.cancel_reason.as_deref()), (None, None));
        let shown = serde_json::to_value(&r.0).unwrap();
        assert!(shown["cancel_requested_at"].is_null() && shown["cancel_reason"].is_null(), "{shown}");
        assert!(cancel(&r, None, 300).0.cancel_reason.is_none(), "the reason is optional");
    }

    #[test]
    fn every_later_write_of_the_incarnation_keeps_the_request() {
        let r = put(None, json!({"status": "running"}), 0);
        let c = cancel(&r, Some("why"), 100);
        let p = patch(&c, json!({"progress": 50}), 200);
        let q = put(Some(&p), json!({"status": "running", "message": "replaced"}), 300);
        for w in [&p, &q] {
            assert_eq!(w.0.cancel_requested_at, Some(Timestamp(100)));
            assert_eq!(w.0.cancel_reason.as_deref(), Some("why"));
        }
        // The worker acknowledges: terminal, and the request stays on record.
        let done = patch(&q, json!({"status": "cancelled"}), 400);
        assert_eq!((done.0.cancel_requested_at, done.1.s, done.1.d), (Some(Timestamp(100)), 0, true));
        // A finished record written back to work (a restart) starts without one.
        let again = put(Some(&done), json!({"status": "running"}), 500);
        assert_eq!((again.0.cancel_requested_at, again.0.cancel_reason), (None, None));
        // A new incarnation has none either.
        assert_eq!(put(None, json!({"status": "running"}), 600).0.cancel_requested_at, None);
    }

    #[test]
    fn an_unacknowledged_request_stalls_one_heartbeat_after_it_however_often_the_worker_writes() {
        // Heartbeat 1 s. Running, written at 0: stalls after 1,000.
        let r = put(None, json!({"status": "running", "progress": 1}), 0);
        assert_eq!(r.1.s, 1_000);
        // The request does not put the deadline off…
        let c = cancel(&r, None, 500);
        assert_eq!(c.1.s, 1_000, "not 1,500: a cancel request is no sign of life");
        // …and later progress writes bring it no further than request + heartbeat.
        let p = patch(&c, json!({"progress": 2}), 900);
        assert_eq!(p.1.s, 1_500, "min(900 + 1,000, 500 + 1,000)");
        let p = patch(&p, json!({"progress": 3}), 1_400);
        assert_eq!(p.1.s, 1_500);
        let stored = crate::domain::StoredRecord::encode(&p.1, &p.0);
        let stalled = |now| serde_json::from_slice::<Value>(&stored.render(now)).unwrap()["stalled"].clone();
        assert_eq!((stalled(1_450), stalled(1_501)), (json!(false), json!(true)));
        // A record that had stalled already stays stalled.
        let late = cancel(&put(None, json!({"status": "running"}), 0), None, 5_000);
        assert_eq!(late.1.s, 1_000);
        // Acknowledged: terminal records never stall.
        assert_eq!(patch(&p, json!({"status": "cancelled"}), 1_450).1.s, 0);
    }

    #[test]
    fn a_request_on_a_pending_record_stalls_it_as_soon_as_it_runs_late() {
        let r = put(None, json!({"status": "pending"}), 0);
        let c = cancel(&r, None, 100);
        assert_eq!(c.1.s, 0, "pending records do not stall");
        let running = patch(&c, json!({"status": "running"}), 5_000);
        assert_eq!(running.1.s, 1_100, "the request went unanswered for more than a heartbeat");
        let prompt = patch(&cancel(&r, None, 100), json!({"status": "running"}), 300);
        assert_eq!(prompt.1.s, 1_100);
    }

    #[test]
    fn only_running_records_can_stall_and_versions_count_writes() {
        let r = put(None, json!({"status": "pending"}), 0);
        assert_eq!((r.0.version, r.1.s), (1, 0));
        let r = patch(&r, json!({"status": "running"}), 10);
        assert_eq!((r.0.version, r.1.s), (2, 1_010));
        assert_eq!(r.0.expires_at, Timestamp(60_010));
    }
}

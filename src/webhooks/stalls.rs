//! Stall detection: a running record silent past the heartbeat is reported
//! once per silence (`progress.stalled`). The task pages through running
//! records every [`interval`]; a record past its stall time whose silence
//! (its incarnation and version) has not been reported is recorded in the
//! outbox. The delivery's id is made from that silence, and a delivered
//! one is kept until the record expires, so neither a later scan nor
//! another instance records it twice; the set of silences this instance
//! has already recorded spares the outbox a round trip for each.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Webhooks;
use crate::domain::{EventSet, HookEvent, ProgressId, Status, Timestamp};
use crate::service::{ListQuery, MAX_LIMIT, ProgressService};

/// How often running records are looked at: a quarter of the heartbeat,
/// from 1 to 15 s.
pub fn interval(heartbeat_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(heartbeat_ms / 4).unwrap_or(0))
        .clamp(Duration::from_secs(1), Duration::from_secs(15))
}

/// Runs until the webhooks are stopped.
pub(super) async fn run(hooks: Arc<Webhooks>, service: ProgressService) {
    let every = interval(hooks.config.heartbeat_ms);
    let mut stop = hooks.stop.subscribe();
    // Silences this instance has recorded: id → (created ms, version).
    let mut reported: HashMap<ProgressId, (i64, u64)> = HashMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        match scan(&hooks, &service, &reported).await {
            Ok(seen) => reported = seen,
            Err(e) => tracing::debug!(error = %e, "cannot look for stalled records now"),
        }
    }
}

/// One pass over the running records; the silences reported (before or now).
async fn scan(
    hooks: &Webhooks,
    service: &ProgressService,
    reported: &HashMap<ProgressId, (i64, u64)>,
) -> Result<HashMap<ProgressId, (i64, u64)>, crate::error::Error> {
    let mut seen = HashMap::new();
    let mut query = ListQuery { statuses: vec![Status::Running], limit: MAX_LIMIT, ..ListQuery::default() };
    loop {
        let page = service.list(&query).await?;
        let now = Timestamp::now().millis();
        for (id, record) in page.items {
            let meta = *record.meta();
            if meta.s == 0 || now <= meta.s {
                continue;
            }
            let silence = (meta.c, meta.v);
            if reported.get(&id) != Some(&silence) {
                let own = record.record().ok().and_then(|r| r.into_parts().1.webhook);
                let events = hooks.wanted(EventSet::of(&[HookEvent::Stalled]), own.as_ref());
                if !events.is_empty() {
                    hooks.record(&id, &record, events, own.as_ref(), meta.x).await;
                }
            }
            seen.insert(id, silence);
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => return Ok(seen),
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_are_looked_for_four_times_a_heartbeat_within_bounds() {
        assert_eq!(interval(60_000), Duration::from_secs(15));
        assert_eq!(interval(20_000), Duration::from_secs(5));
        assert_eq!(interval(1_000), Duration::from_secs(1));
        assert_eq!(interval(3_600_000), Duration::from_secs(15));
    }
}

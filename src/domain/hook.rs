//! Webhooks as the domain sees them: the events a record's life sends, the
//! `webhook` client field's shape (`{"url": …, "events": […]}`), and which
//! event a write causes. Nothing here sends anything (`src/webhooks/` does).

use serde_json::{Map, Value};

use super::record::Status;

/// Longest webhook URL accepted, in bytes.
pub const MAX_WEBHOOK_URL: usize = 2048;

/// The webhook URLs accepted, as `openapi.yaml` states them: `http` or
/// `https`; a host name (labels of letters, digits and single hyphens, the
/// last one starting with a letter) or an IPv4 address; an optional port;
/// an optional path and query; no user, no fragment. Every URL this
/// matches is one the URL parser takes, and nothing else is accepted, so
/// the document and the server agree in both directions.
pub const WEBHOOK_URL_PATTERN: &str = concat!(
    r"^https?://",
    r"(([A-Za-z0-9]+(-[A-Za-z0-9]+)*\.)*[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*",
    r"|((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9]))",
    r"(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    r"(/[A-Za-z0-9._~%!$&'()*+,;=:@-]*)*",
    r"(\?[A-Za-z0-9._~%!$&'()*+,;=:@/?-]*)?$",
);

/// [`WEBHOOK_URL_PATTERN`] compiled; like the JSON Schema validators that
/// generate test data, it lets `$` match before a final newline, which the
/// URL parser drops.
fn webhook_url_grammar() -> &'static regex::Regex {
    static GRAMMAR: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        let pattern = WEBHOOK_URL_PATTERN.strip_suffix('$').unwrap_or(WEBHOOK_URL_PATTERN);
        regex::Regex::new(&format!(r"{pattern}\n?\z")).expect("the webhook URL pattern compiles")
    });
    &GRAMMAR
}

/// What happened to a record, as a webhook's `type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookEvent {
    /// It entered `completed`.
    Completed,
    /// It entered `failed`.
    Failed,
    /// It entered `cancelled`.
    Cancelled,
    /// A running record went silent past the heartbeat (once per silence).
    Stalled,
    /// Its `stage` changed (only where asked for by name).
    Stage,
}

impl HookEvent {
    /// Every event, in the order the documents list them.
    pub const ALL: [HookEvent; 5] =
        [HookEvent::Completed, HookEvent::Failed, HookEvent::Cancelled, HookEvent::Stalled, HookEvent::Stage];

    /// The events a target gets when it names none: all but `progress.stage`.
    pub const DEFAULT: [HookEvent; 4] =
        [HookEvent::Completed, HookEvent::Failed, HookEvent::Cancelled, HookEvent::Stalled];

    /// The `type` of the delivery (`progress.completed`).
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Completed => "progress.completed",
            HookEvent::Failed => "progress.failed",
            HookEvent::Cancelled => "progress.cancelled",
            HookEvent::Stalled => "progress.stalled",
            HookEvent::Stage => "progress.stage",
        }
    }

    /// The event named `text` (`progress.completed`), if any.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == text)
    }

    /// The event of entering `status`, when it is terminal.
    pub fn of_terminal(status: Status) -> Option<Self> {
        match status {
            Status::Completed => Some(HookEvent::Completed),
            Status::Failed => Some(HookEvent::Failed),
            Status::Cancelled => Some(HookEvent::Cancelled),
            Status::Pending | Status::Running => None,
        }
    }

    /// A bit of an [`EventSet`].
    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of events (what a target wants, what a write caused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventSet(u8);

impl EventSet {
    /// No event.
    pub const EMPTY: EventSet = EventSet(0);

    /// The set of `events`.
    pub fn of(events: &[HookEvent]) -> Self {
        Self(events.iter().fold(0, |bits, e| bits | e.bit()))
    }

    /// The default set (all but `progress.stage`).
    pub fn default_events() -> Self {
        Self::of(&HookEvent::DEFAULT)
    }

    /// With `event` added.
    pub fn with(self, event: HookEvent) -> Self {
        Self(self.0 | event.bit())
    }

    /// Whether `event` is in the set.
    pub fn contains(self, event: HookEvent) -> bool {
        self.0 & event.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The events of both sets.
    pub fn union(self, other: EventSet) -> Self {
        Self(self.0 | other.0)
    }

    /// The events in both sets.
    pub fn intersection(self, other: EventSet) -> Self {
        Self(self.0 & other.0)
    }

    /// The events, in [`HookEvent::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = HookEvent> {
        HookEvent::ALL.into_iter().filter(move |e| self.contains(*e))
    }

    /// Reads a comma-separated list of event names (`PROGRESS_WEBHOOK_EVENTS`).
    pub fn parse_list(text: &str) -> Result<Self, String> {
        let mut set = EventSet::EMPTY;
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            set = set.with(HookEvent::parse(name).ok_or_else(|| unknown_event(name))?);
        }
        Ok(set)
    }
}

fn unknown_event(name: &str) -> String {
    let names: Vec<&str> = HookEvent::ALL.iter().map(|e| e.as_str()).collect();
    format!("{name:?} is not an event; the events are {}", names.join(", "))
}

/// What a write changed that webhooks are told of.
pub fn events_of_write(prev: Option<(Status, Option<&str>)>, status: Status, stage: Option<&str>) -> EventSet {
    let mut events = EventSet::EMPTY;
    let was_terminal = prev.is_some_and(|(s, _)| s.is_terminal());
    if !was_terminal && let Some(event) = HookEvent::of_terminal(status) {
        events = events.with(event);
    }
    let prev_stage = prev.and_then(|(_, s)| s);
    if stage.is_some() && stage != prev_stage {
        events = events.with(HookEvent::Stage);
    }
    events
}

/// A URL webhooks may be sent to: absolute `http` or `https` with a host,
/// at most [`MAX_WEBHOOK_URL`] bytes. The parsed URL, or what is wrong.
pub fn parse_webhook_url(text: &str) -> Result<url::Url, String> {
    if text.len() > MAX_WEBHOOK_URL {
        return Err(format!("must be at most {MAX_WEBHOOK_URL} bytes long"));
    }
    if !text.starts_with("http://") && !text.starts_with("https://") {
        return Err(format!("must be an absolute http or https URL, not {text:?}"));
    }
    if !webhook_url_grammar().is_match(text) {
        return Err(
            "must be an http or https URL with a host name or IPv4 address, an optional port, path and query, \
             and no user or fragment"
                .into(),
        );
    }
    let url = url::Url::parse(text).map_err(|e| format!("must be an absolute http or https URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must be an http or https URL, not {}:", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    Ok(url)
}

/// The host of a URL as `PROGRESS_WEBHOOK_ALLOWED_HOSTS` lists hosts: a
/// name in lower case, an IPv4 address, or an IPv6 address without brackets.
pub fn url_host(url: &url::Url) -> String {
    match url.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(host) => host.to_string().to_ascii_lowercase(),
        None => String::new(),
    }
}

/// The `webhook` field's value checked: an object that may hold `url` (see
/// [`parse_webhook_url`]) and `events` (an array of event names, at least
/// one), and nothing else; a `null` member is one left out (as a merge
/// patch has it). Whether `url` is there is checked once the write's
/// value is known (a PATCH may send `events` alone): see
/// [`require_webhook_url`]. `Err((path, message))` names the part.
pub fn check_webhook(map: &Map<String, Value>) -> Result<(), (&'static str, String)> {
    if let Some(key) = map.keys().find(|k| !matches!(k.as_str(), "url" | "events")) {
        return Err(("webhook", format!("has an unknown key {key:?}; it takes url and events")));
    }
    match map.get("url") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => parse_webhook_url(text).map(drop).map_err(|m| ("webhook.url", m))?,
        Some(other) => return Err(("webhook.url", format!("must be a string, not {}", super::kind(other)))),
    }
    match map.get("events") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(names)) if names.is_empty() => {
            Err(("webhook.events", "must name at least one event (leave it out for the default ones)".into()))
        }
        Some(Value::Array(names)) => names.iter().try_for_each(|name| match name {
            Value::String(text) if HookEvent::parse(text).is_some() => Ok(()),
            Value::String(text) => Err(("webhook.events", unknown_event(text))),
            other => Err(("webhook.events", format!("must hold event names, not {}", super::kind(other)))),
        }),
        Some(other) => Err(("webhook.events", format!("must be an array of event names, not {}", super::kind(other)))),
    }
}

/// A written `webhook` must say where to: its `url`.
pub fn require_webhook_url(map: &Map<String, Value>) -> Result<&str, (&'static str, String)> {
    map.get("url").and_then(Value::as_str).ok_or(("webhook.url", "is required".to_owned()))
}

/// A record's own webhook target, from its (checked) `webhook` field.
pub fn webhook_target(map: &Map<String, Value>) -> Option<(String, EventSet)> {
    let url = map.get("url")?.as_str()?.to_owned();
    let events = match map.get("events").and_then(Value::as_array) {
        Some(names) => {
            EventSet::of(&names.iter().filter_map(|n| n.as_str().and_then(HookEvent::parse)).collect::<Vec<_>>())
        }
        None => EventSet::default_events(),
    };
    Some((url, events))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_write_causes_the_event_of_entering_a_terminal_status_once() {
        let run = Some((Status::Running, None));
        assert_eq!(events_of_write(run, Status::Completed, None), EventSet::of(&[HookEvent::Completed]));
        assert_eq!(events_of_write(None, Status::Failed, None), EventSet::of(&[HookEvent::Failed]));
        assert_eq!(events_of_write(run, Status::Cancelled, None), EventSet::of(&[HookEvent::Cancelled]));
        assert!(events_of_write(run, Status::Running, None).is_empty());
        // Written again with If-Match while finished: no second event.
        assert!(events_of_write(Some((Status::Completed, None)), Status::Completed, None).is_empty());
        assert!(events_of_write(Some((Status::Failed, None)), Status::Completed, None).is_empty());
    }

    #[test]
    fn a_stage_event_is_a_change_of_stage() {
        let at = |s| Some((Status::Running, s));
        assert_eq!(events_of_write(at(Some("a")), Status::Running, Some("b")), EventSet::of(&[HookEvent::Stage]));
        assert_eq!(events_of_write(at(None), Status::Running, Some("a")), EventSet::of(&[HookEvent::Stage]));
        assert!(events_of_write(at(Some("a")), Status::Running, Some("a")).is_empty());
        assert!(events_of_write(at(Some("a")), Status::Running, None).is_empty());
        let both = events_of_write(at(Some("a")), Status::Completed, Some("done"));
        assert!(both.contains(HookEvent::Completed) && both.contains(HookEvent::Stage));
    }

    #[test]
    fn event_lists_are_read_and_unknown_names_refused() {
        let set = EventSet::parse_list("progress.completed, progress.stage").unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), [HookEvent::Completed, HookEvent::Stage]);
        assert!(EventSet::parse_list("").unwrap().is_empty());
        let e = EventSet::parse_list("progress.done").unwrap_err();
        assert!(e.contains("\"progress.done\"") && e.contains("progress.stalled"), "{e}");
        assert_eq!(EventSet::default_events().iter().count(), 4);
        assert!(!EventSet::default_events().contains(HookEvent::Stage));
    }

    #[test]
    fn webhook_values_are_checked_and_each_fault_named() {
        let ok = |v: Value| check_webhook(v.as_object().unwrap());
        assert_eq!(ok(json!({"url": "https://hooks.example.com/p?x=1"})), Ok(()));
        assert_eq!(ok(json!({"url": "http://10.0.0.7:8080/", "events": ["progress.failed"]})), Ok(()));
        assert_eq!(ok(json!({"events": ["progress.failed"], "url": null})), Ok(()), "a patch's part");
        assert_eq!(require_webhook_url(json!({"events": null}).as_object().unwrap()).unwrap_err().1, "is required");
        assert_eq!(
            require_webhook_url(json!({"url": "http://a.example/"}).as_object().unwrap()),
            Ok("http://a.example/")
        );
        let cases = [
            (json!({"url": 7}), "webhook.url", "must be a string, not a number"),
            (json!({"url": "ftp://x.example/"}), "webhook.url", "http or https"),
            (json!({"url": "/relative"}), "webhook.url", "absolute"),
            (json!({"url": "https://user:pw@x.example/"}), "webhook.url", "no user"),
            (json!({"url": "https://x.example/#frag"}), "webhook.url", "no user or fragment"),
            (json!({"url": "http://[::1]:9/"}), "webhook.url", "IPv4"),
            (json!({"url": "http://1.2.3.4.5/"}), "webhook.url", "host name"),
            (json!({"url": "http://x.example:70000/"}), "webhook.url", "port"),
            (json!({"url": "https://x.example/", "events": []}), "webhook.events", "at least one"),
            (json!({"url": "https://x.example/", "events": ["nope"]}), "webhook.events", "\"nope\" is not an event"),
            (json!({"url": "https://x.example/", "events": "progress.failed"}), "webhook.events", "array"),
            (json!({"url": "https://x.example/", "secret": "s"}), "webhook", "unknown key \"secret\""),
        ];
        for (value, path, words) in cases {
            let (p, message) = ok(value.clone()).unwrap_err();
            assert_eq!(p, path, "{value}");
            assert!(message.contains(words), "{value}: {message}");
        }
        let long = format!("https://x.example/{}", "a".repeat(MAX_WEBHOOK_URL));
        assert!(ok(json!({ "url": long })).unwrap_err().1.contains("at most"));
    }

    #[test]
    fn the_url_grammar_takes_what_users_write() {
        for ok in [
            "https://hooks.example.com/progress",
            "http://worker-1.internal:8080/hooks/progress?token=abc&x=1",
            "http://10.0.0.7/",
            "http://localhost:3000",
            "https://a.b-c.example/p/a%20b/~x?q=1/2?",
            "http://a\n",
        ] {
            assert!(parse_webhook_url(ok).is_ok(), "{ok:?}: {:?}", parse_webhook_url(ok));
        }
    }

    proptest::proptest! {
        /// Everything the documented pattern matches, the URL parser takes.
        #[test]
        fn every_url_the_pattern_matches_is_accepted(url in proptest::string::string_regex(
            &WEBHOOK_URL_PATTERN[1..WEBHOOK_URL_PATTERN.len() - 1]).unwrap()) {
            proptest::prop_assume!(url.len() <= MAX_WEBHOOK_URL);
            proptest::prop_assert!(parse_webhook_url(&url).is_ok(), "{:?}: {:?}", url, parse_webhook_url(&url));
        }
    }

    #[test]
    fn targets_and_hosts_are_read_as_the_allowed_list_names_them() {
        let map = json!({"url": "https://Hooks.Example.com:8443/x", "events": ["progress.stage"]});
        let (url, events) = webhook_target(map.as_object().unwrap()).unwrap();
        assert_eq!(events, EventSet::of(&[HookEvent::Stage]));
        assert_eq!(url_host(&parse_webhook_url(&url).unwrap()), "hooks.example.com");
        assert_eq!(url_host(&parse_webhook_url("http://127.0.0.1:9/").unwrap()), "127.0.0.1");
        let default = webhook_target(json!({"url": "https://a.example/"}).as_object().unwrap()).unwrap();
        assert_eq!(default.1, EventSet::default_events());
    }
}

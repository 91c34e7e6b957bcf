use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn defaults_and_platform_variables() {
    let s = Settings::from_env_without_file(env(&[("PORT", "9000"), ("PROGRESS_TTL_SECONDS", "60")])).unwrap();
    assert_eq!((s.port, s.ttl_seconds, s.max_body_bytes), (9000, 60, 65536));
    assert!(s.redis_url.is_none());
}

#[test]
fn a_bad_value_names_its_variable() {
    let e = Settings::from_env_without_file(env(&[("PROGRESS_TTL_SECONDS", "soon")])).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"invalid setting PROGRESS_TTL_SECONDS: expected a whole number of seconds, got "soon""#
    );
    let e = Settings::from_env_without_file(env(&[("PORT", "99999")])).unwrap_err();
    assert_eq!(e.variable, "PORT");
    let e = Settings::from_env_without_file(env(&[("PROGRESS_LOG_FORMAT", "xml")])).unwrap_err();
    assert_eq!(e.variable, "PROGRESS_LOG_FORMAT");
    let e = Settings::from_env_without_file(env(&[("REDIS_URL", "http://u:secret@h")])).unwrap_err();
    assert_eq!(e.variable, "REDIS_URL");
    assert!(!e.to_string().contains("secret"));
}

#[test]
fn the_file_sits_between_defaults_and_environment() {
    let dir = std::env::temp_dir().join(format!("progressd-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.toml");
    std::fs::write(&path, "ttl_seconds = 120\nheartbeat_seconds = 5\n").unwrap();
    let p = path.to_str().unwrap();
    let s = Settings::from_env(env(&[("PROGRESS_CONFIG", p), ("PROGRESS_HEARTBEAT_SECONDS", "7")])).unwrap();
    assert_eq!((s.ttl_seconds, s.heartbeat_seconds), (120, 7));
}

#[test]
fn cors_origins_are_origins() {
    let s = Settings::from_env_without_file(env(&[(
        "PROGRESS_CORS_ORIGINS",
        "https://a.example, http://localhost:3000,*",
    )]))
    .unwrap();
    assert_eq!(s.cors_origins, ["https://a.example", "http://localhost:3000", "*"]);
    for bad in ["a.example", "https://a.example/", "https://a.example/app", "https://"] {
        let e = Settings::from_env_without_file(env(&[("PROGRESS_CORS_ORIGINS", bad)])).unwrap_err();
        assert_eq!(e.variable, "PROGRESS_CORS_ORIGINS", "{bad}");
    }
}

#[test]
fn host_is_unset_by_default() {
    assert_eq!(Settings::default().host, None);
    let s = Settings::from_env_without_file(env(&[("PROGRESS_HOST", "::1")])).unwrap();
    assert_eq!(s.host, Some("::1".parse().unwrap()));
    let e = Settings::from_env_without_file(env(&[("PROGRESS_HOST", "localhost")])).unwrap_err();
    assert_eq!(e.variable, "PROGRESS_HOST");
}

#[test]
fn debug_hides_secrets() {
    let s = Settings::from_env_without_file(env(&[
        ("REDIS_URL", "redis://u:hunter2@h:1"),
        ("PROGRESS_WRITE_TOKENS", "w-secret-1,w-secret-2"),
        ("PROGRESS_READ_TOKENS", "r-secret"),
        ("PROGRESS_ADMIN_TOKEN", "a-secret"),
    ]))
    .unwrap();
    let debug = format!("{s:?}");
    assert!(!debug.contains("hunter2") && !debug.contains("-secret"), "{debug}");
    assert!(debug.contains("redis://u:****@h:1") && debug.contains("2 token(s)"), "{debug}");
    assert!(debug.contains("admin_token: Some(\"****\")") && debug.contains("ttl_seconds: 86400"), "{debug}");
}

#[test]
fn each_declaration_is_complete() {
    let mut variables = known_variables();
    let count = variables.len();
    variables.sort();
    variables.dedup();
    assert_eq!(variables.len(), count, "a variable is declared twice");
    assert_eq!(SETTINGS.len(), DECLARATIONS.len());
    for d in DECLARATIONS {
        assert!(d.default.is_some() != d.example.is_some(), "{}: a default or an example, not both", d.key);
        assert!(d.doc.ends_with('.') && !d.doc.contains("  "), "{}: {:?}", d.key, d.doc);
        assert_eq!(variable_name(d.key), d.variable);
        let platform = ["PORT", "REDIS_URL", "DATABASE_URL"].contains(&d.variable);
        assert!(platform || d.variable == format!("PROGRESS_{}", d.key.to_ascii_uppercase()), "{}", d.key);
    }
}

#[test]
fn signing_keys_are_kid_secret_pairs_and_stay_hidden() {
    let long = "s".repeat(32);
    let s = Settings::from_env_without_file(env(&[("PROGRESS_SIGNING_KEYS", &format!("new:{long}, old:{long}x"))]))
        .unwrap();
    assert_eq!(s.signing_keys.len(), 2);
    assert!(!format!("{s:?}").contains(&long), "{s:?}");
    assert_eq!((s.max_token_ttl_seconds, s.scoped_rate_per_second, s.scoped_rate_burst), (2_592_000, 10, 60));
    for bad in ["no-colon", "k:short", &format!("a:{long},a:{long}")] {
        let e = Settings::from_env_without_file(env(&[("PROGRESS_SIGNING_KEYS", bad)])).unwrap_err();
        assert_eq!(e.variable, "PROGRESS_SIGNING_KEYS", "{bad}");
        assert!(!e.to_string().contains("short") && !e.to_string().contains(&long), "{e}");
    }
}

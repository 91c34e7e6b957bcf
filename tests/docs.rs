//! The documents an operator reads list every setting the code knows, as
//! the `settings!` table in src/settings.rs declares it. When the table
//! changes, `UPDATE_EXPECT=1 cargo test --test docs` rewrites `.env.example`
//! and the rows of the README's settings table.

use progressd::settings::{SETTINGS, env_example, readme_rows, variable_name};

fn path(file: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + file
}

fn read(file: &str) -> String {
    std::fs::read_to_string(path(file)).unwrap()
}

fn update() -> bool {
    std::env::var_os("UPDATE_EXPECT").is_some()
}

/// The first line where `actual` and `expected` differ, both sides shown.
fn first_difference(actual: &str, expected: &str) -> String {
    let (mut a, mut e) = (actual.lines(), expected.lines());
    for line in 1.. {
        match (a.next(), e.next()) {
            (None, None) => break,
            (x, y) if x == y => continue,
            (x, y) => return format!("line {line}:\n  file:     {x:?}\n  rendered: {y:?}"),
        }
    }
    "only the line endings differ".into()
}

#[test]
fn every_setting_is_in_the_readme_and_env_example() {
    let readme = read("README.md");
    let example = read(".env.example");
    for (key, _, _) in SETTINGS {
        let var = variable_name(key);
        assert!(readme.contains(&format!("`{var}`")), "README lacks {var}");
        assert!(example.contains(&format!("{var}=")), ".env.example lacks {var}");
    }
}

#[test]
fn env_example_defaults_match_the_code() {
    let example = read(".env.example");
    for (key, default, _) in SETTINGS {
        if let Some(default) = default {
            let line = format!("{}={default}", variable_name(key));
            assert!(example.lines().any(|l| l == line), ".env.example should say {line}");
        }
    }
}

#[test]
fn env_example_is_what_the_settings_table_renders() {
    let file = read(".env.example");
    let rendered = env_example();
    if file != rendered && update() {
        std::fs::write(path(".env.example"), &rendered).unwrap();
        return;
    }
    assert!(
        file == rendered,
        ".env.example differs from the settings table in src/settings.rs; first at {}\n\
         (change the table, then `UPDATE_EXPECT=1 cargo test --test docs`)",
        first_difference(&file, &rendered)
    );
}

/// The byte range of the rows of the README's settings table: the lines
/// after the `| variable | default | meaning |` header and its rule.
fn settings_rows(readme: &str) -> std::ops::Range<usize> {
    let header = readme.find("\n| variable | default | meaning |\n").expect("README has the settings table") + 1;
    let rule = header + readme[header..].find('\n').unwrap() + 1;
    let start = rule + readme[rule..].find('\n').unwrap() + 1;
    let mut end = start;
    for line in readme[start..].split_inclusive('\n') {
        if !line.starts_with("| `") {
            break;
        }
        end += line.len();
    }
    start..end
}

#[test]
fn the_readme_settings_table_is_what_the_settings_table_renders() {
    let readme = read("README.md");
    let rows = settings_rows(&readme);
    let rendered = readme_rows();
    if readme[rows.clone()] != rendered && update() {
        std::fs::write(path("README.md"), format!("{}{rendered}{}", &readme[..rows.start], &readme[rows.end..]))
            .unwrap();
        return;
    }
    assert!(
        readme[rows.clone()] == rendered,
        "the README's settings table differs from the one in src/settings.rs; first at {} of its rows\n\
         (change the table, then `UPDATE_EXPECT=1 cargo test --test docs`)",
        first_difference(&readme[rows], &rendered)
    );
}

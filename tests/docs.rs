//! The documents an operator reads list every setting the code knows.

use progressd::settings::{SETTINGS, variable_name};

fn read(path: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + path).unwrap()
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

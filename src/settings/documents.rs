//! The documents an operator reads, written from the `settings!` table:
//! `.env.example` and the rows of the README's settings table.
//! `tests/docs.rs` fails when either file differs from what is rendered here.

use super::{DECLARATIONS, LOADING_VARIABLES, VariableGroup};

/// The top of `.env.example`, above the rendered settings.
const ENV_EXAMPLE_HEADER: &str = "\
# Every setting of progressd with its default. Platform variables (PORT,
# REDIS_URL, DATABASE_URL, and the REDIS_* and PG* groups below) are read as
# the host sets them; everything else is PROGRESS_*.
# Values can also come from progressd.toml (or the file named by PROGRESS_CONFIG),
# with the keys in lower case without the PROGRESS_ prefix (ttl_seconds = 60).
# Written from the table in src/settings.rs: change it there, then run
# UPDATE_EXPECT=1 cargo test --test docs

";

/// Width of a comment line in `.env.example`.
const COMMENT_WIDTH: usize = 78;

/// `.env.example`: every variable with its doc, and its default (or, commented
/// out, an example where it has none).
pub fn env_example() -> String {
    let mut out = String::from(ENV_EXAMPLE_HEADER);
    for d in DECLARATIONS {
        comment(&mut out, d.doc);
        match (d.default, d.example) {
            (Some(default), _) => out.push_str(&format!("{}={default}\n", d.variable)),
            (None, example) => out.push_str(&format!("# {}={}\n", d.variable, example.unwrap_or_default())),
        }
        if let Some(group) = d.group {
            group_lines(&mut out, group);
        }
    }
    for group in LOADING_VARIABLES {
        group_lines(&mut out, group);
    }
    out
}

fn group_lines(out: &mut String, group: &VariableGroup) {
    comment(out, group.doc);
    for (variable, example) in group.variables {
        out.push_str(&format!("# {variable}={example}\n"));
    }
}

/// `text` without its Markdown backticks, as `#` lines of at most
/// [`COMMENT_WIDTH`] columns (a longer word gets a line of its own).
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace().map(|w| w.replace('`', "")) {
        if line.len() > 1 && line.chars().count() + 1 + word.chars().count() > COMMENT_WIDTH {
            out.push_str(&line);
            out.push('\n');
            line.truncate(1);
        }
        line.push(' ');
        line.push_str(&word);
    }
    out.push_str(&line);
    out.push('\n');
}

/// The rows of the README's settings table (`| variable | default | meaning |`),
/// one per line: every setting, then the variables about loading.
pub fn readme_rows() -> String {
    let row = |variable: &str, default: Option<&str>, doc: &str| {
        let default = match default {
            None => "unset".to_owned(),
            Some("") => "empty".to_owned(),
            Some(value) => format!("`{value}`"),
        };
        format!("| `{variable}` | {default} | {doc} |\n")
    };
    let settings = DECLARATIONS.iter().map(|d| row(d.variable, d.default, d.doc));
    let loading = LOADING_VARIABLES.iter().flat_map(|g| g.variables.iter().map(|(v, _)| row(v, None, g.doc)));
    settings.chain(loading).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::known_variables;

    #[test]
    fn documents_render_every_variable() {
        let example = env_example();
        let rows = readme_rows();
        for variable in known_variables() {
            assert!(example.contains(&format!("{variable}=")), ".env.example lacks {variable}");
        }
        assert!(example.contains("\nPORT=8080\n# Redis URL") && example.contains("\n# PROGRESS_HOST=::\n"));
        assert!(rows.contains("| `PORT` | `8080` | Port to listen on. |\n"));
        assert!(rows.contains("| `PROGRESS_KEY_PREFIX` | empty | ") && rows.contains("| `PROGRESS_CONFIG` | unset | "));
        assert_eq!(rows.lines().count(), DECLARATIONS.len() + LOADING_VARIABLES.len());
    }
}

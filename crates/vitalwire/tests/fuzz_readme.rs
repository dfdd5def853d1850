//! fuzz/README.md and README.md describe the fuzzing set-up; what they name must exist: "ten
//! cargo-fuzz targets, one per input path", each "a few lines over an entry point in
//! `crates/vitalwire/src/fuzzing.rs`", each with seed corpora `fuzz/corpus/<target>/seed-*`, and
//! the finding's crashing input and regression test kept.

use std::collections::BTreeSet;
use std::path::Path;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn names_in(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(Path::new(ROOT).join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn the_fuzz_targets_the_readmes_describe_are_the_ones_that_exist() {
    let sources: BTreeSet<String> = names_in("fuzz/fuzz_targets")
        .into_iter()
        .filter_map(|n| n.strip_suffix(".rs").map(String::from))
        .collect();
    let cargo = read("fuzz/Cargo.toml");
    let bins: BTreeSet<String> = cargo
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "vitalwire-fuzz")
        .map(String::from)
        .collect();
    assert_eq!(bins, sources, "fuzz/Cargo.toml [[bin]]s and fuzz/fuzz_targets/ differ");

    // README.md: "ten cargo-fuzz targets"; fuzz/README.md: one table row per target.
    let readme = read("README.md").split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(readme.contains("ten cargo-fuzz targets, one per input path"));
    assert_eq!(sources.len(), 10, "{sources:?}");
    let fuzz_readme = read("fuzz/README.md");
    let table_rows = |heading: &str| -> BTreeSet<String> {
        let start = fuzz_readme.find(heading).unwrap_or_else(|| panic!("no {heading:?} table"));
        fuzz_readme[start..]
            .lines()
            .skip_while(|l| !l.starts_with("| `"))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.strip_prefix("| `").and_then(|l| l.split('`').next()).map(String::from))
            .collect()
    };
    assert_eq!(table_rows("| target | input path |"), sources, "fuzz/README.md's target table");
    let campaign: BTreeSet<String> = fuzz_readme[fuzz_readme.find("## Campaign").unwrap()..]
        .lines()
        .filter_map(|l| l.strip_prefix("| ").and_then(|l| l.split(' ').next()))
        .filter(|n| sources.contains(*n))
        .map(String::from)
        .collect();
    assert_eq!(campaign, sources, "the campaign table reports every target");

    for target in &sources {
        // A few lines over its entry point.
        let source = read(&format!("fuzz/fuzz_targets/{target}.rs"));
        assert!(source.contains(&format!("vitalwire::fuzzing::{target}(")), "{target}");
        assert!(source.lines().count() <= 12, "{target}: more than a few lines");
        // Seeds.
        let seeds = names_in(&format!("fuzz/corpus/{target}"));
        assert!(seeds.iter().any(|s| s.starts_with("seed-")), "{target}: no fuzz/corpus/{target}/seed-*");
    }
    let fuzzing = read("crates/vitalwire/src/fuzzing.rs");
    for target in &sources {
        assert!(fuzzing.contains(&format!("pub fn {target}(")), "fuzzing.rs has no entry point {target}");
    }
}

/// The findings table: the crashing input is kept (and replayed by `tests/fuzz_regressions.rs`,
/// which refuses a folder that is not a target) and the named regression test exists.
#[test]
fn the_fuzz_findings_the_readme_lists_are_kept_as_regressions() {
    let fuzz_readme = read("fuzz/README.md");
    let findings = &fuzz_readme[fuzz_readme.find("| target | finding |").expect("a findings table")..];
    let rows: Vec<&str> = findings.lines().skip(2).take_while(|l| l.starts_with('|')).collect();
    assert!(!rows.is_empty());
    for row in rows {
        let target = row.trim_start_matches("| ").split(' ').next().unwrap();
        let crash = row.split("crash-").nth(1).and_then(|r| r.split('…').next()).expect("a crash file");
        let kept = names_in(&format!("crates/vitalwire/tests/data/fuzz-regressions/{target}"));
        assert!(
            kept.iter().any(|f| f.starts_with(&format!("crash-{crash}"))),
            "{target}: crash-{crash}… not kept"
        );
        let test =
            row.split("`keyfile::tests::").nth(1).and_then(|r| r.split('`').next()).expect("a unit test");
        assert!(read("crates/vitalwire/src/keyfile.rs").contains(&format!("fn {test}()")), "{test} missing");
    }
}

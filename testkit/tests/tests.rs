//! Integration tests of puzzle-testkit, one binary.

mod bad;
mod compare;
mod reference;
mod tar_format;
mod umoci;
mod writers;

/// Whether tests needing the external `name` can run. A missing tool skips
/// the test with a note, unless `PUZZLE_REQUIRE_TOOLS` is set.
pub fn have_tool(name: &str) -> bool {
    if puzzle_testkit::tool_available(name) {
        return true;
    }
    if std::env::var_os("PUZZLE_REQUIRE_TOOLS").is_some() {
        panic!("{name} not found on PATH and PUZZLE_REQUIRE_TOOLS is set");
    }
    eprintln!("skipping: {name} not found on PATH");
    false
}

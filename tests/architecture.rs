//! The module graph of `src/` has no cycle: every module only uses modules below it, so the
//! request path reads from `lib.rs` down. `.ci/modgraph.py --dot` draws the graph.

use std::path::Path;
use std::process::Command;

#[test]
fn no_module_uses_a_module_that_uses_it() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/modgraph.py");
    let out = Command::new("python3")
        .arg(&script)
        .output()
        .expect("python3 runs the module graph check");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains(" 0 cycles"), "{report}");
}

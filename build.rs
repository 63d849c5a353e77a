//! Builds the commit the binary comes from into it, for `/system/info`: faas-cli and the
//! OpenFaaS certifier show the gateway's `sha`, and an empty one reads as a broken gateway.
//!
//! `DEFROST_GIT_SHA` wins when set (a build from a source archive has no git); otherwise git is
//! asked; without either the sha is `unknown`, never empty.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DEFROST_GIT_SHA");
    let sha = std::env::var("DEFROST_GIT_SHA")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(git_sha)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=DEFROST_GIT_SHA={sha}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The short commit of HEAD, watching the files that change with it so that a new commit
/// rebuilds with its own sha (only files that exist: a missing one would rerun this always).
fn git_sha() -> Option<String> {
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in &watched {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}

//! An embedder outside this repository's workspace depends on defrost by path, as its README
//! tells them to, builds, and serves a function through a gateway with a provider of its own.

use std::path::Path;
use std::process::Command;

#[test]
fn a_crate_outside_the_workspace_builds_against_defrost_and_serves_through_it() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let template = repo.join("tests/outside-crate");
    let dir = std::env::temp_dir().join(format!("defrost-outside-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let manifest = std::fs::read_to_string(template.join("Cargo.toml.in"))
        .unwrap()
        .replace("DEFROST_PATH", &repo.display().to_string());
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::copy(template.join("src/main.rs"), dir.join("src/main.rs")).unwrap();
    // The versions defrost is tested with, and nothing to fetch: what the workspace build has
    // already downloaded is all the outside crate may use.
    std::fs::copy(repo.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let target = repo.join("target/outside-crate");
    let built = Command::new(cargo)
        .args(["build", "--offline", "--quiet"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo runs");
    assert!(
        built.status.success(),
        "the outside crate does not build:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(target.join("debug/outside-embedder"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("the outside crate's binary runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(stdout.contains("started a replica"), "{stdout}");
    assert!(
        stdout.contains("answered: HTTP/1.1 200 OK / hello from outside"),
        "{stdout}"
    );
}

mod dropped {
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use defrost::{
        FunctionRef, FunctionStatus, FunctionSummary, Gateway, Provider, ProviderError, Settings,
    };

    /// Knows no function; remembers whether it was shut down.
    #[derive(Default)]
    struct Empty {
        shut_down: AtomicBool,
    }

    impl Provider for Empty {
        fn status(&self, _: &FunctionRef) -> Result<FunctionStatus, ProviderError> {
            Err(ProviderError::NotFound)
        }
        fn set_replicas(&self, _: &FunctionRef, _: u64) -> Result<(), ProviderError> {
            Err(ProviderError::NotFound)
        }
        fn list(&self, _: &str) -> Result<Vec<FunctionSummary>, ProviderError> {
            Ok(Vec::new())
        }
        fn namespaces(&self) -> Result<Vec<String>, ProviderError> {
            Ok(Vec::new())
        }
        fn shutdown(&self) {
            self.shut_down.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_gateway_dropped_without_shutdown_stops_serving_and_stops_its_provider() {
        let provider = Arc::new(Empty::default());
        let settings = Settings {
            listen: ([127, 0, 0, 1], 0).into(),
            shutdown_grace: Duration::from_secs(5),
            ..Settings::default()
        };
        let gateway = Gateway::start(settings, provider.clone()).unwrap();
        let addr = gateway.local_addr();
        assert!(TcpStream::connect(addr).is_ok(), "not serving");
        drop(gateway);
        assert!(
            provider.shut_down.load(Ordering::SeqCst),
            "provider not shut down"
        );
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
            "still accepting connections after the drop"
        );
    }
}

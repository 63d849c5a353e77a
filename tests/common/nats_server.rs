//! A real `nats-server` with JetStream, on a free loopback port, storing in a temp folder.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, unsafe_kill, wait_exit, TempDir};

/// A running server; killed on drop.
pub struct NatsServer {
    pub child: Child,
    pub port: u16,
    /// The JetStream store and the server's log.
    pub dir: PathBuf,
    extra: Vec<String>,
}

/// The server binary: `$NATS_SERVER`, else `nats-server` on PATH or where Debian puts it.
/// Missing, the calling test fails: CI installs it (`.ci/run`).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return path.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .expect("nats-server is not installed (apt-get install nats-server), or set NATS_SERVER")
}

impl NatsServer {
    /// Starts a server with JetStream storing in `store`.
    pub fn start(store: &TempDir) -> NatsServer {
        NatsServer::start_with(store, &[])
    }

    /// Starts a server with more command-line arguments (`--user`, `--pass`...).
    pub fn start_with(store: &TempDir, extra: &[&str]) -> NatsServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        NatsServer::launch(store.path(), port, extra)
    }

    /// Starts a server on `port` with the store of one that was stopped (or killed).
    pub fn start_on(store: &TempDir, port: u16) -> NatsServer {
        NatsServer::launch(store.path(), port, Vec::new())
    }

    fn launch(dir: &Path, port: u16, extra: Vec<String>) -> NatsServer {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("nats-server.log"))
            .unwrap();
        let child = Command::new(binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("jetstream"))
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start nats-server");
        let mut server = NatsServer {
            child,
            port,
            dir: dir.to_path_buf(),
            extra,
        };
        let up = eventually(Duration::from_secs(15), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up || server.child.try_wait().unwrap().is_some() {
            panic!("nats-server did not start:\n{}", server.log());
        }
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats-server.log")).unwrap_or_default()
    }

    /// Stops it the way an operator would (SIGTERM, its stores flushed), then starts it again
    /// on the same port and store.
    pub fn restart(mut self) -> NatsServer {
        unsafe_kill(self.child.id(), "TERM");
        assert!(wait_exit(&mut self.child, Duration::from_secs(15)).is_some());
        let (dir, port, extra) = (self.dir.clone(), self.port, std::mem::take(&mut self.extra));
        drop(self);
        NatsServer::launch(&dir, port, extra)
    }

    /// SIGKILL: gone at once, connections reset.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // A test may have stopped it (SIGSTOP); SIGKILL ends it either way.
        self.kill();
    }
}

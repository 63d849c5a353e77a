//! Embedding defrost with a provider of your own.
//!
//! Here a "replica" is a thread serving HTTP inside the same process: handy where spawning
//! processes is not an option. The gateway scales it from zero on the first call, exactly as it
//! would a child process or a Kubernetes deployment.
//!
//!     cargo run --example embed
//!     curl http://127.0.0.1:8090/function/clock

use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

use defrost::{
    Endpoint, FunctionRef, FunctionStatus, FunctionSummary, Gateway, Provider, ProviderError,
    Settings,
};

/// One function, `clock`, whose replica is an in-process tiny_http server.
#[derive(Default)]
struct ThreadProvider {
    replica: Mutex<Option<Arc<Endpoint>>>,
    ready: Condvar,
}

impl ThreadProvider {
    fn check(function: &FunctionRef) -> Result<(), ProviderError> {
        match (function.name(), function.namespace()) {
            ("clock", "default") => Ok(()),
            _ => Err(ProviderError::NotFound),
        }
    }

    fn start_replica(&self) -> Result<Arc<Endpoint>, ProviderError> {
        let server = defrost_http::Server::http("127.0.0.1:0")
            .map_err(|e| ProviderError::Failed(format!("cannot listen: {e}")))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or(ProviderError::Failed("no address".into()))?;
        thread::spawn(move || {
            for request in server.incoming_requests() {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let _ = request.respond(defrost_http::Response::from_string(format!(
                    "unix time {now}\n"
                )));
            }
        });
        Ok(Arc::new(Endpoint::new(format!("http://{addr}"))))
    }
}

impl Provider for ThreadProvider {
    fn status(&self, function: &FunctionRef) -> Result<FunctionStatus, ProviderError> {
        Self::check(function)?;
        let replica = self.replica.lock().clone();
        let n = u64::from(replica.is_some());
        Ok(FunctionStatus {
            replicas: n,
            available_replicas: n,
            min_replicas: 1,
            max_replicas: 1,
            endpoints: replica.into_iter().collect(),
            ..Default::default()
        })
    }

    fn set_replicas(&self, function: &FunctionRef, replicas: u64) -> Result<(), ProviderError> {
        Self::check(function)?;
        let mut replica = self.replica.lock();
        if replicas > 0 && replica.is_none() {
            *replica = Some(self.start_replica()?);
            println!("started a replica of {function}");
            self.ready.notify_all();
        }
        Ok(())
    }

    fn wait_for_change(&self, _: &FunctionRef, _since: u64, timeout: Duration) {
        let mut replica = self.replica.lock();
        if replica.is_none() {
            self.ready.wait_for(&mut replica, timeout);
        }
    }

    fn list(&self, _: &str) -> Result<Vec<FunctionSummary>, ProviderError> {
        Ok(Vec::new())
    }

    fn namespaces(&self) -> Result<Vec<String>, ProviderError> {
        Ok(vec!["default".into()])
    }
}

fn main() -> std::io::Result<()> {
    let settings = Settings {
        listen: ([127, 0, 0, 1], 8090).into(),
        ..Settings::default()
    };
    let gateway = Gateway::start(settings, Arc::new(ThreadProvider::default()))?;
    println!("try: curl http://{}/function/clock", gateway.local_addr());
    // A real program would wait for a signal; this example serves for a minute.
    thread::sleep(Duration::from_secs(60));
    gateway.shutdown();
    Ok(())
}

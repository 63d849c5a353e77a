//! Embeds defrost with a provider of its own, from outside defrost's workspace: starts a
//! gateway, calls a function through it (a cold start), prints the answer, shuts down.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use defrost::{
    Endpoint, FunctionRef, FunctionStatus, FunctionSummary, Gateway, Provider, ProviderError,
    Settings,
};

/// One function, `hello`, whose replica is a thread answering HTTP.
#[derive(Default)]
struct ThreadProvider {
    replica: Mutex<Option<Arc<Endpoint>>>,
}

impl Provider for ThreadProvider {
    fn status(&self, function: &FunctionRef) -> Result<FunctionStatus, ProviderError> {
        if function.name() != "hello" {
            return Err(ProviderError::NotFound);
        }
        let replica = self
            .replica
            .lock()
            .map_err(|_| ProviderError::Failed("poisoned".into()))?;
        let n = u64::from(replica.is_some());
        Ok(FunctionStatus {
            replicas: n,
            available_replicas: n,
            min_replicas: 1,
            max_replicas: 1,
            endpoints: replica.iter().cloned().collect(),
            ..Default::default()
        })
    }

    fn set_replicas(&self, _: &FunctionRef, replicas: u64) -> Result<(), ProviderError> {
        let mut replica = self
            .replica
            .lock()
            .map_err(|_| ProviderError::Failed("poisoned".into()))?;
        if replicas > 0 && replica.is_none() {
            let listener = TcpListener::bind("127.0.0.1:0")
                .map_err(|e| ProviderError::Failed(e.to_string()))?;
            let addr = listener
                .local_addr()
                .map_err(|e| ProviderError::Failed(e.to_string()))?;
            thread::spawn(move || serve(listener));
            *replica = Some(Arc::new(Endpoint::new(format!("http://{addr}"))));
            println!("started a replica");
        }
        Ok(())
    }

    fn list(&self, _: &str) -> Result<Vec<FunctionSummary>, ProviderError> {
        Ok(Vec::new())
    }

    fn namespaces(&self) -> Result<Vec<String>, ProviderError> {
        Ok(vec!["default".into()])
    }
}

/// Answers every request with `hello from outside`, one connection at a time.
fn serve(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let mut writer = &stream;
        let _ = writer.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 18\r\nConnection: close\r\n\r\nhello from outside",
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings {
        listen: ([127, 0, 0, 1], 0).into(),
        ..Settings::default()
    };
    let gateway = Gateway::start(settings, Arc::new(ThreadProvider::default()))?;
    let mut client = TcpStream::connect(gateway.local_addr())?;
    client.set_read_timeout(Some(Duration::from_secs(20)))?;
    client.write_all(b"GET /function/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    client.read_to_string(&mut answer)?;
    let status = answer.lines().next().unwrap_or("");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    println!("answered: {status} / {body}");
    gateway.shutdown();
    Ok(())
}

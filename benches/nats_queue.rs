//! What a durable queue on NATS JetStream costs per message, through defrost's own client.
//!
//!     cargo bench --bench nats_queue
//!
//! Starts `nats-server -js` (`$NATS_SERVER`, else from PATH or /usr/sbin) on loopback with a
//! file store in a temp folder, then times, on one connection:
//! 1. publishing with an ack (the stream stored it), one after the other, with a message id;
//! 2. the same from 4 threads sharing the connection;
//! 3. pulling in batches of 100 and acking each message, waiting for each ack's confirmation.
//!
//! Messages are 512 bytes, about an OpenFaaS queued invocation with a small body.

use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use defrost::internals::nats::{Ack, Connection, ConsumerConfig, JetStream, Options, StreamConfig};

const MESSAGES: usize = 20_000;
const THREADS: usize = 4;

fn main() {
    let binary = std::env::var_os("NATS_SERVER")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain(["/usr/sbin".into()])
                .map(|d| d.join("nats-server"))
                .find(|p| p.is_file())
        })
        .expect("nats-server is not installed (apt-get install nats-server)");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = std::env::temp_dir().join(format!("defrost-bench-nats-{}", std::process::id()));
    let mut server = Command::new(binary)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start nats-server");
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }

    let url = format!("nats://127.0.0.1:{port}");
    let js = Arc::new(JetStream::new(
        Connection::connect(&url, &Options::default()).unwrap(),
        Duration::from_secs(10),
    ));
    js.ensure_stream(&StreamConfig::work_queue("bench", &["bench"]))
        .unwrap();
    js.ensure_consumer(
        "bench",
        &ConsumerConfig::durable("workers", Duration::from_secs(60)),
    )
    .unwrap();
    let body = vec![b'x'; 512];

    let start = Instant::now();
    for i in 0..MESSAGES {
        js.publish("bench", Some(&format!("one-{i}")), &body)
            .unwrap();
    }
    report("publish with ack, 1 thread", start.elapsed());

    let start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (js, body) = (Arc::clone(&js), body.clone());
            std::thread::spawn(move || {
                for i in 0..MESSAGES / THREADS {
                    js.publish("bench", Some(&format!("many-{t}-{i}")), &body)
                        .unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    report(
        &format!("publish with ack, {THREADS} threads"),
        start.elapsed(),
    );

    let start = Instant::now();
    let mut settled = 0;
    while settled < 2 * MESSAGES {
        for message in js
            .fetch("bench", "workers", 100, Duration::from_secs(1))
            .unwrap()
        {
            js.ack(&message, Ack::Ack).unwrap();
            settled += 1;
        }
    }
    report(
        "fetch (batches of 100) and confirmed ack",
        start.elapsed() / 2,
    );
    assert_eq!(js.stream_info("bench").unwrap().state.messages, 0);

    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&store);
}

fn report(what: &str, took: Duration) {
    let per = took / MESSAGES as u32;
    let rate = MESSAGES as f64 / took.as_secs_f64();
    println!("{what:<45} {per:>10.1?}/message  {rate:>8.0} messages/s");
}

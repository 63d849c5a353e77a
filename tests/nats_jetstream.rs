//! The NATS JetStream client against a real `nats-server`: a durable work queue that delivers
//! in order, redelivers what was nak'ed, drops what was terminated, keeps what was not acked
//! across a restart, and fails (never hangs) when the server dies.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::nats_server::NatsServer;
use common::{unsafe_kill, TempDir};
use defrost::internals::nats::{
    Ack, Connection, ConsumerConfig, Error, JetStream, JsMessage, Options, StreamConfig,
};

const TIMEOUT: Duration = Duration::from_secs(10);

fn jetstream(server: &NatsServer) -> JetStream {
    let connection = Connection::connect(&server.url(), &Options::default()).unwrap();
    JetStream::new(connection, TIMEOUT)
}

/// A work-queue stream `jobs` capturing `jobs`, and its durable consumer `workers`.
fn jobs_queue(js: &JetStream, ack_wait: Duration) {
    let mut stream = StreamConfig::work_queue("jobs", &["jobs"]);
    stream.max_msgs = 10_000;
    stream.max_bytes = 10 * 1024 * 1024;
    js.ensure_stream(&stream).unwrap();
    let mut consumer = ConsumerConfig::durable("workers", ack_wait);
    consumer.filter_subject = Some("jobs".into());
    consumer.max_deliver = 5;
    js.ensure_consumer("jobs", &consumer).unwrap();
}

/// Fetches until `count` messages came, in at most 20 pulls.
fn fetch_all(js: &JetStream, count: usize, expires: Duration) -> Vec<JsMessage> {
    let mut got = Vec::new();
    for _ in 0..20 {
        if got.len() >= count {
            break;
        }
        got.extend(
            js.fetch("jobs", "workers", count - got.len(), expires)
                .unwrap(),
        );
    }
    assert_eq!(got.len(), count, "{:?}", payloads(&got));
    got
}

fn payloads(messages: &[JsMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

#[test]
fn a_work_queue_delivers_in_order_redelivers_a_nak_and_drops_a_term() {
    let dir = TempDir::new("nats-queue");
    let server = NatsServer::start(&dir);
    let js = jetstream(&server);
    jobs_queue(&js, Duration::from_secs(30));
    // Ensuring again changes nothing: the stream and consumer are updated in place.
    jobs_queue(&js, Duration::from_secs(30));
    assert_eq!(js.stream_info("jobs").unwrap().state.consumer_count, 1);

    for i in 0..100u64 {
        let ack = js
            .publish("jobs", Some(&format!("job-{i}")), format!("{i}").as_bytes())
            .unwrap();
        assert_eq!(
            (ack.stream.as_str(), ack.seq, ack.duplicate),
            ("jobs", i + 1, false)
        );
    }
    // The same id again is stored once.
    let again = js.publish("jobs", Some("job-0"), b"0").unwrap();
    assert_eq!((again.seq, again.duplicate), (1, true));
    assert_eq!(js.stream_info("jobs").unwrap().state.messages, 100);

    let mut batches = 0;
    let mut delivered = Vec::new();
    while delivered.len() < 100 && batches < 20 {
        delivered.extend(js.fetch("jobs", "workers", 30, TIMEOUT).unwrap());
        batches += 1;
    }
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(payloads(&delivered), expected);
    for (i, m) in delivered.iter().enumerate() {
        assert_eq!((m.delivered, m.stream_seq), (1, i as u64 + 1));
        assert_eq!(
            (m.stream.as_str(), m.consumer.as_str()),
            ("jobs", "workers")
        );
        assert_eq!(
            m.headers.get("Nats-Msg-Id"),
            Some(format!("job-{i}").as_str())
        );
    }

    for m in &delivered {
        let how = match m.stream_seq {
            6 => Ack::Nak(Some(Duration::from_millis(200))),
            8 => Ack::Term,
            _ => Ack::Ack,
        };
        js.ack(m, how).unwrap();
    }
    let again = fetch_all(&js, 1, TIMEOUT);
    assert_eq!(payloads(&again), ["5"]);
    assert_eq!((again[0].delivered, again[0].stream_seq), (2, 6));
    js.ack(&again[0], Ack::InProgress).unwrap();
    js.ack(&again[0], Ack::Ack).unwrap();

    // Nothing left: the terminated one is not delivered again, and the queue is empty.
    assert!(js
        .fetch("jobs", "workers", 10, Duration::ZERO)
        .unwrap()
        .is_empty());
    let consumer = js.consumer_info("jobs", "workers").unwrap();
    assert_eq!((consumer.num_pending, consumer.num_ack_pending), (0, 0));
    assert_eq!(js.stream_info("jobs").unwrap().state.messages, 0);
}

#[test]
fn unacked_messages_survive_a_server_restart() {
    let dir = TempDir::new("nats-restart");
    let server = NatsServer::start(&dir);
    let js = jetstream(&server);
    jobs_queue(&js, Duration::from_secs(1));
    for i in 0..10 {
        js.publish("jobs", Some(&format!("r-{i}")), format!("{i}").as_bytes())
            .unwrap();
    }
    // Four done, two taken and never settled, four never taken.
    let taken = fetch_all(&js, 6, TIMEOUT);
    for m in &taken[..4] {
        js.ack(m, Ack::Ack).unwrap();
    }
    drop(js);
    let server = server.restart();

    let js = jetstream(&server);
    assert_eq!(js.stream_info("jobs").unwrap().state.messages, 6);
    let mut left = fetch_all(&js, 6, Duration::from_secs(5));
    left.sort_by_key(|m| m.stream_seq);
    assert_eq!(payloads(&left), ["4", "5", "6", "7", "8", "9"]);
    // The server writes a consumer's delivery counts lazily: across a restart the two taken
    // come back as redeliveries, or as first deliveries when it had not written them yet.
    // Never acked, never lost, either way.
    assert!(left[2..].iter().all(|m| m.delivered == 1), "{left:?}");
    for m in &left {
        js.ack(m, Ack::Ack).unwrap();
    }
    assert_eq!(js.stream_info("jobs").unwrap().state.messages, 0);
}

#[test]
fn a_server_killed_mid_fetch_is_an_error_not_a_hang() {
    let dir = TempDir::new("nats-kill");
    let mut server = NatsServer::start(&dir);
    let js = std::sync::Arc::new(jetstream(&server));
    jobs_queue(&js, Duration::from_secs(30));
    let (tx, rx) = crossbeam::channel::bounded(1);
    let fetching = std::sync::Arc::clone(&js);
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(fetching.fetch("jobs", "workers", 5, Duration::from_secs(60)));
    });
    // Wait until the pull is open on the server, then kill it.
    assert!(common::eventually(TIMEOUT, || {
        js.consumer_info("jobs", "workers").unwrap().num_waiting == 1
    }));
    server.kill();
    let result = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("fetch hung");
    waiter.join().unwrap();
    let err = result.unwrap_err();
    assert!(err.is_connection_lost(), "{err}");
    assert!(js.connection().is_closed());
    let later = js.publish("jobs", None, b"x").unwrap_err();
    assert!(matches!(later, Error::Closed(_)), "{later}");
}

#[test]
fn a_frozen_server_is_noticed_by_pings() {
    let dir = TempDir::new("nats-frozen");
    let server = NatsServer::start(&dir);
    let options = Options {
        ping_interval: Duration::from_millis(200),
        ..Options::default()
    };
    let js = JetStream::new(
        Connection::connect(&server.url(), &options).unwrap(),
        TIMEOUT,
    );
    jobs_queue(&js, Duration::from_secs(30));
    unsafe_kill(server.child.id(), "STOP");
    // A pull that would wait a minute ends once two pings go unanswered.
    let err = js
        .fetch("jobs", "workers", 1, Duration::from_secs(60))
        .unwrap_err();
    unsafe_kill(server.child.id(), "CONT");
    assert!(
        matches!(err, Error::Closed(ref why) if why.contains("PING")),
        "{err}"
    );
}

#[test]
fn refusals_say_what_was_refused() {
    let dir = TempDir::new("nats-refusals");
    let server = NatsServer::start_with(&dir, &["--user", "queue", "--pass", "s3cret"]);
    let err = Connection::connect(&server.url(), &Options::default())
        .err()
        .expect("connected without credentials");
    assert!(
        matches!(err, Error::Server(ref why) if why.contains("Authorization")),
        "{err}"
    );
    let url = format!("nats://queue:s3cret@127.0.0.1:{}", server.port);
    // Short: one call below waits this long for an answer that never comes.
    let js = JetStream::new(
        Connection::connect(&url, &Options::default()).unwrap(),
        Duration::from_secs(2),
    );

    let err = js.publish("nowhere", None, b"x").unwrap_err();
    assert!(matches!(err, Error::NoResponders(_)), "{err}");
    let err = js.stream_info("missing").unwrap_err();
    assert!(matches!(err, Error::Api { code: 404, .. }), "{err}");
    assert!(err.to_string().contains("STREAM.INFO.missing"), "{err}");

    // A full queue refuses more rather than dropping what it holds.
    let mut small = StreamConfig::work_queue("small", &["small"]);
    small.max_msgs = 2;
    js.ensure_stream(&small).unwrap();
    js.publish("small", None, b"1").unwrap();
    js.publish("small", None, b"2").unwrap();
    let err = js.publish("small", None, b"3").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Api {
                code: 503,
                err_code: 10077,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(js.stream_info("small").unwrap().state.messages, 2);
    // What the server cannot change is refused, not ignored.
    small.retention = defrost::internals::nats::Retention::Limits;
    let err = js.ensure_stream(&small).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Api {
                err_code: 10052,
                ..
            }
        ),
        "{err}"
    );
    // A pull from a consumer that does not exist.
    let err = js
        .fetch("small", "nobody", 1, Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(err, Error::Api { code: 404, .. }), "{err}");
    // Bigger than the server takes: refused before sending.
    let err = js.publish("small", None, &vec![0; 2 << 20]).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    let err = js.publish("two words", None, b"").unwrap_err();
    assert!(matches!(err, Error::BadSubject(_)), "{err}");
    assert!(!js.connection().is_closed());

    // Core publish/subscribe on the same connection.
    let sub = js.connection().subscribe("greetings.*", 10).unwrap();
    js.connection()
        .publish("greetings.en", &Default::default(), b"hello")
        .unwrap();
    let got = sub
        .recv(std::time::Instant::now() + TIMEOUT)
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.subject.as_str(), got.payload.as_slice()),
        ("greetings.en", &b"hello"[..])
    );
    js.connection().flush(TIMEOUT).unwrap();
}

#[test]
fn a_server_sending_garbage_or_a_huge_frame_closes_the_connection_with_an_error() {
    for bad in [
        &b"MSG _INBOX.x 1 999999999999\r\n"[..],
        b"BOGUS\r\n",
        b"MSG a 1 3\r\nabcdef\r\n",
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            socket
                .write_all(
                    b"INFO {\"server_id\":\"fake\",\"headers\":true,\"max_payload\":1048576}\r\n",
                )
                .unwrap();
            let mut lines = BufReader::new(socket.try_clone().unwrap());
            let mut line = String::new();
            while !line.starts_with("PING") {
                line.clear();
                lines.read_line(&mut line).unwrap();
            }
            socket.write_all(b"PONG\r\n").unwrap();
            socket.write_all(bad).unwrap();
            // Hold the socket open: the client must give up on its own, and close it.
            socket.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut rest = Vec::new();
            let closed = lines.read_to_end(&mut rest);
            assert!(closed.is_ok(), "the client kept the connection: {closed:?}");
        });
        let url = format!("127.0.0.1:{port}");
        let connection = Connection::connect(&url, &Options::default()).unwrap();
        let err = connection
            .request("anything", &Default::default(), b"", TIMEOUT)
            .unwrap_err();
        assert!(err.is_connection_lost(), "{err}");
        assert!(connection.is_closed());
        fake.join().unwrap();
    }
}

#[test]
fn an_openfaas_invocation_goes_through_the_stream_an_openfaas_queue_worker_reads() {
    use defrost::internals::nats::openfaas::{QueueRequest, CONSUMER, QUEUE};
    let dir = TempDir::new("nats-openfaas");
    let server = NatsServer::start(&dir);
    let js = jetstream(&server);
    js.ensure_stream(&StreamConfig::work_queue(QUEUE, &[QUEUE]))
        .unwrap();
    js.ensure_consumer(
        QUEUE,
        &ConsumerConfig::durable(CONSUMER, Duration::from_secs(180)),
    )
    .unwrap();
    let request = QueueRequest {
        header: [("Content-Type".to_string(), vec!["text/plain".to_string()])].into(),
        body: b"resize me\n".to_vec(),
        method: "POST".into(),
        path: "/small".into(),
        function: "resize".into(),
        callback_url: Some("http://127.0.0.1:9/done".into()),
        ..QueueRequest::default()
    };
    js.publish(QUEUE, Some("call-1"), &request.to_json())
        .unwrap();
    let got = js.fetch(QUEUE, CONSUMER, 1, TIMEOUT).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(QueueRequest::from_json(&got[0].payload).unwrap(), request);
    js.ack(&got[0], Ack::Ack).unwrap();
}

#[test]
fn the_servers_pings_are_answered() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        socket
            .write_all(b"INFO {\"server_id\":\"fake\",\"headers\":true}\r\n")
            .unwrap();
        let mut lines = BufReader::new(socket.try_clone().unwrap());
        let mut line = String::new();
        while !line.starts_with("PING") {
            line.clear();
            lines.read_line(&mut line).unwrap();
        }
        socket.write_all(b"PONG\r\nPING\r\n").unwrap();
        line.clear();
        lines.read_line(&mut line).unwrap();
        line
    });
    let connection =
        Connection::connect(&format!("127.0.0.1:{port}"), &Options::default()).unwrap();
    assert_eq!(fake.join().unwrap(), "PONG\r\n");
    drop(connection);
}

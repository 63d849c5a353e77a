//! JetStream over a [`Connection`]: its JSON API on `$JS.API.>` subjects, publishing with an
//! acknowledgement, and pulling from a durable consumer with explicit acks.
//!
//! A message is stored once the [`PubAck`] arrives; it stays in a work-queue stream until a
//! consumer acks or terminates it. A message fetched and neither acked nor nak'ed is delivered
//! again after the consumer's `ack_wait`.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Connection, Error, Headers, Message};

/// The header JetStream de-duplicates publishes by, within the stream's `duplicate_window`.
const MSG_ID: &str = "Nats-Msg-Id";

/// What a stream keeps until.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Until the limits push it out.
    Limits,
    /// While some consumer has not acked it.
    Interest,
    /// Until one consumer acks it: a queue.
    #[serde(rename = "workqueue")]
    WorkQueue,
}

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk: survives a restart of the server.
    File,
    /// In memory.
    Memory,
}

/// What a full stream does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    /// Drops its oldest message (accepted work would be lost: not for a queue).
    Old,
    /// Refuses the new one: the publisher gets an error.
    New,
}

/// A stream's configuration, as the JetStream API reads and writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// Its name.
    pub name: String,
    /// The subjects it captures.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// What it keeps until.
    pub retention: Retention,
    /// Where it keeps messages.
    pub storage: Storage,
    /// Most messages kept (-1: no limit).
    #[serde(default = "unlimited")]
    pub max_msgs: i64,
    /// Most bytes kept (-1: no limit).
    #[serde(default = "unlimited")]
    pub max_bytes: i64,
    /// Largest message accepted (-1: the server's limit).
    #[serde(default = "unlimited")]
    pub max_msg_size: i64,
    /// What happens at the limits.
    pub discard: Discard,
    /// How long a `Nats-Msg-Id` is remembered for de-duplication.
    #[serde(with = "nanos", default = "two_minutes")]
    pub duplicate_window: Duration,
    /// Copies kept in a cluster.
    #[serde(default = "one")]
    pub num_replicas: u32,
}

impl StreamConfig {
    /// A durable work queue on disk named `name`, capturing `subjects`, with no limits: a
    /// message stays until acked; when limits are set, a full queue refuses new messages.
    pub fn work_queue(name: &str, subjects: &[&str]) -> StreamConfig {
        StreamConfig {
            name: name.into(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            retention: Retention::WorkQueue,
            storage: Storage::File,
            max_msgs: -1,
            max_bytes: -1,
            max_msg_size: -1,
            discard: Discard::New,
            duplicate_window: two_minutes(),
            num_replicas: 1,
        }
    }
}

/// A stream as the server describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct StreamInfo {
    /// Its configuration.
    pub config: StreamConfig,
    /// What it holds.
    pub state: StreamState,
}

/// What a stream holds.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamState {
    /// Messages stored.
    #[serde(default)]
    pub messages: u64,
    /// Their bytes.
    #[serde(default)]
    pub bytes: u64,
    /// The first sequence stored.
    #[serde(default)]
    pub first_seq: u64,
    /// The last sequence stored.
    #[serde(default)]
    pub last_seq: u64,
    /// Its consumers.
    #[serde(default)]
    pub consumer_count: u64,
}

/// A durable pull consumer with explicit acks, delivering everything in the stream in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerConfig {
    /// Its name; it outlives connections and server restarts.
    pub durable_name: String,
    /// Only messages on this subject (wildcards allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_subject: Option<String>,
    /// How long a delivered message may stay unacked before it is delivered again.
    #[serde(with = "nanos", default = "thirty_seconds")]
    pub ack_wait: Duration,
    /// Deliveries of one message at most (-1: no limit).
    #[serde(default = "unlimited")]
    pub max_deliver: i64,
    /// Messages delivered and not yet acked at most (-1: no limit).
    #[serde(default = "unlimited")]
    pub max_ack_pending: i64,
    /// Pull requests waiting at once at most.
    #[serde(default = "max_waiting")]
    pub max_waiting: i64,
}

impl ConsumerConfig {
    /// A durable consumer named `name`, redelivering after `ack_wait`, without limits.
    pub fn durable(name: &str, ack_wait: Duration) -> ConsumerConfig {
        ConsumerConfig {
            durable_name: name.into(),
            filter_subject: None,
            ack_wait,
            max_deliver: -1,
            max_ack_pending: -1,
            max_waiting: max_waiting(),
        }
    }
}

/// The consumer config as sent: with the policies this client relies on.
#[derive(Serialize)]
struct ConsumerWire<'a> {
    #[serde(flatten)]
    config: &'a ConsumerConfig,
    ack_policy: &'static str,
    deliver_policy: &'static str,
    replay_policy: &'static str,
}

/// A consumer as the server describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct ConsumerInfo {
    /// Its stream.
    pub stream_name: String,
    /// Its name.
    pub name: String,
    /// Its configuration.
    pub config: ConsumerConfig,
    /// Messages in the stream not delivered yet.
    #[serde(default)]
    pub num_pending: u64,
    /// Messages delivered and not acked yet.
    #[serde(default)]
    pub num_ack_pending: u64,
    /// Messages delivered more than once and not acked yet.
    #[serde(default)]
    pub num_redelivered: u64,
    /// Pull requests waiting.
    #[serde(default)]
    pub num_waiting: u64,
}

/// The stream's receipt for a published message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PubAck {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in the stream.
    pub seq: u64,
    /// It had been published before with the same `Nats-Msg-Id`: stored once.
    #[serde(default)]
    pub duplicate: bool,
}

/// A message pulled from a consumer, with what its ack subject says about it.
#[derive(Debug, Clone)]
pub struct JsMessage {
    /// The subject it was published to.
    pub subject: String,
    /// Its headers.
    pub headers: Headers,
    /// Its body.
    pub payload: Vec<u8>,
    /// Where acks go (`$JS.ACK...`).
    pub reply: String,
    /// The stream holding it.
    pub stream: String,
    /// The consumer that delivered it.
    pub consumer: String,
    /// Which delivery this is: 1 the first time, 2 after one nak or ack timeout.
    pub delivered: u64,
    /// Its sequence in the stream.
    pub stream_seq: u64,
    /// Its sequence in the consumer's deliveries.
    pub consumer_seq: u64,
    /// When it was stored, in nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// Messages left for the consumer after this one.
    pub pending: u64,
}

impl JsMessage {
    /// Reads the ack subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`,
    /// or the newer form with a domain and an account hash before the stream (and a token after).
    fn from_message(message: Message) -> Result<JsMessage, Error> {
        let reply = message.reply.unwrap_or_default();
        let bad = || Error::Protocol(format!("{reply:?} is not a JetStream ack subject"));
        let tokens: Vec<&str> = reply.split('.').collect();
        let at = match tokens.len() {
            9 => 2,
            n if n >= 11 => 4,
            _ => return Err(bad()),
        };
        if tokens[..2] != ["$JS", "ACK"] {
            return Err(bad());
        }
        let number = |i: usize| tokens[at + i].parse::<u64>().map_err(|_| bad());
        Ok(JsMessage {
            stream: tokens[at].to_string(),
            consumer: tokens[at + 1].to_string(),
            delivered: number(2)?,
            stream_seq: number(3)?,
            consumer_seq: number(4)?,
            timestamp_ns: number(5)?,
            pending: number(6)?,
            subject: message.subject,
            headers: message.headers,
            payload: message.payload,
            reply,
        })
    }
}

/// How a pulled message is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Done: removed from a work queue.
    Ack,
    /// Not now: deliver again, after the delay if one is given (else at once).
    Nak(Option<Duration>),
    /// Still working: restart the `ack_wait` clock.
    InProgress,
    /// Never: drop it without delivering it again.
    Term,
}

impl Ack {
    fn body(self) -> String {
        match self {
            Ack::Ack => "+ACK".into(),
            Ack::Nak(None) => "-NAK".into(),
            Ack::Nak(Some(delay)) => format!("-NAK {{\"delay\":{}}}", nanos::of(delay)),
            Ack::InProgress => "+WPI".into(),
            Ack::Term => "+TERM".into(),
        }
    }
}

/// JetStream calls over one connection; every call waits at most `timeout` for its answer.
pub struct JetStream {
    connection: Connection,
    timeout: Duration,
}

impl JetStream {
    /// JetStream over `connection`, each API call waiting at most `timeout`.
    pub fn new(connection: Connection, timeout: Duration) -> JetStream {
        JetStream {
            connection,
            timeout,
        }
    }

    /// The connection underneath.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Creates the stream, or updates it to `config` if it exists (retention and storage
    /// cannot change: the server refuses, and so does this call).
    pub fn ensure_stream(&self, config: &StreamConfig) -> Result<StreamInfo, Error> {
        let body = to_json(config)?;
        match self.stream_info(&config.name) {
            Ok(_) => self.api(&format!("STREAM.UPDATE.{}", config.name), &body),
            Err(Error::Api { code: 404, .. }) => {
                self.api(&format!("STREAM.CREATE.{}", config.name), &body)
            }
            Err(e) => Err(e),
        }
    }

    /// The stream named `name` (an [`Error::Api`] with code 404 if there is none).
    pub fn stream_info(&self, name: &str) -> Result<StreamInfo, Error> {
        self.api(&format!("STREAM.INFO.{name}"), b"")
    }

    /// Creates the durable consumer on `stream`, or updates it to `config` where the server
    /// allows.
    pub fn ensure_consumer(
        &self,
        stream: &str,
        config: &ConsumerConfig,
    ) -> Result<ConsumerInfo, Error> {
        let request = serde_json::json!({
            "stream_name": stream,
            "config": ConsumerWire {
                config,
                ack_policy: "explicit",
                deliver_policy: "all",
                replay_policy: "instant",
            },
        });
        let call = format!("CONSUMER.DURABLE.CREATE.{stream}.{}", config.durable_name);
        self.api(&call, request.to_string().as_bytes())
    }

    /// The consumer `name` on `stream`.
    pub fn consumer_info(&self, stream: &str, name: &str) -> Result<ConsumerInfo, Error> {
        self.api(&format!("CONSUMER.INFO.{stream}.{name}"), b"")
    }

    /// Publishes and waits for the stream to store it. With `msg_id`, publishing again with
    /// the same id within the stream's `duplicate_window` stores nothing more (the receipt
    /// says `duplicate`): a publish that timed out can be retried safely.
    pub fn publish(
        &self,
        subject: &str,
        msg_id: Option<&str>,
        payload: &[u8],
    ) -> Result<PubAck, Error> {
        let headers = match msg_id {
            Some(id) => Headers::with(&[(MSG_ID, id)]),
            None => Headers::default(),
        };
        let answer = self
            .connection
            .request(subject, &headers, payload, self.timeout)?;
        parse_answer(&format!("publish to {subject:?}"), &answer.payload)
    }

    /// Pulls up to `batch` messages from the durable `consumer` of `stream`, waiting up to
    /// `expires` for the first ones (zero: only what is there now). Fewer (or none) may come.
    pub fn fetch(
        &self,
        stream: &str,
        consumer: &str,
        batch: usize,
        expires: Duration,
    ) -> Result<Vec<JsMessage>, Error> {
        let call = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}");
        let batch = batch.max(1);
        let request = if expires.is_zero() {
            serde_json::json!({ "batch": batch, "no_wait": true })
        } else {
            serde_json::json!({ "batch": batch, "expires": nanos::of(expires) })
        };
        // Room for the batch and the status that may end it, so the reader never drops one.
        let inbox = self.connection.ask(
            &call,
            &Headers::default(),
            request.to_string().as_bytes(),
            batch + 4,
            None,
        )?;
        let deadline = crate::deadline::after(expires.saturating_add(self.timeout));
        let mut messages = Vec::new();
        while messages.len() < batch {
            let Some(message) = inbox.recv(deadline)? else {
                if messages.is_empty() {
                    // A server does not answer a pull from a consumer it does not have: say so.
                    self.consumer_info(stream, consumer)?;
                    return Err(Error::Timeout {
                        what: format!("a fetch from {stream}.{consumer}"),
                        after: expires.saturating_add(self.timeout),
                    });
                }
                break;
            };
            match message.headers.status {
                None => messages.push(JsMessage::from_message(message)?),
                // Heartbeats say the pull is still open.
                Some(100) => {}
                // No messages (now, or before the pull expired).
                Some(404 | 408) => break,
                Some(503) => return Err(Error::NoResponders(call)),
                Some(code) if messages.is_empty() => {
                    return Err(Error::Status {
                        call,
                        code,
                        description: message.headers.description,
                    })
                }
                Some(code) => {
                    log::warn!(
                        "JetStream pull from {stream}.{consumer} ended with {code} {}",
                        message.headers.description
                    );
                    break;
                }
            }
        }
        Ok(messages)
    }

    /// Settles a pulled message and waits for the server to confirm it took the ack.
    pub fn ack(&self, message: &JsMessage, how: Ack) -> Result<(), Error> {
        self.connection
            .request(
                &message.reply,
                &Headers::default(),
                how.body().as_bytes(),
                self.timeout,
            )
            .map(|_| ())
    }

    fn api<T: DeserializeOwned>(&self, call: &str, body: &[u8]) -> Result<T, Error> {
        let subject = format!("$JS.API.{call}");
        let answer = self
            .connection
            .request(&subject, &Headers::default(), body, self.timeout)?;
        parse_answer(call, &answer.payload)
    }
}

/// A JetStream answer: the document expected, or `{"error": {...}}` as an [`Error::Api`].
fn parse_answer<T: DeserializeOwned>(call: &str, payload: &[u8]) -> Result<T, Error> {
    #[derive(Deserialize)]
    struct ApiError {
        #[serde(default)]
        code: u16,
        #[serde(default)]
        err_code: u32,
        #[serde(default)]
        description: String,
    }
    let json_error = |source| Error::Json {
        call: call.to_string(),
        source,
    };
    let mut document: serde_json::Value = serde_json::from_slice(payload).map_err(json_error)?;
    if let Some(error) = document.get_mut("error").map(serde_json::Value::take) {
        let error: ApiError = serde_json::from_value(error).map_err(json_error)?;
        return Err(Error::Api {
            call: call.to_string(),
            code: error.code,
            err_code: error.err_code,
            description: error.description,
        });
    }
    serde_json::from_value(document).map_err(json_error)
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|source| Error::Json {
        call: "encoding a request".into(),
        source,
    })
}

fn unlimited() -> i64 {
    -1
}

fn one() -> u32 {
    1
}

fn max_waiting() -> i64 {
    512
}

fn two_minutes() -> Duration {
    Duration::from_secs(120)
}

fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

/// JetStream writes durations as integer nanoseconds.
mod nanos {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// `d` in nanoseconds, saturating at what an int64 holds.
    pub fn of(d: Duration) -> i64 {
        i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(of(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_nanos(
            u64::try_from(i64::deserialize(d)?).unwrap_or(0),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(reply: &str) -> Result<JsMessage, Error> {
        JsMessage::from_message(Message {
            subject: "jobs".into(),
            reply: Some(reply.into()),
            ..Message::default()
        })
    }

    #[test]
    fn ack_subjects_say_delivery_count_and_sequences() {
        let m = delivered("$JS.ACK.jobs.workers.2.41.57.1733500000000000000.9").unwrap();
        assert_eq!(
            (m.stream.as_str(), m.consumer.as_str()),
            ("jobs", "workers")
        );
        assert_eq!(
            (m.delivered, m.stream_seq, m.consumer_seq, m.pending),
            (2, 41, 57, 9)
        );
        assert_eq!(m.timestamp_ns, 1_733_500_000_000_000_000);
        let m =
            delivered("$JS.ACK.hub.ACCHASH.jobs.workers.1.3.3.1733500000000000000.0.xyz").unwrap();
        assert_eq!(
            (m.stream.as_str(), m.delivered, m.stream_seq),
            ("jobs", 1, 3)
        );
        for bad in [
            "",
            "_INBOX.x.1",
            "$JS.ACK.jobs.workers.x.41.57.1.9",
            "$JS.NAK.jobs.workers.1.41.57.1.9",
            "$JS.ACK.jobs.workers.1.41",
        ] {
            assert!(delivered(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn acks_are_written_as_jetstream_reads_them() {
        assert_eq!(Ack::Ack.body(), "+ACK");
        assert_eq!(Ack::Nak(None).body(), "-NAK");
        assert_eq!(
            Ack::Nak(Some(Duration::from_millis(1500))).body(),
            "-NAK {\"delay\":1500000000}"
        );
        assert_eq!(Ack::InProgress.body(), "+WPI");
        assert_eq!(Ack::Term.body(), "+TERM");
        assert_eq!(nanos::of(Duration::MAX), i64::MAX);
    }

    #[test]
    fn api_errors_name_the_call_and_the_answer() {
        let answer = br#"{"type":"io.nats.jetstream.api.v1.stream_info_response","error":{"code":404,"err_code":10059,"description":"stream not found"}}"#;
        let err = parse_answer::<StreamInfo>("STREAM.INFO.jobs", answer).unwrap_err();
        assert!(matches!(
            err,
            Error::Api {
                code: 404,
                err_code: 10059,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "JetStream STREAM.INFO.jobs answered 404 (error 10059): stream not found"
        );
        let ack: PubAck = parse_answer("publish", br#"{"stream":"jobs","seq":7}"#).unwrap();
        assert_eq!((ack.seq, ack.duplicate), (7, false));
        assert!(matches!(
            parse_answer::<PubAck>("publish", b"not json"),
            Err(Error::Json { .. })
        ));
    }

    #[test]
    fn configs_are_sent_in_the_api_shape() {
        let stream = serde_json::to_value(StreamConfig::work_queue("q", &["q"])).unwrap();
        assert_eq!(stream["retention"], "workqueue");
        assert_eq!(stream["storage"], "file");
        assert_eq!(stream["discard"], "new");
        assert_eq!(stream["duplicate_window"], 120_000_000_000i64);
        let consumer = ConsumerConfig::durable("w", Duration::from_secs(3));
        let wire = serde_json::to_value(ConsumerWire {
            config: &consumer,
            ack_policy: "explicit",
            deliver_policy: "all",
            replay_policy: "instant",
        })
        .unwrap();
        assert_eq!(wire["ack_wait"], 3_000_000_000i64);
        assert_eq!(wire["ack_policy"], "explicit");
        assert_eq!(wire["max_deliver"], -1);
        assert!(wire.get("filter_subject").is_none());
    }
}

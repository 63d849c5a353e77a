//! Functions written the way most are: Python's `http.server` with HTTP/1.1 keep-alive and no
//! socket options, its head and body in two writes. defrost serves them as they are.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Defrost, RawConn};

fn plain_gateway() -> Defrost {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plain.py");
    Defrost::start(&format!(
        "[[function]]\nname = \"plain\"\ncommand = [\"python3\", \"{}\"]\n",
        script.display()
    ))
}

#[test]
fn a_plain_python_function_answers_call_after_call_on_one_connection() {
    let gw = plain_gateway();
    let mut client = RawConn::open(gw.addr, Duration::from_secs(20));
    for i in 0..50 {
        let request = format!("GET /function/plain/call-{i} HTTP/1.1\r\nHost: gateway\r\n\r\n");
        client.send(request.as_bytes()).unwrap();
        let response = client.response().unwrap();
        assert_eq!(response.status, 200, "call {i}");
        assert!(!response.closes(), "call {i} closed the connection");
        let body = String::from_utf8_lossy(&response.body).into_owned();
        assert_eq!(
            body,
            format!("hello from a plain function, asked for /call-{i}\n"),
            "call {i}"
        );
    }
}

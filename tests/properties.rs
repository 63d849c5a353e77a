//! Fuzz-style property tests: what a client, a config file or a provider can send is thrown at
//! the parsers in bulk, and the scaler's single-flight and the function table are driven with random
//! workloads. Each property runs a bounded number of generated cases, as a normal test.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use defrost::internals::{
    parse_duration, route, screen, Call, FunctionJson, FunctionTable, Loaded, Route,
    ScaleServiceRequest, SingleFlight,
};

use defrost::{FunctionRef, Settings};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Path pieces chosen to confuse a router: dots, slashes and their encodings, names.
fn path_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("%2e".to_string()),
        Just("%2E".to_string()),
        Just("%2f".to_string()),
        Just("%2F".to_string()),
        Just("%5c".to_string()),
        Just("\\".to_string()),
        Just("%".to_string()),
        Just("?".to_string()),
        Just("other".to_string()),
        Just("function".to_string()),
        "[a-z0-9._~-]{1,6}",
    ]
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn the_router_never_panics_and_keeps_what_it_does_not_parse(target in "\\PC{0,80}") {
        if let Ok(Route::Function { function, rest, query, .. }) = route(&target, "default") {
            prop_assert!(rest.is_empty() || rest.starts_with('/'));
            let name_ok = function.name().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            prop_assert!(name_ok, "{}", function.key());
            let mut rebuilt = format!("/function/{}", &target["/function/".len()..target.len() - rest.len() - query.map_or(0, |q| q.len() + 1)]);
            rebuilt.push_str(rest);
            if let Some(q) = query {
                rebuilt.push('?');
                rebuilt.push_str(q);
            }
            prop_assert_eq!(rebuilt, target.clone());
        }
        let _ = screen("GET", &target);
    }

    #[test]
    fn what_follows_a_function_name_never_changes_the_function(
        pieces in proptest::collection::vec(path_piece(), 0..12)
    ) {
        let target = format!("/function/echo/{}", pieces.concat());
        if screen("GET", &target).is_ok() {
            match route(&target, "default") {
                Ok(Route::Function { function, .. }) => prop_assert_eq!(function.key(), "echo.default"),
                other => prop_assert!(false, "{target} routed to {other:?}"),
            }
        }
        let after_prefix = format!("/function/{}", pieces.concat());
        if let (Ok(()), Ok(Route::Function { function, .. })) =
            (screen("GET", &after_prefix), route(&after_prefix, "default"))
        {
            prop_assert!(!function.name().contains('.') && !function.name().contains('%'));
        }
    }

    #[test]
    fn provider_json_never_panics_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = serde_json::from_slice::<FunctionJson>(&bytes);
        let _ = serde_json::from_slice::<Vec<FunctionJson>>(&bytes);
        let _ = serde_json::from_slice::<ScaleServiceRequest>(&bytes);
    }

    #[test]
    fn provider_json_round_trips(
        name in "[a-z][a-z0-9-]{0,20}",
        namespace in "[a-z]{0,10}",
        replicas in any::<u64>(),
        available in any::<u64>(),
        labels in proptest::collection::btree_map("\\PC{0,8}", "\\PC{0,8}", 0..4),
    ) {
        let status = FunctionJson {
            name,
            namespace,
            replicas,
            available_replicas: available,
            labels: Some(labels),
            ..FunctionJson::default()
        };
        let bytes = serde_json::to_vec(&status).unwrap();
        let back: FunctionJson = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(back, status);
    }
}

/// Config lines built from real keys and values of the wrong and right kinds.
fn config_line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("listen"),
        Just("workers"),
        Just("ready_timeout"),
        Just("max_body_bytes"),
        Just("max_connections"),
        Just("name"),
        Just("command"),
        Just("min_replicas"),
        Just("max_replicas"),
        Just("kind"),
        Just("url"),
        Just("timeout"),
        Just("readiness_path"),
        Just("nonsense"),
    ];
    let value = prop_oneof![
        Just("\"127.0.0.1:0\"".to_string()),
        Just("\"1s\"".to_string()),
        Just("\"-1s\"".to_string()),
        Just("\"99999999999999h\"".to_string()),
        Just("[\"python3\", \"x.py\"]".to_string()),
        Just("[]".to_string()),
        Just("\"openfaas\"".to_string()),
        Just("\"process\"".to_string()),
        Just("\"Echo\"".to_string()),
        Just("\"echo\"".to_string()),
        Just("-1".to_string()),
        Just("1e300".to_string()),
        Just("-0.5".to_string()),
        Just("nan".to_string()),
        Just("18446744073709551615".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "\"\\PC{0,12}\"",
    ];
    let section = prop_oneof![
        Just("[gateway]"),
        Just("[provider]"),
        Just("[[function]]"),
        Just("[gateway"),
    ];
    prop_oneof![
        3 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => section.prop_map(str::to_string),
        1 => "\\PC{0,30}",
    ]
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn any_config_is_loaded_or_refused_with_a_location(
        lines in proptest::collection::vec(config_line(), 0..12)
    ) {
        let text = lines.join("\n");
        match Loaded::parse(Path::new("fuzz.toml"), text) {
            Ok(loaded) => {
                let _ = Settings::from(&loaded.config.gateway);
                if let Err(e) = loaded.process_functions() {
                    prop_assert!(e.to_string().contains("fuzz.toml"), "{e}");
                }
            }
            Err(e) => prop_assert!(e.to_string().contains("fuzz.toml"), "{e}"),
        }
    }

    #[test]
    fn durations_parse_or_are_refused(text in "\\PC{0,16}|[0-9]{1,25}(ns|us|ms|s|m|h|d|)") {
        let _ = parse_duration(&text);
    }
}

/// One caller of a single-flight group: which key, and whether its work (if it leads) panics.
#[derive(Debug, Clone)]
struct Caller {
    key: u8,
    panics: bool,
}

fn callers() -> impl Strategy<Value = Vec<Caller>> {
    proptest::collection::vec(
        (0u8..4, proptest::bool::weighted(0.1)).prop_map(|(key, panics)| Caller { key, panics }),
        1..24,
    )
}

proptest! {
    #![proptest_config(config(200))]

    /// Every caller gets a result its own key's work produced (a follower gets its leader's),
    /// or is told the leader was abandoned; work runs at most once per caller; and when all is
    /// done no key is left behind.
    #[test]
    fn single_flight_shares_results_per_key_and_leaks_no_key(callers in callers()) {
        let group: Arc<SingleFlight<u8, (u8, u64)>> = Arc::new(SingleFlight::new());
        let produced: Arc<Mutex<Vec<(u8, u64)>>> = Arc::default();
        let next = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(callers.len()));
        let handles: Vec<_> = callers
            .iter()
            .cloned()
            .map(|caller| {
                let (group, produced, next, start) =
                    (group.clone(), produced.clone(), next.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    catch_unwind(AssertUnwindSafe(|| {
                        group.run(&caller.key, || {
                            std::thread::sleep(Duration::from_millis(2));
                            if caller.panics {
                                panic!("leader failed");
                            }
                            let value = (caller.key, next.fetch_add(1, Ordering::SeqCst));
                            produced.lock().unwrap().push(value);
                            value
                        })
                    }))
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let produced = produced.lock().unwrap().clone();
        prop_assert!(produced.len() <= callers.len());
        for (caller, result) in callers.iter().zip(results) {
            match result {
                Ok(Ok(value)) => {
                    prop_assert_eq!(value.0, caller.key);
                    prop_assert!(produced.contains(&value), "{value:?} was never produced");
                }
                Ok(Err(_abandoned)) => {}
                Err(_panic) => prop_assert!(caller.panics, "only a failing leader unwinds"),
            }
        }
        prop_assert_eq!(group.in_flight(), 0);
        let (led, followed) = group.counts();
        prop_assert_eq!(led + followed, callers.len() as u64);
    }
}

#[derive(Debug, Clone)]
enum TableOp {
    /// A call answered 200.
    Serve(u8),
    /// A call to a name the provider does not know: 404, then forgotten if never served.
    Miss(u8),
}

fn table_ops() -> impl Strategy<Value = Vec<TableOp>> {
    proptest::collection::vec(
        prop_oneof![
            1 => (0u8..6).prop_map(TableOp::Serve),
            3 => (0u8..6).prop_map(TableOp::Miss),
        ],
        0..60,
    )
}

proptest! {
    #![proptest_config(config(1000))]

    /// The table keeps a record for exactly the names ever served: calls to made-up names
    /// leave nothing behind, and no call leaves a count in flight.
    #[test]
    fn the_function_table_keeps_served_names_only_and_leaks_no_record(ops in table_ops()) {
        let table = FunctionTable::new();
        let mut served: BTreeSet<String> = BTreeSet::new();
        for op in ops {
            let (k, code) = match op {
                TableOp::Serve(k) => (k, 200),
                TableOp::Miss(k) => (k, 404),
            };
            let function = FunctionRef::new(&format!("f{k}"), "default").unwrap();
            Call::begin(&table, &function).finish(code);
            if code == 200 {
                served.insert(function.key().to_owned());
            } else {
                table.forget_unknown(&function);
            }
            let kept: BTreeSet<String> =
                table.all().iter().map(|r| r.function().key().to_owned()).collect();
            prop_assert_eq!(&kept, &served);
            prop_assert!(table.all().iter().all(|r| r.in_flight() == 0));
        }
    }
}

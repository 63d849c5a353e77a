//! The faas-provider JSON types, as OpenFaaS providers send and expect them.
//!
//! One definition serves both directions: the OpenFaaS provider client parses them, the
//! provider API serves them. Field names and `omitempty` behaviour follow faas-provider's
//! `types` package, so that the OpenFaaS gateway and faas-cli read defrost's answers unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::FunctionSummary;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_f64(n: &f64) -> bool {
    *n == 0.0
}

/// The JSON of `types.FunctionStatus`. `replicas` and `availableReplicas` are omitted when 0, so absent
/// means 0 when reading.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionJson {
    #[serde(default)]
    /// Function name.
    pub name: String,
    #[serde(default)]
    /// Image (or command line) it runs.
    pub image: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    /// Its namespace.
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Labels, when it has any.
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Annotations, when it has any.
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    /// Calls answered so far.
    pub invocation_count: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    /// Desired replicas.
    pub replicas: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    /// Ready replicas.
    pub available_replicas: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When the provider took the function on, RFC 3339 in UTC.
    pub created_at: Option<String>,
}

impl From<&FunctionSummary> for FunctionJson {
    fn from(s: &FunctionSummary) -> FunctionJson {
        FunctionJson {
            name: s.function.name().to_owned(),
            image: s.image.clone(),
            namespace: s.function.namespace().to_owned(),
            labels: Some(s.status.labels.clone()),
            annotations: None,
            invocation_count: 0.0,
            replicas: s.status.replicas,
            available_replicas: s.status.available_replicas,
            created_at: s.created_at.map(rfc3339),
        }
    }
}

/// `2026-12-02T15:21:32.123Z`: how Go's `time.Time` reads and writes JSON (RFC 3339, UTC).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm), in u64 arithmetic
    // shifted to the era starting 0000-03-01 so that nothing goes negative.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// A remote provider's `/system/functions` (an array) or `/system/function/{name}` (one object)
/// with `invocationCount` set from the gateway's own counts, as the OpenFaaS gateway fills it
/// in from its metrics. Every other field is kept as the provider wrote it; `namespace` names
/// entries that carry none. `None`: not the JSON of a listing, to be relayed unchanged.
pub fn with_invocations(
    listing: &[u8],
    namespace: &str,
    invocations: &dyn Fn(&crate::function::FunctionRef) -> u64,
) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(listing).ok()?;
    let count = |entry: &mut serde_json::Value| {
        let Some(object) = entry.as_object_mut() else {
            return;
        };
        let name = object.get("name").and_then(|n| n.as_str()).unwrap_or("");
        let ns = object
            .get("namespace")
            .and_then(|n| n.as_str())
            .filter(|ns| !ns.is_empty())
            .unwrap_or(namespace);
        let Ok(function) = crate::function::FunctionRef::new(name, ns) else {
            return;
        };
        let n = invocations(&function);
        if n > 0 {
            object.insert("invocationCount".into(), (n as f64).into());
        }
    };
    match &mut value {
        serde_json::Value::Array(entries) => entries.iter_mut().for_each(count),
        entry @ serde_json::Value::Object(_) => count(entry),
        _ => return None,
    }
    serde_json::to_vec(&value).ok()
}

/// `types.ScaleServiceRequest`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleServiceRequest {
    #[serde(default)]
    /// The function to scale.
    pub service_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    /// Its namespace; empty means the default one.
    pub namespace: String,
    /// Desired replicas.
    pub replicas: u64,
}

/// `types.ProviderInfo`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProviderInfo {
    #[serde(default)]
    pub provider: String,
    #[serde(default)]
    pub orchestration: String,
    #[serde(default)]
    pub version: VersionInfo,
}

impl From<&super::ProviderInfo> for ProviderInfo {
    fn from(p: &super::ProviderInfo) -> ProviderInfo {
        ProviderInfo {
            provider: p.name.clone(),
            orchestration: p.orchestration.clone(),
            version: VersionInfo {
                sha: p.sha.clone(),
                release: p.release.clone(),
            },
        }
    }
}

impl From<ProviderInfo> for super::ProviderInfo {
    fn from(p: ProviderInfo) -> super::ProviderInfo {
        super::ProviderInfo {
            name: p.provider,
            orchestration: p.orchestration,
            release: p.version.release,
            sha: p.version.sha,
        }
    }
}

/// The gateway's `types.GatewayInfo`: what faas-cli (`faas-cli version`) and the certifier read
/// from `/system/info`. The provider's own answer is wrapped in it, as the OpenFaaS gateway
/// does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GatewayInfo {
    pub provider: ProviderInfo,
    pub version: VersionInfo,
    pub arch: String,
}

impl GatewayInfo {
    /// This gateway in front of `provider`.
    pub fn wrapping(provider: &super::ProviderInfo) -> GatewayInfo {
        GatewayInfo {
            provider: ProviderInfo::from(provider),
            version: VersionInfo {
                sha: env!("DEFROST_GIT_SHA").into(),
                release: env!("CARGO_PKG_VERSION").into(),
            },
            arch: std::env::consts::ARCH.into(),
        }
    }
}

/// Reads a `/system/info` answer: a provider's (`provider` is its name), or a gateway's in
/// front of one, such as another defrost (`provider` is the provider's object).
pub fn read_info(body: &[u8]) -> Result<super::ProviderInfo, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Provider(ProviderInfo),
        Gateway { provider: ProviderInfo },
    }
    Ok(match serde_json::from_slice(body)? {
        Either::Provider(p) | Either::Gateway { provider: p } => p.into(),
    })
}

/// `types.VersionInfo`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    #[serde(default)]
    pub sha: String,
    #[serde(default)]
    pub release: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_replicas_are_omitted_and_read_back_as_zero() {
        let status = FunctionJson {
            name: "f".into(),
            namespace: "ns".into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(
            json,
            r#"{"name":"f","image":""," namespace":"ns"}"#.replace("\" ", "\"")
        );
        let back: FunctionJson = serde_json::from_str(r#"{"name":"f","image":"i"}"#).unwrap();
        assert_eq!((back.replicas, back.available_replicas), (0, 0));
        let read: FunctionJson = serde_json::from_str(
            r#"{"name":"f","replicas":2,"availableReplicas":1,"labels":{"a":"b"}}"#,
        )
        .unwrap();
        assert_eq!((read.replicas, read.available_replicas), (2, 1));
    }

    #[test]
    fn info_is_read_from_a_provider_or_a_gateway_and_served_as_a_gateway() {
        let faas_netes = br#"{"provider":"faas-netes","orchestration":"kubernetes","version":{"sha":"abc","release":"0.18.1"}}"#;
        let read = read_info(faas_netes).unwrap();
        assert_eq!(
            (read.name.as_str(), read.sha.as_str()),
            ("faas-netes", "abc")
        );
        let served = serde_json::to_value(GatewayInfo::wrapping(&read)).unwrap();
        assert_eq!(served["provider"]["provider"], "faas-netes");
        assert_eq!(served["provider"]["orchestration"], "kubernetes");
        assert_eq!(served["provider"]["version"]["release"], "0.18.1");
        assert_eq!(served["version"]["release"], env!("CARGO_PKG_VERSION"));
        assert!(!served["version"]["sha"].as_str().unwrap().is_empty());
        assert_eq!(served["arch"], std::env::consts::ARCH);
        let behind_a_gateway = serde_json::to_vec(&served).unwrap();
        assert_eq!(read_info(&behind_a_gateway).unwrap(), read);
        assert!(read_info(b"[1]").is_err());
    }

    #[test]
    fn remote_listings_get_the_gateways_invocation_counts() {
        let counts = |f: &crate::function::FunctionRef| match f.key() {
            "echo.openfaas-fn" => 4,
            "other.team" => 2,
            _ => 0,
        };
        let listing = br#"[{"name":"echo","createdAt":"2026-01-01T00:00:00Z"},{"name":"other","namespace":"team"},{"name":"idle"},7]"#;
        let amended = with_invocations(listing, "openfaas-fn", &counts).unwrap();
        let amended: serde_json::Value = serde_json::from_slice(&amended).unwrap();
        assert_eq!(amended[0]["invocationCount"], 4.0);
        assert_eq!(amended[0]["createdAt"], "2026-01-01T00:00:00Z");
        assert_eq!(amended[1]["invocationCount"], 2.0);
        assert!(amended[2].get("invocationCount").is_none());
        assert_eq!(amended[3], 7);
        let one = with_invocations(br#"{"name":"echo"}"#, "openfaas-fn", &counts).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&one).unwrap()["invocationCount"],
            4.0
        );
        assert!(with_invocations(b"not json", "openfaas-fn", &counts).is_none());
    }

    #[test]
    fn times_are_written_as_go_reads_them() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap_day = UNIX_EPOCH + Duration::from_millis(951_782_400_250);
        assert_eq!(rfc3339(leap_day), "2000-02-29T00:00:00.250Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_224_892);
        assert_eq!(rfc3339(t), "2026-12-02T15:21:32.000Z");
    }

    #[test]
    fn scale_request_uses_faas_provider_names() {
        let req = ScaleServiceRequest {
            service_name: "f".into(),
            namespace: "ns".into(),
            replicas: 3,
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"serviceName":"f","namespace":"ns","replicas":3}"#
        );
    }
}

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
        }
    }
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
    pub provider: String,
    pub orchestration: String,
    pub version: VersionInfo,
}

/// `types.VersionInfo`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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

//! The few fields of Kubernetes objects the provider reads, as the API serves them in JSON.
//!
//! Everything is optional with a default: the API server omits zero values (`availableReplicas`
//! of a Deployment at zero, `ready` of an endpoint it has not judged), and an object missing a
//! field must read as "nothing there", never fail the whole list.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// A field the API server may send as `null` (an EndpointSlice with no endpoints has
/// `"endpoints": null`): read as empty.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    pub resource_version: String,
    pub creation_timestamp: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListMeta {
    pub resource_version: String,
}

/// A list answer (`GET .../deployments`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Deployment {
    pub metadata: Meta,
    pub spec: DeploymentSpec,
    pub status: DeploymentStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentSpec {
    /// Absent means 1, as the API server defaults it.
    pub replicas: Option<u64>,
    pub template: PodTemplate,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PodTemplate {
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PodSpec {
    #[serde(deserialize_with = "nullable")]
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Container {
    pub image: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentStatus {
    pub available_replicas: u64,
}

/// An EndpointSlice; `discovery.k8s.io/v1` and `v1beta1` agree on every field read here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointSlice {
    pub metadata: Meta,
    pub address_type: String,
    #[serde(deserialize_with = "nullable")]
    pub endpoints: Vec<SliceEndpoint>,
    #[serde(deserialize_with = "nullable")]
    pub ports: Vec<SlicePort>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SliceEndpoint {
    #[serde(deserialize_with = "nullable")]
    pub addresses: Vec<String>,
    pub conditions: Conditions,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Conditions {
    /// Absent means ready ("unknown state should be interpreted as ready").
    pub ready: Option<bool>,
    pub terminating: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SlicePort {
    pub name: Option<String>,
    pub port: Option<u16>,
}

/// One line of a watch stream.
#[derive(Debug, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub object: serde_json::Value,
}

/// The `Status` object of an `ERROR` watch event, or of a failed call.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    pub code: u16,
    pub message: String,
    pub reason: String,
}

/// The label of an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl EndpointSlice {
    /// `http://address:port` for each ready, not terminating address, on the slice's first port.
    /// A slice with no port, or of FQDN addresses, gives nothing.
    pub fn ready_urls(&self) -> Vec<String> {
        let Some(port) = self.ports.iter().find_map(|p| p.port) else {
            return Vec::new();
        };
        let v6 = match self.address_type.as_str() {
            "IPv4" | "" => false,
            "IPv6" => true,
            _ => return Vec::new(),
        };
        self.endpoints
            .iter()
            .filter(|e| e.conditions.ready != Some(false) && e.conditions.terminating != Some(true))
            .flat_map(|e| e.addresses.iter())
            .map(|a| {
                if v6 {
                    format!("http://[{a}]:{port}")
                } else {
                    format!("http://{a}:{port}")
                }
            })
            .collect()
    }

    /// The Service the slice belongs to, from its label.
    pub fn service(&self) -> Option<&str> {
        self.metadata
            .labels
            .get(SERVICE_NAME_LABEL)
            .map(String::as_str)
    }
}

impl Deployment {
    /// Desired replicas; the API server defaults an absent count to 1.
    pub fn desired(&self) -> u64 {
        self.spec.replicas.unwrap_or(1)
    }

    /// What the gateway reads as the function's labels: the Deployment's labels, then its
    /// annotations over them (annotations carry values labels cannot, such as `30s`).
    pub fn function_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.metadata.labels.clone();
        labels.extend(
            self.metadata
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ready_addresses_count_and_absent_ready_means_ready() {
        let slice: EndpointSlice = serde_json::from_str(
            r#"{"metadata":{"name":"f-abc","labels":{"kubernetes.io/service-name":"f"}},
                "addressType":"IPv4",
                "endpoints":[
                  {"addresses":["127.1.0.1"],"conditions":{"ready":true}},
                  {"addresses":["127.1.0.2"],"conditions":{"ready":false}},
                  {"addresses":["127.1.0.3"]},
                  {"addresses":["127.1.0.4"],"conditions":{"ready":true,"terminating":true}}],
                "ports":[{"name":"http","port":8080,"protocol":"TCP"}]}"#,
        )
        .unwrap();
        assert_eq!(
            slice.ready_urls(),
            ["http://127.1.0.1:8080", "http://127.1.0.3:8080"]
        );
        assert_eq!(slice.service(), Some("f"));
    }

    #[test]
    fn a_slice_without_ports_or_of_fqdns_gives_no_url() {
        let no_port: EndpointSlice = serde_json::from_str(
            r#"{"addressType":"IPv4","endpoints":[{"addresses":["127.1.0.1"]}],"ports":null}"#,
        )
        .unwrap();
        let empty: EndpointSlice =
            serde_json::from_str(r#"{"addressType":"IPv4","endpoints":null,"ports":null}"#)
                .unwrap();
        assert!(empty.ready_urls().is_empty());
        assert!(no_port.ready_urls().is_empty());
        let fqdn: EndpointSlice = serde_json::from_str(
            r#"{"addressType":"FQDN","endpoints":[{"addresses":["a.example"]}],"ports":[{"port":80}]}"#,
        )
        .unwrap();
        assert!(fqdn.ready_urls().is_empty());
        let v6: EndpointSlice = serde_json::from_str(
            r#"{"addressType":"IPv6","endpoints":[{"addresses":["::1"]}],"ports":[{"port":80}]}"#,
        )
        .unwrap();
        assert_eq!(v6.ready_urls(), ["http://[::1]:80"]);
    }

    #[test]
    fn deployment_defaults_and_annotations_over_labels() {
        let d: Deployment = serde_json::from_str(
            r#"{"metadata":{"name":"f","labels":{"a":"1","b":"2"},"annotations":{"b":"3"}},
                "spec":{"template":{"spec":{"containers":[{"name":"c","image":"img:1"}]}}},
                "status":{}}"#,
        )
        .unwrap();
        assert_eq!(d.desired(), 1);
        assert_eq!(d.status.available_replicas, 0);
        let labels = d.function_labels();
        assert_eq!((labels["a"].as_str(), labels["b"].as_str()), ("1", "3"));
        assert_eq!(d.spec.template.spec.containers[0].image, "img:1");
    }
}

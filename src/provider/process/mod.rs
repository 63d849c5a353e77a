//! The embedded provider: replicas are local child processes.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::function::FunctionRef;

pub enum Readiness {
    Tcp,
    Http { path: String },
}

pub struct ProcessFunction {
    pub function: FunctionRef,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: PathBuf,
    pub readiness: Readiness,
    pub min_replicas: u64,
    pub max_replicas: u64,
    pub labels: BTreeMap<String, String>,
    pub startup_timeout: Duration,
}

pub struct ProcessOptions {
    pub stop_grace: Duration,
}
pub struct ProcessProvider;
impl ProcessProvider {
    pub fn new(_: Vec<ProcessFunction>, _: ProcessOptions) -> Result<ProcessProvider, String> {
        Err("stub".into())
    }
}
impl crate::provider::Provider for ProcessProvider {
    fn status(
        &self,
        _: &FunctionRef,
    ) -> Result<crate::provider::FunctionStatus, crate::provider::ProviderError> {
        unimplemented!()
    }
    fn set_replicas(&self, _: &FunctionRef, _: u64) -> Result<(), crate::provider::ProviderError> {
        unimplemented!()
    }
    fn list(
        &self,
        _: &str,
    ) -> Result<Vec<crate::provider::FunctionSummary>, crate::provider::ProviderError> {
        unimplemented!()
    }
    fn namespaces(&self) -> Result<Vec<String>, crate::provider::ProviderError> {
        unimplemented!()
    }
}

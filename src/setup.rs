//! From what the operator wrote (a config file, or the OpenFaaS environment) to settings and a
//! provider ready to run.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Loaded, ProviderKind};
use crate::provider::process::{ProcessOptions, ProcessProvider};
use crate::provider::Provider;
use crate::Settings;

/// Reads `config` when given; otherwise the environment.
pub fn from_sources(config: Option<&Path>) -> Result<(Settings, Arc<dyn Provider>), String> {
    match config {
        Some(path) => from_file(&Loaded::read(path).map_err(|e| e.to_string())?),
        None => from_file(
            &Loaded::parse(Path::new("(defaults)"), String::new()).map_err(|e| e.to_string())?,
        ),
    }
}

/// Settings and provider described by a loaded config file.
pub fn from_file(loaded: &Loaded) -> Result<(Settings, Arc<dyn Provider>), String> {
    let settings = Settings::from(&loaded.config.gateway);
    let kind = loaded
        .config
        .provider
        .as_ref()
        .map_or(ProviderKind::Process, |p| p.kind);
    let provider: Arc<dyn Provider> = match kind {
        ProviderKind::Process => {
            let functions = loaded.process_functions().map_err(|e| e.to_string())?;
            let options = ProcessOptions {
                stop_grace: loaded.config.gateway.stop_grace.0,
            };
            Arc::new(ProcessProvider::new(functions, options)?)
        }
        ProviderKind::Openfaas => {
            return Err("provider kind \"openfaas\" is not available yet".into())
        }
    };
    Ok((settings, provider))
}

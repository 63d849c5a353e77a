//! Functions deployed through the API (`faas-cli deploy`, `remove`) beside the config file's.
//!
//! The process provider runs one set of functions; this module owns how that set is made:
//! the config file's `[[function]]` entries plus the deployed ones. A deploy's `envProcess` is
//! the command line (split on whitespace, no shell quoting), `envVars` its environment,
//! `labels` its labels (the `com.openfaas.scale.*` ones bound its replicas); `image` and
//! `annotations` are recorded, not used. Every change is checked by the provider's own rules
//! first, then written to the state file, then applied by the same machinery as a reload:
//! a changed function is replaced (the old replicas drain while new requests start new
//! ones), a removed one drains and stops.
//!
//! The state file (`<config name>.deployed.json` beside the config file) is written whole,
//! atomically: a temporary file, fsync, rename, fsync of the folder, so a crash leaves the old
//! set or the new one, never a torn file. Without a config file the deployed set lives in
//! memory only.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::function::{FunctionRef, Namespaces};
use crate::provider::process::{check_functions, ProcessFunction, ProcessProvider, Readiness};
use crate::provider::scale_bounds;

/// How long a deployed function's replica has to become ready (TCP on its port).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a deploy, update or removal is refused; each maps to its status here.
#[derive(Debug, PartialEq, Eq)]
pub enum DeployError {
    /// The body is not a usable deployment.
    BadRequest(String),
    /// The name belongs to a config-file function, or is already deployed.
    Conflict(String),
    /// No deployed function has that name.
    NotFound(FunctionRef),
    /// The state file cannot be written; nothing changed.
    State(String),
}

impl DeployError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            DeployError::BadRequest(_) => 400,
            DeployError::NotFound(_) => 404,
            DeployError::Conflict(_) => 409,
            DeployError::State(_) => 500,
        }
    }
}

impl fmt::Display for DeployError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeployError::BadRequest(why) => write!(f, "bad deployment: {why}"),
            DeployError::Conflict(why) => f.write_str(why),
            DeployError::NotFound(function) => {
                write!(f, "function {function} was not deployed through the API")
            }
            DeployError::State(why) => write!(f, "cannot save the deployed functions: {why}"),
        }
    }
}

impl std::error::Error for DeployError {}

/// A deployment as faas-cli sends it (the fields the process provider reads), and as the
/// state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub service: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub env_process: Option<String>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<String>>,
}

/// `DELETE /system/functions`'s body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Removal {
    function_name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// The state file's contents.
#[derive(Serialize, Deserialize, Default)]
struct StateFile {
    functions: Vec<Deployment>,
}

/// Where deployed functions are kept and run.
pub struct Deployments {
    provider: Arc<ProcessProvider>,
    state_file: Option<PathBuf>,
    /// Where deployed functions run: the state file's folder.
    workdir: PathBuf,
    /// Names the namespace of a deployment naming none (or `openfaas-fn`, its alias).
    namespaces: Namespaces,
    sets: Mutex<Sets>,
}

struct Sets {
    config: Vec<ProcessFunction>,
    deployed: BTreeMap<FunctionRef, (Deployment, ProcessFunction)>,
}

impl Deployments {
    /// Takes over `provider`'s current functions as the config file's, and adds those the
    /// state file names. A state file that cannot be read, or names a config function, is an
    /// error: starting without functions a user deployed would lose them silently.
    pub fn open(
        provider: Arc<ProcessProvider>,
        state_file: Option<PathBuf>,
        namespaces: Namespaces,
    ) -> io::Result<Deployments> {
        let workdir = state_file
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_owned)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("/"));
        let workdir = std::path::absolute(&workdir).unwrap_or(workdir);
        let deployments = Deployments {
            sets: Mutex::new(Sets {
                config: provider.functions(),
                deployed: BTreeMap::new(),
            }),
            provider,
            state_file,
            workdir,
            namespaces,
        };
        let saved = match &deployments.state_file {
            Some(path) => read_state(path)?,
            None => Vec::new(),
        };
        if saved.is_empty() {
            return Ok(deployments);
        }
        let shown = deployments
            .state_file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let invalid =
            |e: DeployError| io::Error::new(io::ErrorKind::InvalidData, format!("{shown}: {e}"));
        let mut sets = deployments.sets.lock();
        let mut deployed = BTreeMap::new();
        for deployment in saved {
            let function = deployments.function_of(&deployment).map_err(invalid)?;
            if let Some(conflict) = conflict_with_config(&sets.config, &function.function) {
                return Err(invalid(conflict));
            }
            deployed.insert(function.function.clone(), (deployment, function));
        }
        deployments
            .apply(&mut sets, deployed, false)
            .map_err(invalid)?;
        drop(sets);
        log::info!("restored the functions deployed through the API from {shown}");
        Ok(deployments)
    }

    /// `POST /system/functions`: a new function.
    pub fn deploy(&self, body: &[u8]) -> Result<FunctionRef, DeployError> {
        let (deployment, function) = self.read(body)?;
        let mut sets = self.sets.lock();
        let name = not_in_config(&sets, &function)?;
        if sets.deployed.contains_key(&name) {
            return Err(DeployError::Conflict(format!(
                "function {name} is already deployed; update it with PUT"
            )));
        }
        let mut deployed = sets.deployed.clone();
        deployed.insert(name.clone(), (deployment, function));
        self.apply(&mut sets, deployed, true)?;
        log::info!("{name}: deployed through the API");
        Ok(name)
    }

    /// `PUT /system/functions`: replaces a deployed function; its old replicas drain.
    pub fn update(&self, body: &[u8]) -> Result<FunctionRef, DeployError> {
        let (deployment, function) = self.read(body)?;
        let mut sets = self.sets.lock();
        let name = not_in_config(&sets, &function)?;
        if !sets.deployed.contains_key(&name) {
            return Err(DeployError::NotFound(name));
        }
        let mut deployed = sets.deployed.clone();
        deployed.insert(name.clone(), (deployment, function));
        self.apply(&mut sets, deployed, true)?;
        log::info!("{name}: updated through the API");
        Ok(name)
    }

    /// `DELETE /system/functions`: drains and removes a deployed function.
    pub fn remove(&self, body: &[u8]) -> Result<FunctionRef, DeployError> {
        let removal: Removal = serde_json::from_slice(body).map_err(|e| {
            DeployError::BadRequest(format!("expected {{\"functionName\": ...}}: {e}"))
        })?;
        let namespace = self.namespaces.resolve(removal.namespace.as_deref());
        let name = FunctionRef::new(&removal.function_name, namespace)
            .map_err(|e| DeployError::BadRequest(e.to_string()))?;
        let mut sets = self.sets.lock();
        if let Some(conflict) = conflict_with_config(&sets.config, &name) {
            return Err(conflict);
        }
        if !sets.deployed.contains_key(&name) {
            return Err(DeployError::NotFound(name));
        }
        let mut deployed = sets.deployed.clone();
        deployed.remove(&name);
        self.apply(&mut sets, deployed, true)?;
        log::info!("{name}: removed through the API; draining it");
        Ok(name)
    }

    /// A reloaded config file's functions, with the deployed ones kept. A config function
    /// that is also deployed refuses the reload: which of the two should run is the user's
    /// call, not defrost's.
    pub fn reload_config(
        &self,
        config: Vec<ProcessFunction>,
    ) -> Result<(), crate::provider::process::SpecError> {
        let mut sets = self.sets.lock();
        if let Some(function) = config
            .iter()
            .find(|f| sets.deployed.contains_key(&f.function))
        {
            return Err(crate::provider::process::SpecError {
                function: function.function.clone(),
                field: "name",
                message:
                    "is also deployed through the API; remove it there first (faas-cli remove)"
                        .into(),
            });
        }
        let all = union(&config, &sets.deployed);
        self.provider.reconfigure(all)?;
        sets.config = config;
        Ok(())
    }

    /// Checks the whole set, saves it if asked, then runs it.
    fn apply(
        &self,
        sets: &mut Sets,
        deployed: BTreeMap<FunctionRef, (Deployment, ProcessFunction)>,
        save: bool,
    ) -> Result<(), DeployError> {
        let all = union(&sets.config, &deployed);
        check_functions(&all).map_err(|e| DeployError::BadRequest(e.to_string()))?;
        if save {
            if let Some(path) = &self.state_file {
                let state = StateFile {
                    functions: deployed.values().map(|(d, _)| d.clone()).collect(),
                };
                write_state(path, &state)
                    .map_err(|e| DeployError::State(format!("{}: {e}", path.display())))?;
            }
        }
        self.provider
            .reconfigure(all)
            .map_err(|e| DeployError::BadRequest(e.to_string()))?;
        let images = deployed
            .iter()
            .filter(|(_, (d, _))| !d.image.is_empty())
            .map(|(f, (d, _))| (f.clone(), d.image.clone()))
            .collect();
        self.provider.record_images(images);
        sets.deployed = deployed;
        Ok(())
    }

    /// A deployment body and the function it describes.
    fn read(&self, body: &[u8]) -> Result<(Deployment, ProcessFunction), DeployError> {
        let deployment = parse(body)?;
        let function = self.function_of(&deployment)?;
        Ok((deployment, function))
    }

    /// The function a deployment describes, checked as a config entry would be.
    fn function_of(&self, d: &Deployment) -> Result<ProcessFunction, DeployError> {
        let namespace = self.namespaces.resolve(d.namespace.as_deref());
        let function = FunctionRef::new(&d.service, namespace)
            .map_err(|e| DeployError::BadRequest(format!("service: {e}")))?;
        if d.secrets.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(DeployError::BadRequest(
                "secrets are not supported by the process provider; pass values in envVars".into(),
            ));
        }
        // The watchdog reads `fprocess` from the environment too, so a deployment that sets
        // it there (`--env fprocess=...`) means the same.
        let command_line = d
            .env_process
            .as_deref()
            .filter(|c| !c.trim().is_empty())
            .or_else(|| d.env_vars.as_ref()?.get("fprocess").map(String::as_str))
            .unwrap_or_default();
        let command: Vec<String> = command_line.split_whitespace().map(str::to_owned).collect();
        if command.is_empty() {
            return Err(DeployError::BadRequest(format!(
                "{function}: envProcess is empty; the process provider runs the command line it names"
            )));
        }
        let labels = d.labels.clone().unwrap_or_default();
        let (min_replicas, max_replicas) = scale_bounds(&function, &labels);
        let spec = ProcessFunction {
            function,
            command,
            env: d.env_vars.clone().unwrap_or_default(),
            workdir: self.workdir.clone(),
            readiness: Readiness::Tcp,
            min_replicas,
            max_replicas,
            labels,
            startup_timeout: STARTUP_TIMEOUT,
        };
        spec.check().map_err(|e| {
            let field = match e.field {
                "command" => "envProcess",
                other => other,
            };
            DeployError::BadRequest(format!("{}: {field}: {}", e.function, e.message))
        })?;
        Ok(spec)
    }
}

fn parse(body: &[u8]) -> Result<Deployment, DeployError> {
    serde_json::from_slice(body).map_err(|e| {
        DeployError::BadRequest(format!(
            "expected a function deployment (service, envProcess, envVars, ...): {e}"
        ))
    })
}

/// The function's name, unless a config-file function has it (the API may not change those).
fn not_in_config(sets: &Sets, function: &ProcessFunction) -> Result<FunctionRef, DeployError> {
    let name = function.function.clone();
    match conflict_with_config(&sets.config, &name) {
        Some(conflict) => Err(conflict),
        None => Ok(name),
    }
}

fn conflict_with_config(config: &[ProcessFunction], name: &FunctionRef) -> Option<DeployError> {
    config.iter().any(|f| &f.function == name).then(|| {
        DeployError::Conflict(format!(
            "function {name} is declared in the config file; change it there, not through the API"
        ))
    })
}

fn union(
    config: &[ProcessFunction],
    deployed: &BTreeMap<FunctionRef, (Deployment, ProcessFunction)>,
) -> Vec<ProcessFunction> {
    let mut all = config.to_vec();
    all.extend(deployed.values().map(|(_, f)| f.clone()));
    all
}

/// The state file `config` implies: `defrost.toml` keeps its deployed functions in
/// `defrost.deployed.json` beside it.
pub fn state_file_for(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map_or_else(|| "defrost".into(), |s| s.to_string_lossy().into_owned());
    config.with_file_name(format!("{stem}.deployed.json"))
}

fn read_state(path: &Path) -> io::Result<Vec<Deployment>> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    let state: StateFile = serde_json::from_slice(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a deployed-functions file: {e}", path.display()),
        )
    })?;
    Ok(state.functions)
}

/// Write to a temporary file, fsync, rename over the old file, fsync the folder.
fn write_state(path: &Path, state: &StateFile) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&json)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(folder)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::process::ProcessOptions;
    use crate::provider::Provider;
    use crate::scratch::TempDir;

    fn config_function(name: &str) -> ProcessFunction {
        ProcessFunction {
            function: FunctionRef::new(name, "default").unwrap(),
            command: vec!["true".into()],
            env: BTreeMap::new(),
            workdir: PathBuf::from("/"),
            readiness: Readiness::Tcp,
            min_replicas: 1,
            max_replicas: 1,
            labels: BTreeMap::new(),
            startup_timeout: Duration::from_secs(1),
        }
    }

    fn open(dir: &TempDir) -> Deployments {
        let provider =
            ProcessProvider::new(vec![config_function("fixed")], ProcessOptions::default())
                .unwrap();
        Deployments::open(
            Arc::new(provider),
            Some(dir.path().join("defrost.deployed.json")),
            Namespaces::new("default"),
        )
        .unwrap()
    }

    fn names(d: &Deployments) -> Vec<String> {
        d.provider
            .list("default")
            .unwrap()
            .iter()
            .map(|s| s.function.key().to_owned())
            .collect()
    }

    #[test]
    fn deployed_functions_are_saved_and_restored() {
        let dir = TempDir::new("saved");
        let d = open(&dir);
        let body = br#"{"service":"hello","image":"ghcr.io/x/hello:1","envProcess":"python3 -m http.server","envVars":{"A":"1"},"labels":{"com.openfaas.scale.max":"3"},"annotations":null}"#;
        assert_eq!(d.deploy(body).unwrap().key(), "hello.default");
        assert_eq!(names(&d), ["fixed.default", "hello.default"]);
        let status = d
            .provider
            .status(&FunctionRef::new("hello", "default").unwrap())
            .unwrap();
        assert_eq!(status.max_replicas, 3);
        drop(d);
        let again = open(&dir);
        assert_eq!(names(&again), ["fixed.default", "hello.default"]);
        let saved = std::fs::read_to_string(dir.path().join("defrost.deployed.json")).unwrap();
        assert!(saved.contains("ghcr.io/x/hello:1"), "{saved}");
        again.remove(br#"{"functionName":"hello"}"#).unwrap();
        assert_eq!(names(&open(&dir)), ["fixed.default"]);
    }

    #[test]
    fn refusals_say_why_and_change_nothing() {
        let dir = TempDir::new("refusals");
        let d = open(&dir);
        let status = |r: Result<FunctionRef, DeployError>| r.unwrap_err().status();
        assert_eq!(
            status(d.deploy(br#"{"service":"fixed","envProcess":"true"}"#)),
            409
        );
        assert_eq!(
            status(d.update(br#"{"service":"fixed","envProcess":"true"}"#)),
            409
        );
        assert_eq!(status(d.remove(br#"{"functionName":"fixed"}"#)), 409);
        assert_eq!(
            status(d.update(br#"{"service":"ghost","envProcess":"true"}"#)),
            404
        );
        assert_eq!(status(d.remove(br#"{"functionName":"ghost"}"#)), 404);
        for bad in [
            &b"{nope"[..],
            br#"{"image":"x"}"#,
            br#"{"service":"Bad Name","envProcess":"true"}"#,
            br#"{"service":"x","image":"only-an-image"}"#,
            br#"{"service":"x","envProcess":"true","secrets":["s"]}"#,
        ] {
            let e = d.deploy(bad).unwrap_err();
            assert_eq!(e.status(), 400, "{}: {e}", String::from_utf8_lossy(bad));
        }
        assert!(d
            .deploy(br#"{"service":"x"}"#)
            .unwrap_err()
            .to_string()
            .contains("envProcess"));
        d.deploy(br#"{"service":"x","envProcess":"true"}"#).unwrap();
        assert_eq!(
            status(d.deploy(br#"{"service":"x","envProcess":"true"}"#)),
            409
        );
        assert_eq!(names(&d), ["fixed.default", "x.default"]);
        d.deploy(br#"{"service":"y","envVars":{"fprocess":"cat -u"}}"#)
            .unwrap();
        let y = d
            .provider
            .functions()
            .into_iter()
            .find(|f| f.function.name() == "y");
        assert_eq!(y.map(|f| f.command), Some(vec!["cat".into(), "-u".into()]));
        d.remove(br#"{"functionName":"y","namespace":"default"}"#)
            .unwrap();
        let refused = d.reload_config(vec![config_function("fixed"), config_function("x")]);
        assert!(refused.unwrap_err().to_string().contains("faas-cli remove"));
        d.reload_config(vec![config_function("other")]).unwrap();
        assert_eq!(names(&d), ["other.default", "x.default"]);
    }

    #[test]
    fn a_broken_state_file_stops_the_start() {
        let dir = TempDir::new("broken");
        let path = dir.path().join("defrost.deployed.json");
        std::fs::write(&path, "{not json").unwrap();
        let provider = ProcessProvider::new(Vec::new(), ProcessOptions::default()).unwrap();
        let e = Deployments::open(
            Arc::new(provider),
            Some(path.clone()),
            Namespaces::new("default"),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("defrost.deployed.json"), "{e}");
        assert_eq!(
            state_file_for(Path::new("/etc/defrost/gw.toml")),
            Path::new("/etc/defrost/gw.deployed.json")
        );
    }
}

//! `shoal-app.toml`, the app manifest (API.md "Apps"), parsed into a validated [`Manifest`] in
//! one step: every later part (packaging, the supervisor, the web server) takes a `Manifest` and
//! never re-checks a field.
//!
//! Errors name the field and what to write instead. Files the manifest names (schema, defaults,
//! web dist) are checked against the app directory by [`Manifest::load`]; the defaults must
//! validate against the schema.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::settings::Schema;

/// File name of the manifest at the root of an app directory and of a package.
pub const MANIFEST_FILE: &str = "shoal-app.toml";

/// Longest app id, in bytes (API.md).
pub const MAX_ID_BYTES: usize = 128;

/// A manifest that is wrong, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{MANIFEST_FILE} is not valid TOML: {0}")]
    Toml(#[source] toml::de::Error),
    /// A field is missing or invalid; the message says what to write instead.
    #[error("{MANIFEST_FILE}: `{field}`: {reason}")]
    Field { field: String, reason: String },
}

fn field(field: &str, reason: impl Into<String>) -> ManifestError {
    ManifestError::Field {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// What kind of app: a supervised process or a web page served by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Process,
    Web,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Process => "process",
            Kind::Web => "web",
        }
    }
}

/// When the supervisor restarts a process that exited (API.md: default `on-failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    Always,
    #[default]
    OnFailure,
    Never,
}

/// Resource limits of a process app (`[process] memory-max`, `cpu-max`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    /// Bytes of memory (address space when only rlimits are available).
    pub memory_max: Option<u64>,
    /// CPUs (0.5 = half of one core); with rlimits, CPU seconds are not capped by it (see
    /// `supervisor.rs`).
    pub cpu_max: Option<f64>,
}

/// `[process]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub restart: Restart,
    pub limits: Limits,
}

/// `[web]`, validated: `dist` and `main` are relative paths inside the package.
#[derive(Debug, Clone, PartialEq)]
pub struct Web {
    pub dist: PathBuf,
    pub main: String,
}

/// The kind-specific part.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Process(Process),
    Web(Web),
}

/// A validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub id: String,
    pub version: semver::Version,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub body: Body,
    /// The settings schema (`Schema::any()` when the manifest names none).
    pub schema: Schema,
    /// The schema as JSON, to publish it (`GET /api/v1/settings/<id>/schema`).
    pub schema_json: serde_json::Value,
    /// `default-settings`, else `{}`; validates against `schema`.
    pub defaults: serde_json::Value,
}

impl Manifest {
    pub fn kind(&self) -> Kind {
        match self.body {
            Body::Process(_) => Kind::Process,
            Body::Web(_) => Kind::Web,
        }
    }

    /// Reads and validates `<dir>/shoal-app.toml` and the files it names.
    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        let raw: Raw = toml::from_str(&text).map_err(ManifestError::Toml)?;
        raw.validate(dir)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Raw {
    id: Option<String>,
    version: Option<String>,
    display_name: Option<String>,
    description: Option<String>,
    kind: Option<String>,
    settings_schema: Option<String>,
    default_settings: Option<String>,
    process: Option<RawProcess>,
    web: Option<RawWeb>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawProcess {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    restart: Option<String>,
    memory_max: Option<String>,
    cpu_max: Option<f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawWeb {
    dist: Option<String>,
    main: Option<String>,
}

impl Raw {
    fn validate(self, dir: &Path) -> Result<Manifest, ManifestError> {
        let id = self
            .id
            .ok_or_else(|| field("id", "missing: write e.g. id = \"com.example.counter\""))?;
        check_id(&id).map_err(|reason| field("id", reason))?;
        let version = self
            .version
            .ok_or_else(|| field("version", "missing: write e.g. version = \"1.0.0\""))?;
        let version = semver::Version::parse(&version).map_err(|e| {
            field(
                "version",
                format!("`{version}` is not a semantic version ({e}): write e.g. \"1.2.0\""),
            )
        })?;
        let kind = self.kind.ok_or_else(|| {
            field(
                "kind",
                "missing: write kind = \"process\" or kind = \"web\"",
            )
        })?;
        let body = match kind.as_str() {
            "process" => {
                let p = self.process.ok_or_else(|| {
                    field(
                        "process",
                        "kind = \"process\" needs a [process] section with `command`",
                    )
                })?;
                Body::Process(p.validate()?)
            }
            "web" => {
                let w = self.web.ok_or_else(|| {
                    field(
                        "web",
                        "kind = \"web\" needs a [web] section with `dist` and `main`",
                    )
                })?;
                Body::Web(w.validate(dir)?)
            }
            other => {
                return Err(field(
                    "kind",
                    format!("`{other}` is not a kind: write \"process\" or \"web\""),
                ))
            }
        };
        let (schema_json, schema) = match &self.settings_schema {
            Some(file) => {
                let json = read_json(dir, "settings-schema", file)?;
                let schema = Schema::compile(&json).map_err(|e| {
                    field(
                        "settings-schema",
                        format!("{file} is not a JSON Schema: {e}"),
                    )
                })?;
                (json, schema)
            }
            None => (serde_json::json!({}), Schema::any()),
        };
        let defaults = match &self.default_settings {
            Some(file) => {
                let json = read_json(dir, "default-settings", file)?;
                schema.validate(&json).map_err(|e| {
                    field(
                        "default-settings",
                        format!("{file} does not validate against the settings schema: {e}"),
                    )
                })?;
                json
            }
            None => {
                let empty = serde_json::json!({});
                schema.validate(&empty).map_err(|e| {
                    field(
                        "default-settings",
                        format!(
                            "missing, and the default `{{}}` does not validate against the \
                             settings schema ({e}): name a file of valid defaults"
                        ),
                    )
                })?;
                empty
            }
        };
        Ok(Manifest {
            id,
            version,
            display_name: self.display_name,
            description: self.description,
            body,
            schema,
            schema_json,
            defaults,
        })
    }
}

impl RawProcess {
    fn validate(self) -> Result<Process, ManifestError> {
        let command = self.command.filter(|c| !c.trim().is_empty()).ok_or_else(|| {
            field(
                "process.command",
                "missing: write a program on PATH or a file of the package, e.g. command = \"python3\"",
            )
        })?;
        let restart = match self.restart.as_deref() {
            None | Some("on-failure") => Restart::OnFailure,
            Some("always") => Restart::Always,
            Some("never") => Restart::Never,
            Some(other) => {
                return Err(field(
                    "process.restart",
                    format!(
                        "`{other}` is not a policy: write \"always\", \"on-failure\" or \"never\""
                    ),
                ))
            }
        };
        for key in self.env.keys() {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(field(
                    "process.env",
                    format!("`{key}` is not a variable name: use letters, digits and `_`"),
                ));
            }
        }
        let memory_max = self
            .memory_max
            .as_deref()
            .map(parse_size)
            .transpose()
            .map_err(|reason| field("process.memory-max", reason))?;
        if let Some(cpu) = self.cpu_max {
            if !(cpu.is_finite() && cpu > 0.0 && cpu <= 1024.0) {
                return Err(field(
                    "process.cpu-max",
                    format!("{cpu} is not a CPU share: write a number of CPUs, e.g. 0.5"),
                ));
            }
        }
        Ok(Process {
            command,
            args: self.args,
            env: self.env,
            restart,
            limits: Limits {
                memory_max,
                cpu_max: self.cpu_max,
            },
        })
    }
}

impl RawWeb {
    fn validate(self, dir: &Path) -> Result<Web, ManifestError> {
        let dist = self.dist.unwrap_or_else(|| ".".into());
        let dist_path = inside("web.dist", &dist)?;
        if !dir.join(&dist_path).is_dir() {
            return Err(field(
                "web.dist",
                format!(
                    "`{dist}` is not a directory of the app: name the directory of the built pages"
                ),
            ));
        }
        let main = self.main.unwrap_or_else(|| "index.html".into());
        let main_path = inside("web.main", &main)?;
        if !dir.join(&dist_path).join(&main_path).is_file() {
            return Err(field(
                "web.main",
                format!(
                    "`{main}` is not a file in `{dist}`: name the page to open, e.g. index.html"
                ),
            ));
        }
        Ok(Web {
            dist: dist_path,
            main,
        })
    }
}

/// A relative path that stays inside the package (no `..`, not absolute).
fn inside(name: &str, value: &str) -> Result<PathBuf, ManifestError> {
    let path = PathBuf::from(value);
    if value.is_empty()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(field(
            name,
            format!("`{value}` must be a relative path inside the app directory (no `..`, not absolute)"),
        ));
    }
    Ok(path)
}

fn read_json(dir: &Path, name: &str, file: &str) -> Result<serde_json::Value, ManifestError> {
    let path = dir.join(inside(name, file)?);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        field(
            name,
            format!("cannot read `{file}` ({e}): name a JSON file of the app directory"),
        )
    })?;
    serde_json::from_str(&text).map_err(|e| field(name, format!("`{file}` is not JSON: {e}")))
}

/// API.md: reverse-DNS, `[a-z0-9-]` labels joined by `.`, at most 128 bytes.
pub fn check_id(id: &str) -> Result<(), String> {
    let hint = "write a reverse-DNS name of lower-case labels, e.g. \"com.example.counter\"";
    if id.len() > MAX_ID_BYTES {
        return Err(format!("longer than {MAX_ID_BYTES} bytes: {hint}"));
    }
    let labels: Vec<&str> = id.split('.').collect();
    if labels.len() < 2 {
        return Err(format!("`{id}` has no `.`: {hint}"));
    }
    for label in labels {
        if label.is_empty()
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("`{id}` has the label `{label}`: {hint}"));
        }
    }
    Ok(())
}

/// `256M`, `1G`, `512K`, `1048576` → bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size: write e.g. \"256M\""))?;
    let mult: u64 = match unit.trim() {
        "" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "m" | "MiB" => 1 << 20,
        "G" | "g" | "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "`{s}` has an unknown unit: write K, M or G, e.g. \"256M\""
            ))
        }
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if bytes < (1 << 20) {
        return Err(format!(
            "`{s}` is below 1M: no app starts with so little memory"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, manifest: &str) {
        std::fs::write(dir.join(MANIFEST_FILE), manifest).unwrap();
    }

    fn error(manifest: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), manifest);
        Manifest::load(dir.path()).unwrap_err().to_string()
    }

    const GOOD: &str = "id = \"com.example.counter\"\nversion = \"1.2.0\"\nkind = \"process\"\n\
                        [process]\ncommand = \"python3\"\nargs = [\"app.py\"]\n";

    #[test]
    fn a_good_manifest_parses() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), GOOD);
        let m = Manifest::load(dir.path()).unwrap();
        assert_eq!(m.id, "com.example.counter");
        assert_eq!(m.version.to_string(), "1.2.0");
        assert_eq!(m.defaults, serde_json::json!({}));
        let Body::Process(p) = m.body else { panic!() };
        assert_eq!(p.restart, Restart::OnFailure);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(error(&GOOD.replace("com.example.counter", "Counter")).contains("`id`"));
        assert!(error(&GOOD.replace("com.example.counter", "com..x")).contains("`id`"));
        assert!(error(&GOOD.replace("1.2.0", "1.2")).contains("`version`"));
        assert!(error(&GOOD.replace("\"process\"\n[", "\"daemon\"\n[")).contains("`kind`"));
        assert!(error(&GOOD.replace("command = \"python3\"", "")).contains("`process.command`"));
        assert!(error(&format!("{GOOD}restart = \"sometimes\"\n")).contains("`process.restart`"));
        assert!(error(&format!("{GOOD}memory-max = \"lots\"\n")).contains("`process.memory-max`"));
        assert!(error(&format!("settings-schema = \"nope.json\"\n{GOOD}"))
            .contains("`settings-schema`"));
        assert!(error("id = \"a.b\"\nversion = \"1.0.0\"\nkind = \"web\"\n").contains("`web`"));
    }

    #[test]
    fn defaults_must_validate() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("schema.json"),
            r#"{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("defaults.json"), r#"{"n":"x"}"#).unwrap();
        write(
            dir.path(),
            &format!(
                "settings-schema = \"schema.json\"\ndefault-settings = \"defaults.json\"\n{GOOD}"
            ),
        );
        let e = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("`default-settings`") && e.contains("/n"), "{e}");
        std::fs::write(dir.path().join("defaults.json"), r#"{"n":3}"#).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap().defaults["n"], 3);
    }

    #[test]
    fn ids_and_sizes() {
        assert!(check_id("com.example.counter").is_ok());
        assert!(check_id("io.x-y.a1").is_ok());
        for bad in ["com", "com.Example", "com.-x", "com.x_y", "", ".a", "a."] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        assert!(check_id(&format!("a.{}", "b".repeat(127))).is_err());
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("99999999999999999G").is_err());
        assert!(parse_size("12").is_err());
    }
}

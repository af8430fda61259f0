//! A real Prometheus text parser for the `/metrics` tests: the official Python client's
//! (`prometheus_client.parser` for the 0.0.4 text format, `prometheus_client.openmetrics.parser`
//! for OpenMetrics), installed by the harness itself with `pip install --target` into the
//! target dir once (then reused), and run as `python3` on the scraped text.
//!
//! No fallback parser of our own: a parser we wrote would agree with the encoder we wrote.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The Python client's version the tests parse with.
const PROMETHEUS_CLIENT: &str = "prometheus_client==0.26.0";

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as prometheus
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
parse = openmetrics if sys.argv[1] == "openmetrics" else prometheus
out = []
for f in parse(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;

/// One parsed metric family.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: String,
    /// `counter`, `gauge`, `histogram`, ...
    pub kind: String,
    pub help: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: families by name (the parser's name: counters without `_total`).
#[derive(Debug, Clone)]
pub struct Exposition(pub BTreeMap<String, Family>);

impl Exposition {
    /// The family `name`, or an error listing what there is.
    pub fn family(&self, name: &str) -> Result<&Family> {
        self.0.get(name).with_context(|| {
            format!(
                "no metric family {name}; have {:?}",
                self.0.keys().collect::<Vec<_>>()
            )
        })
    }

    /// The value of the sample `name` whose labels include `labels`; `None` if there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .values()
            .flat_map(|f| &f.samples)
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Every sample of every counter and histogram (which only grow), keyed by name and labels.
    pub fn growing(&self) -> BTreeMap<String, f64> {
        self.0
            .values()
            .filter(|f| f.kind == "counter" || f.kind == "histogram")
            .flat_map(|f| &f.samples)
            .map(|s| (format!("{}{:?}", s.name, s.labels), s.value))
            .collect()
    }
}

/// Parses `text` with the Python client's parser for `format` (`"prometheus"` or
/// `"openmetrics"`); a text the parser rejects is an error carrying its message.
pub fn parse(text: &str, format: &str) -> Result<Exposition> {
    let site = python_site()?;
    let mut child = Command::new("python3")
        .args(["-c", PARSE, format])
        .env("PYTHONPATH", site)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run python3")?;
    child
        .stdin
        .take()
        .context("python3 stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the Prometheus parser ({format}) rejected the exposition: {}\n--- text ---\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let families: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    let mut map = BTreeMap::new();
    for f in families {
        let samples = f["samples"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|s| Sample {
                name: s["name"].as_str().unwrap_or_default().to_string(),
                labels: s["labels"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                value: s["value"].as_f64().unwrap_or(f64::NAN),
            })
            .collect();
        let name = f["name"].as_str().unwrap_or_default().to_string();
        map.insert(
            name.clone(),
            Family {
                name,
                kind: f["type"].as_str().unwrap_or_default().to_string(),
                help: f["help"].as_str().unwrap_or_default().to_string(),
                samples,
            },
        );
    }
    Ok(Exposition(map))
}

/// The directory holding the Python client, installed on first use next to the test binaries.
fn python_site() -> Result<&'static Path> {
    static SITE: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let site = SITE.get_or_init(|| install().map_err(|e| format!("{e:#}")));
    match site {
        Ok(p) => Ok(p.as_path()),
        Err(e) => bail!(
            "cannot install the Python Prometheus parser ({PROMETHEUS_CLIENT}): {e}; \
             needs python3 with pip and PyPI"
        ),
    }
}

fn install() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let base = exe
        .ancestors()
        .find(|d| d.ends_with("deps"))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let version = PROMETHEUS_CLIENT.replace("==", "-");
    let site = base.join(format!("python-{version}"));
    if site.join("prometheus_client").is_dir() {
        return Ok(site);
    }
    // Installed beside, then renamed: test processes running at once never see half a package.
    let staging = base.join(format!("python-{version}.{}", std::process::id()));
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--target"])
        .arg(&staging)
        .arg(PROMETHEUS_CLIENT)
        .status()
        .context("cannot run python3 -m pip")?;
    if !status.success() {
        bail!("pip install {PROMETHEUS_CLIENT} failed ({status})");
    }
    if std::fs::rename(&staging, &site).is_err() && !site.join("prometheus_client").is_dir() {
        bail!("cannot move {staging:?} to {site:?}");
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(site)
}
